//! `delete`: containerd runs it when a shim died, to undo what that shim left
//! for one container (mounts, pod directories) and learn a final status.

use std::io::Write;
use std::os::fd::AsFd;
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
use crate::backend::host_pids;
use crate::backend::vm::network;
use crate::config::Config;
use crate::task::{rootfs, share};

/// The shared directory the shim recorded in the bundle, if it is well formed
/// (`<state_dir>/shared/<container_id>`, absolute, without `..`).
fn read_marker(bundle: &Path, container_id: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(bundle.join(rootfs::SHARE_MARKER)).ok()?;
    let path = PathBuf::from(text);
    let well_formed = path.is_absolute()
        && path
            .components()
            .all(|c| c != std::path::Component::ParentDir)
        && path.file_name()? == container_id
        && path.parent()?.file_name()? == "shared";
    well_formed.then_some(path)
}

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

/// The shim socket named by `<bundle>/address`, if the file is there.
fn shim_socket(bundle: &Path) -> Option<PathBuf> {
    let address = std::fs::read_to_string(bundle.join("address")).ok()?;
    Some(PathBuf::from(socket_path(address.trim())))
}

/// Removes the dead shim's socket, unless a live shim (of another container of
/// the pod) answers on it by now.
fn remove_dead_socket(bundle: &Path) {
    if let Some(path) = shim_socket(bundle) {
        if UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(path);
        }
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
    if shim_answers(&bundle) {
        // containerd runs `delete` whenever a connection to a shim closes, also
        // for a container of a pod whose shim still serves other containers:
        // that shim owns the VM and the mounts, and cleans up itself.
        return print_response();
    }
    let (shared, state_dir) = match read_marker(&bundle, &flags.id) {
        Some(shared) => {
            let state_dir = shared.parent().and_then(Path::parent).unwrap_or(&shared);
            (shared.clone(), state_dir.to_path_buf())
        }
        None => {
            let config = Config::load(None).context("load the Hull config")?;
            let pod = sandbox_id(&bundle, &flags.id);
            if !share::one_component(&flags.id) {
                anyhow::bail!("refusing to clean up: bad container id {:?}", flags.id);
            }
            let state_dir = share::pod_dir(&config.run_dir, &flags.namespace, &pod)
                .context("refusing to clean up")?;
            (state_dir.join(share::SHARED).join(&flags.id), state_dir)
        }
    };
    // The shim served the whole pod: whatever its sandbox started on the host goes.
    let killed = host_pids::kill_recorded(&state_dir);
    if killed > 0 {
        eprintln!("killed {killed} host process(es) of the dead shim's pod");
    }
    host_pids::clear(&state_dir);
    // With hull-vmm gone the taps went with their last descriptor; the
    // filters and qdiscs in CNI's namespace go now, before CNI's DEL.
    if let Some(record) = network::Record::load(&state_dir) {
        if let Err(e) = record.undo() {
            eprintln!("pod network cleanup: {}", hull_protocol::error::chain(&e));
        }
    }
    kill_processes_rooted_in(&shared);
    let mut failures = Vec::new();
    if let Err(e) = rootfs::unmount(&bundle.join("rootfs")) {
        failures.push(format!("{e:#}"));
    }
    if let Err(e) = sweep(&state_dir) {
        failures.push(e);
    }
    remove_dead_socket(&bundle);
    if !failures.is_empty() {
        anyhow::bail!(
            "cleanup of {} left mounts: {}",
            flags.id,
            failures.join("; ")
        );
    }
    print_response()
}

/// Unmounts everything mounted in a dead shim's pod directory (container
/// roots, volumes, the share), deepest first, each walked beneath the pod
/// directory without following a symlink; then removes the directory, only
/// when no mount is left below it. Says what stayed.
fn sweep(state_dir: &Path) -> Result<(), String> {
    let dir = match share::open_dir(state_dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("open {}: {e}", state_dir.display())),
    };
    let mut errors = Vec::new();
    // A few rounds: mounts can be stacked on one mount point.
    for _ in 0..4 {
        let mounts = mounts_under(state_dir);
        if mounts.is_empty() {
            break;
        }
        for mount in mounts {
            let rel = mount.strip_prefix(state_dir).unwrap_or(&mount);
            if let Err(e) = share::unmount_beneath(dir.as_fd(), rel) {
                errors.push(format!("unmount {}: {e}", mount.display()));
            }
        }
    }
    let left = mounts_under(state_dir);
    if !left.is_empty() {
        // Nothing below a mount that stayed is removed.
        let left: Vec<String> = left.iter().map(|m| m.display().to_string()).collect();
        return Err(format!("{} ({})", left.join(", "), errors.join("; ")));
    }
    // Sockets, pid files, the share's host-only directories; std's remove_dir_all
    // never follows a symlink, and no mount is left to delete through.
    if let Err(e) = std::fs::remove_dir_all(state_dir) {
        return Err(format!("remove {}: {e}", state_dir.display()));
    }
    share::remove_pod_dir(state_dir);
    Ok(())
}

/// Mount points at or under `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    // Bytes, not a String: one mount point that is not UTF-8 must not hide the others.
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .split(|b| *b == b'\n')
        .filter_map(|l| l.split(|b| *b == b' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(bytes: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// How long a connection to the shim's socket must stay open for the shim to count as alive.
const ALIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the shim named by `<bundle>/address` is alive and serves connections. containerd
/// runs `delete` as soon as its connection to a shim closes, which for a killed shim can be
/// while the kernel is still tearing the process down: its listening socket may then take one
/// more connection, which the kernel resets a moment later (seen in 1 of 8 runs of
/// `host_shim`'s killed-shim test, whose pod was then never cleaned up). A live shim accepts
/// and waits for a request, so only a connection still open after [`ALIVE_WAIT`] counts.
fn shim_answers(bundle: &Path) -> bool {
    let Some(path) = shim_socket(bundle) else {
        return false;
    };
    let Ok(mut stream) = UnixStream::connect(path) else {
        return false;
    };
    if stream.set_read_timeout(Some(ALIVE_WAIT)).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut stream, &mut byte) {
        // Closed or reset: the listener went with its process.
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Prints the `DeleteResponse` of a container whose shim is gone.
fn print_response() -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped_and_ids_are_single_components() {
        assert_eq!(
            unescape_mountinfo(b"/run/a\\040b"),
            PathBuf::from("/run/a b")
        );
        assert_eq!(unescape_mountinfo(b"/x\\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape_mountinfo(b"/t\\04"), PathBuf::from("/t\\04"));
        assert!(share::one_component("pod-1"));
        for bad in ["", ".", "..", "a/b", "/abs"] {
            assert!(!share::one_component(bad), "{bad}");
        }
        let root = mounts_under(Path::new("/"));
        assert!(root.contains(&PathBuf::from("/")), "{root:?}");
    }

    #[test]
    fn a_live_shim_is_left_alone() {
        let bundle = tempfile::tempdir().unwrap();
        assert!(!shim_answers(bundle.path()), "no address file");
        let sock = bundle.path().join("s.sock");
        std::fs::write(
            bundle.path().join("address"),
            format!("unix://{}", sock.display()),
        )
        .unwrap();
        assert!(!shim_answers(bundle.path()), "nobody listens");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(shim_answers(bundle.path()));
        // A dying shim: its socket takes the connection, then goes with the process.
        drop(listener);
        std::fs::remove_file(&sock).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let dies = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(listener);
        });
        assert!(
            !shim_answers(bundle.path()),
            "a socket closed after connect"
        );
        dies.join().unwrap();
    }

    #[test]
    fn only_a_well_formed_marker_is_trusted() {
        let bundle = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(bundle.path().join(rootfs::SHARE_MARKER), text);
        assert_eq!(read_marker(bundle.path(), "c1"), None);
        write("/run/hull/pod/shared/c1").unwrap();
        assert_eq!(
            read_marker(bundle.path(), "c1"),
            Some("/run/hull/pod/shared/c1".into())
        );
        for bad in [
            "/run/hull/pod/shared/c2",
            "relative/shared/c1",
            "/a/../shared/c1",
            "/x/c1",
        ] {
            write(bad).unwrap();
            assert_eq!(read_marker(bundle.path(), "c1"), None, "{bad}");
        }
    }

    #[test]
    fn sweep_of_a_dead_shims_pod_follows_no_planted_symlink() {
        use crate::task::rootfs::{ContainerRootfs, VolumeSpec};
        use crate::task::share::test_util::*;
        use std::os::unix::fs::symlink;
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let tmpfs = |p: &Path| {
            std::fs::create_dir_all(p).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
        };
        // Outside the pod: a canary file and a mount point with the same
        // relative path as one inside the container root.
        let outside = tmp.path().join("outside");
        tmpfs(&outside.join("sub"));
        let canary = Canary::new(outside.join("canary"));
        // The image root has a mount below it, so the container root's rbind does too.
        let bundle = tmp.path().join("bundle");
        tmpfs(&bundle.join("rootfs/a/sub"));
        let vol = tmp.path().join("vol");
        std::fs::write(&vol, "volume\n").unwrap();
        let share = pod(tmp.path(), "p");
        let served = share.served();
        let state_dir = served.parent().unwrap().to_path_buf();
        let mut rootfs = ContainerRootfs::setup(&[], &bundle, &served.join("c1"), false).unwrap();
        let volumes = [VolumeSpec {
            source: vol.clone(),
            destination: "/f".into(),
            options: vec!["bind".into()],
        }];
        rootfs
            .share_volumes(&volumes, &served, ".volumes/c1")
            .unwrap();
        std::fs::write(state_dir.join("host-pids"), "").unwrap();
        // The shim dies with everything mounted.
        std::mem::forget(rootfs);
        std::mem::forget(share);
        // The guest, in its root: moves the directory above a mount away and
        // puts symlinks out of the pod in its place and beside it.
        std::fs::rename(served.join("c1/a"), served.join("c1/b")).unwrap();
        symlink(&outside, served.join("c1/a")).unwrap();
        symlink(&canary.path, served.join("c1/link")).unwrap();
        let before = mounts_outside(tmp.path(), &state_dir);
        sweep(&state_dir).unwrap();
        assert_eq!(mounts_below(&state_dir), Vec::<PathBuf>::new());
        assert!(!state_dir.exists(), "the pod directory is removed");
        assert!(!tmp.path().join("run/ns").exists());
        assert_eq!(
            mounts_outside(tmp.path(), &state_dir),
            before,
            "outside mounts stay"
        );
        canary.assert_intact("the sweep");
        assert_eq!(std::fs::read_to_string(&vol).unwrap(), "volume\n");
        assert!(bundle.join("rootfs/b/sub").is_dir() && bundle.join("rootfs/a").is_symlink());
        for m in [outside.join("sub"), bundle.join("rootfs/b/sub")] {
            nix::mount::umount(&m).unwrap();
        }
        assert!(
            sweep(&state_dir).is_ok(),
            "a pod directory already gone is fine"
        );
    }
}
