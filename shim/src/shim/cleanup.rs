//! `delete`: containerd runs it when a shim died, to undo what that shim left
//! for one container (mounts, pod directories) and learn a final status.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::Flags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{sandbox_id, socket_path};
use crate::config::Config;
use crate::task::rootfs;

/// Kills every host process whose root directory is the container's share
/// (what a chrooted process of a dead shim looks like), so the mounts can go.
fn kill_processes_rooted_in(shared: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let rooted =
            std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root == shared);
        if rooted {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Removes the dead shim's socket, named by `<bundle>/address`, unless a live
/// shim (of another container of the pod) still answers on it.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = socket_path(address.trim());
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Status reported for a container whose shim died: killed (128 + SIGKILL).
const DEAD_SHIM_STATUS: u32 = 137;

/// Runs the `delete` subcommand and prints the `DeleteResponse`.
pub fn run(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("current directory")?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let sandbox = sandbox_id(&bundle, &flags.id);
    let config = Config::load(None).context("load the Hull config")?;
    let state_dir = config.run_dir.join(&sandbox);
    let share_dir = state_dir.join("shared");
    let shared = share_dir.join(&flags.id);
    kill_processes_rooted_in(&shared);
    let mut failures = Vec::new();
    for target in [shared.clone(), bundle.join("rootfs")] {
        if let Err(e) = rootfs::unmount(&target) {
            failures.push(format!("{e:#}"));
        }
    }
    remove_dead_socket(&bundle);
    // Only empty directories go: a mount still present is never deleted through.
    for dir in [&shared, &share_dir, &state_dir] {
        let _ = std::fs::remove_dir(dir);
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "cleanup of {} left mounts: {}",
            flags.id,
            failures.join("; ")
        );
    }
    let response = DeleteResponse {
        pid: 0,
        exit_status: DEAD_SHIM_STATUS,
        exited_at: MessageField::some(crate::task::timestamp(SystemTime::now())),
        ..Default::default()
    };
    let bytes = response.write_to_bytes().context("encode DeleteResponse")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .context("print DeleteResponse")?;
    Ok(())
}
