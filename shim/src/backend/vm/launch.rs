//! The pod's host processes: `virtiofsd` serving the share and `hull-vmm`
//! running the guest (from the typed [`VmConfig`] written to `vm.json`), both
//! recorded in `host-pids`, and their teardown.

use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hull_protocol::vm::{
    self, pod_files, Console, FsConfig, JailConfig, VmConfig, VmConfigError, VsockConfig,
    POD_GUEST_CID, SHARE_TAG,
};

use super::console::{log_output, RateLimit};
use crate::backend::host_pids;
use crate::backend::SandboxRequest;

/// virtiofsd's xattr rules (`:type:scope:key:prepend:` each): names starting
/// with `user.` pass unchanged, every other name is refused to the guest and
/// hidden from its listings.
const XATTR_MAP: &str = ":ok:all:user.:::bad:all:::";

/// Errors of starting the pod's host processes.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot open the pod directory {path} to the jailed hull-vmm's group")]
    JailDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the VM configuration {path}")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// Paths of one pod's sockets and VM configuration, all inside its state
/// directory (names from [`pod_files`]).
#[derive(Debug, Clone)]
pub struct Sockets {
    pub vsock: PathBuf,
    pub fs: PathBuf,
    /// hull-vmm's control socket (VM figures: [`hull_protocol::control::vm_stats`]).
    pub control: PathBuf,
    /// The `vm.json` hull-vmm reads.
    pub vm_config: PathBuf,
}

impl Sockets {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            vsock: state_dir.join(pod_files::VSOCK),
            fs: state_dir.join(pod_files::FS),
            control: state_dir.join(pod_files::CONTROL),
            vm_config: state_dir.join(pod_files::VM_CONFIG),
        }
    }

    /// Removes what the processes may have left behind.
    pub fn remove(&self) {
        for path in [
            self.vsock.clone(),
            self.fs.clone(),
            PathBuf::from(format!("{}.pid", self.fs.display())),
            self.control.clone(),
            self.vm_config.clone(),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The pod's VM configuration, validated: the config's (annotated) sizes,
/// kernel, image and debug switch, the pod's sockets. The shim calls this
/// before it starts anything, so a bad value fails the create at once.
pub fn vm_config(req: &SandboxRequest, sockets: &Sockets) -> Result<VmConfig, VmConfigError> {
    let config = &req.config;
    let cfg = VmConfig {
        initrd: Some(config.initrd.clone()),
        cmdline: vm::guest_cmdline(config.debug),
        vcpus: vm::vcpus_from("vcpus", config.vcpus)?,
        memory_mib: config.memory_mib.into(),
        console: Console::Stdout,
        vsock: Some(VsockConfig {
            cid: POD_GUEST_CID,
            uds: sockets.vsock.clone(),
        }),
        fs: vec![FsConfig {
            socket: sockets.fs.clone(),
            tag: SHARE_TAG.into(),
        }],
        control: Some(sockets.control.clone()),
        debug: config.debug,
        jail: config.vmm_jail.then(|| JailConfig {
            // The directory of the pod's sockets: the pod's state directory.
            dir: sockets
                .vsock
                .parent()
                .unwrap_or(&req.state_dir)
                .to_path_buf(),
            // Explicit ids here; `vmm_user`'s are looked up when the sandbox is created.
            uid: config.vmm_uid.unwrap_or(0),
            gid: config.vmm_gid.unwrap_or(0),
        }),
        ..VmConfig::new(config.kernel.clone())
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Lets the jailed VMM's group traverse the pod directory (mode 2710, group `gid`; the setgid
/// bit gives the `<uds>_<port>` listeners made later that group), so the unprivileged VMM can
/// reach the sockets in it; nothing else of the directory is readable to it.
fn open_pod_dir_to(dir: &Path, gid: u32) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, None, Some(gid))
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2710)))
        .map_err(|source| LaunchError::JailDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `cfg` as JSON to `path` (mode 0600: the state directory is root's).
fn write_vm_config(cfg: &VmConfig, path: &Path) -> Result<(), LaunchError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(cfg.to_json().as_bytes())
    };
    write().map_err(|source| LaunchError::WriteConfig {
        path: path.to_path_buf(),
        source,
    })
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

/// Writes `cfg` to the pod's `vm.json`, starts `hull-vmm --config` on it
/// (inheriting exactly the descriptors `inherit`: the taps of `cfg.net`) and
/// waits until the agent prints its ready marker.
pub fn start_vmm(
    req: &SandboxRequest,
    sockets: &Sockets,
    cfg: &VmConfig,
    inherit: &[RawFd],
    timeout: Duration,
    log_limit: &Arc<RateLimit>,
) -> Result<Child, LaunchError> {
    write_vm_config(cfg, &sockets.vm_config)?;
    if let Some(jail) = cfg.jail.as_ref().filter(|j| (j.uid, j.gid) != (0, 0)) {
        open_pod_dir_to(&jail.dir, jail.gid)?;
    }
    let program = &req.config.hull_vmm;
    let mut command = Command::new(program);
    let inherit = inherit.to_vec();
    // The child joins the pod's cgroup before exec: a jailed hull-vmm forks into its PID
    // namespace at once, and the VMM it forks must be born inside (guest RAM is charged
    // where it is first touched). `record` moves the process again and reports failures.
    let procs: Vec<std::ffi::CString> =
        super::cgroup::PodCgroup::create(req.cgroups_path.as_deref())
            .map(|c| {
                c.dirs()
                    .iter()
                    .filter_map(|d| {
                        std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_vec())
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
    // SAFETY: the hook runs in the child between fork and exec and calls only
    // fcntl(2), open(2), write(2) and close(2), which are async-signal-safe, on
    // descriptors the shim holds open and on paths prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        })
    };
    let mut child = command
        .arg("--config")
        .arg(&sockets.vm_config)
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
        Ok(()) => {
            // A jailed hull-vmm runs as the child of the process spawned here (which holds
            // its PID namespace): record it too, for cleanup and the pod's figures.
            let pid = child.id();
            let holder = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == hull_protocol::vm::VMM_HOLDER_NAME);
            let children = holder
                .then(|| std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok())
                .flatten()
                .unwrap_or_default();
            for vmm in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                if let Err(e) = host_pids::record(&req.state_dir, vmm) {
                    tracing::warn!(pid = vmm, "record host pid: {e}");
                }
            }
            Ok(child)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn request(config: Config) -> SandboxRequest {
        SandboxRequest {
            sandbox_id: "pod".into(),
            share_dir: "/run/hull/ns/pod/share".into(),
            state_dir: "/run/hull/ns/pod".into(),
            cgroups_path: None,
            network: super::super::SandboxNetwork::Loopback,
            config,
        }
    }

    #[test]
    fn the_vm_config_carries_the_pod_config_and_its_sockets() {
        let config = Config {
            vcpus: 2,
            memory_mib: 1024,
            ..Config::default()
        };
        let sockets = Sockets::in_dir(Path::new("/run/hull/ns/pod"));
        let cfg = vm_config(&request(config.clone()), &sockets).unwrap();
        assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 1024));
        assert_eq!(cfg.kernel, config.kernel);
        assert_eq!(cfg.initrd.as_ref(), Some(&config.initrd));
        assert_eq!(cfg.cmdline, vm::DEFAULT_CMDLINE);
        assert!(!cfg.debug);
        let vsock = cfg.vsock.as_ref().unwrap();
        assert_eq!(vsock.uds, Path::new("/run/hull/ns/pod/vsock.sock"));
        assert_eq!(cfg.fs[0].tag, SHARE_TAG);
        assert_eq!(cfg.fs[0].socket, Path::new("/run/hull/ns/pod/fs.sock"));
        assert_eq!(cfg.control.as_deref(), Some(sockets.control.as_path()));
        // What hull-vmm reads back is what the shim meant.
        assert_eq!(VmConfig::from_json(&cfg.to_json()).unwrap(), cfg);
    }

    #[test]
    fn debug_reaches_hull_vmm_and_the_agent_command_line() {
        let config = Config {
            debug: true,
            ..Config::default()
        };
        let cfg = vm_config(&request(config), &Sockets::in_dir(Path::new("/s"))).unwrap();
        assert!(cfg.debug, "hull-vmm logs at debug level");
        assert!(
            vm::cmdline_wants_debug(&cfg.cmdline),
            "the agent sees {}: {}",
            vm::DEBUG_CMDLINE_WORD,
            cfg.cmdline
        );
    }

    #[test]
    fn out_of_range_sizes_are_refused_before_anything_starts() {
        for (vcpus, memory_mib, field) in
            [(9, 512, "vcpus"), (300, 512, "vcpus"), (1, 8, "memory_mib")]
        {
            let config = Config {
                vcpus,
                memory_mib,
                ..Config::default()
            };
            let err = vm_config(&request(config), &Sockets::in_dir(Path::new("/s"))).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn the_jail_shows_the_sockets_directory_and_drops_to_the_configured_ids() {
        let sockets = Sockets::in_dir(Path::new("/run/hull/ns/pod"));
        let cfg = vm_config(&request(Config::default()), &sockets).unwrap();
        let jail = cfg.jail.expect("jailed by default");
        assert_eq!(jail.dir, Path::new("/run/hull/ns/pod"));
        assert_eq!((jail.uid, jail.gid), (0, 0));
        assert!(cfg.seccomp, "the shim never turns the filters off");
        let config = Config {
            vmm_uid: Some(4000),
            vmm_gid: Some(4001),
            ..Config::default()
        };
        let jail = vm_config(&request(config), &sockets).unwrap().jail.unwrap();
        assert_eq!((jail.uid, jail.gid), (4000, 4001));
        let config = Config {
            vmm_jail: false,
            ..Config::default()
        };
        assert_eq!(vm_config(&request(config), &sockets).unwrap().jail, None);
    }

    #[test]
    fn the_pod_directory_opens_only_to_the_jails_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        if nix::unistd::geteuid().as_raw() != 0 {
            println!("skipped: changing a directory's group needs root");
            return;
        }
        open_pod_dir_to(dir.path(), 65534).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o2710);
        assert_eq!((meta.uid(), meta.gid()), (0, 65534));
        let err = open_pod_dir_to(&dir.path().join("gone"), 65534).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn the_config_file_is_private_json() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = Sockets::in_dir(dir.path());
        let cfg = vm_config(&request(Config::default()), &sockets).unwrap();
        write_vm_config(&cfg, &sockets.vm_config).unwrap();
        let meta = std::fs::metadata(&sockets.vm_config).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&sockets.vm_config).unwrap();
        assert_eq!(VmConfig::from_json(&text).unwrap(), cfg);
        sockets.remove();
        assert!(!sockets.vm_config.exists());
    }
}
