//! The pod's host processes: `virtiofsd` serving the share and `hull-vmm`
//! running the guest, both recorded in `host-pids`, and their teardown.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::console::{log_output, RateLimit};
use crate::backend::host_pids;
use crate::backend::SandboxRequest;

/// Guest CID of every pod VM (each VM has its own hybrid vsock socket).
pub const GUEST_CID: u32 = 3;
/// virtio-fs tag of the pod share, mounted by the agent at `/run/hull/shared`.
pub const SHARE_TAG: &str = "hullshare";
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// virtiofsd's xattr rules (`:type:scope:key:prepend:` each): names starting
/// with `user.` pass unchanged, every other name is refused to the guest and
/// hidden from its listings.
const XATTR_MAP: &str = ":ok:all:user.:::bad:all:::";

/// Errors of starting the pod's host processes.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd did not create {socket} within {secs} s")]
    NoFsSocket { socket: PathBuf, secs: u64 },
    #[error("hull-vmm exited before the guest agent was ready ({status}); see the shim log for the console")]
    VmmExited { status: String },
    #[error(
        "the guest agent printed no ready marker within {secs} s; see the shim log for the console"
    )]
    NotReady { secs: u64 },
}

/// Paths of one pod's sockets, all inside its state directory.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub vsock: PathBuf,
    pub fs: PathBuf,
}

impl Sockets {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            vsock: state_dir.join("vsock.sock"),
            fs: state_dir.join("fs.sock"),
        }
    }

    /// Removes what the processes may have left behind.
    pub fn remove(&self) {
        for path in [
            self.vsock.clone(),
            self.fs.clone(),
            PathBuf::from(format!("{}.pid", self.fs.display())),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Starts virtiofsd on the pod share and waits for its socket.
pub fn start_virtiofsd(
    req: &SandboxRequest,
    sockets: &Sockets,
    timeout: Duration,
    log_limit: &Arc<RateLimit>,
) -> Result<Child, LaunchError> {
    let program = &req.config.virtiofsd;
    let mut child = Command::new(program)
        .arg("--socket-path")
        .arg(&sockets.fs)
        .arg("--shared-dir")
        .arg(&req.share_dir)
        // chroot, not a mount namespace: containers created later mount their
        // rootfs into the share after virtiofsd started, and it must see them.
        // No CAP_MKNOD (a guest cannot make device nodes on the host) nor
        // CAP_SETFCAP. Extended attributes: only `user.*` passes, both ways;
        // `security.*` (file capabilities), `trusted.*` and ACLs are refused,
        // so a guest cannot plant a file capability on a host file.
        // CAP_DAC_READ_SEARCH stays for file handles: with O_PATH fds instead,
        // every inode the guest caches holds an fd and large trees hit RLIMIT_NOFILE.
        .args([
            "--sandbox",
            "chroot",
            "--announce-submounts",
            "--cache",
            "auto",
            "--modcaps=-mknod:-setfcap",
            "--xattr",
            "--xattrmap",
            XATTR_MAP,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
    record(req, child.id());
    log_output(
        child.stderr.take(),
        &req.sandbox_id,
        "virtiofsd",
        log_limit.clone(),
        None,
    );
    let deadline = Instant::now() + timeout;
    while !sockets.fs.exists() {
        if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
            stop(&mut child, Duration::ZERO);
            return Err(LaunchError::NoFsSocket {
                socket: sockets.fs.clone(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

/// Starts hull-vmm and waits until the agent prints its ready marker.
pub fn start_vmm(
    req: &SandboxRequest,
    sockets: &Sockets,
    timeout: Duration,
    log_limit: &Arc<RateLimit>,
) -> Result<Child, LaunchError> {
    let config = &req.config;
    let program = &config.hull_vmm;
    let mut child = Command::new(program)
        .arg("--kernel")
        .arg(&config.kernel)
        .arg("--initrd")
        .arg(&config.initrd)
        .args(["--cmdline", CMDLINE])
        .args(["--vcpus", &config.vcpus.to_string()])
        .args(["--memory", &config.memory_mib.to_string()])
        .args(["--console", "stdout"])
        .arg("--vsock")
        .arg(format!("{GUEST_CID},{}", sockets.vsock.display()))
        .arg("--fs")
        .arg(format!("{SHARE_TAG},{}", sockets.fs.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
    record(req, child.id());
    let (ready_tx, ready_rx) = mpsc::channel();
    log_output(
        child.stderr.take(),
        &req.sandbox_id,
        "hull-vmm",
        log_limit.clone(),
        None,
    );
    log_output(
        child.stdout.take(),
        &req.sandbox_id,
        "guest console",
        log_limit.clone(),
        Some(ready_tx),
    );
    match ready_rx.recv_timeout(timeout) {
        Ok(()) => Ok(child),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            Err(LaunchError::VmmExited { status })
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            stop(&mut child, Duration::ZERO);
            Err(LaunchError::NotReady {
                secs: timeout.as_secs(),
            })
        }
    }
}

fn record(req: &SandboxRequest, pid: u32) {
    if let Err(e) = host_pids::record(&req.state_dir, pid) {
        tracing::warn!(pid, "record host pid: {e}");
    }
    // Into the pod's host cgroup (made by the backend before launching).
    if let Err(e) =
        super::cgroup::PodCgroup::create(req.cgroups_path.as_deref()).and_then(|c| c.add(pid))
    {
        tracing::error!(sandbox = %req.sandbox_id, pid, "host accounting: {e}");
    }
}

/// Waits up to `grace` for the child to exit, then SIGKILLs and reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
