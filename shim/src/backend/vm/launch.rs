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
use super::supervise;
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
        disks: super::images::slots(config),
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

/// virtiofsd's capabilities: its default set without CAP_MKNOD (a guest cannot make
/// device nodes on the host) nor CAP_SETFCAP (nor plant file capabilities). What stays is
/// what the share needs, the guest's root acting on image files of many host uids:
/// CAP_CHOWN (chown), CAP_DAC_OVERRIDE (root reads and writes files whatever their mode),
/// CAP_FOWNER (chmod, utimes, xattrs of files root does not own), CAP_FSETID (setgid bits
/// kept on files of other groups; virtiofsd drops it per write to clear suid bits),
/// CAP_SETUID and CAP_SETGID (virtiofsd creates files as the guest's caller through its
/// fsuid and fsgid), and CAP_DAC_READ_SEARCH, which stays in virtiofsd's set although only
/// file handles need it. File handles stay off (virtiofsd's default): each inode the guest
/// caches holds an O_PATH fd (virtiofsd raises its RLIMIT_NOFILE). With
/// `--inode-file-handles=prefer`, the CI run of 2026-12-01 ran the share's pjdfstest cases
/// ~1.75x slower against runc than before (the irqfd change landed in the same run: not
/// separated). virtiofsd empties the bounding set.
const MODCAPS: &str = "--modcaps=-mknod:-setfcap";

/// The pod cgroup's `cgroup.procs` files, for a child to join before exec (what
/// it forks at once is born inside). Prepared before the fork.
fn cgroup_procs(req: &SandboxRequest) -> Vec<std::ffi::CString> {
    super::cgroup::PodCgroup::create(req.cgroups_path.as_deref())
        .map(|c| {
            c.dirs()
                .iter()
                .filter_map(|d| {
                    std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_vec()).ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Makes `command`'s child join the cgroups of `procs` (from [`cgroup_procs`]) and
/// inherit the descriptors `inherit` before exec.
fn pre_exec_join(command: &mut Command, procs: Vec<std::ffi::CString>, inherit: Vec<RawFd>) {
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
}

/// virtiofsd's command line: the share, its socket and its confinement.
fn virtiofsd_args(req: &SandboxRequest, sockets: &Sockets) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--socket-path".into(),
        sockets.fs.clone().into(),
        "--shared-dir".into(),
        req.share_dir.clone().into(),
    ];
    // The namespace sandbox: virtiofsd forks a server that is PID 1 of new PID and
    // network namespaces, in a mount namespace made a slave of the host's and rooted
    // at the share; the share has shared propagation (`PodShare::create`), so the
    // container roots and volumes mounted into it later reach the server. Its own
    // seccomp filter kills it on a syscall outside the list (and sets no_new_privs).
    // Extended attributes: only `user.*` passes, both ways; `security.*` (file
    // capabilities), `trusted.*` and ACLs are refused, so a guest cannot plant a file
    // capability on a host file.
    args.extend(
        [
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
            MODCAPS,
            "--announce-submounts",
            "--cache",
            "auto",
            "--xattr",
            "--xattrmap",
            XATTR_MAP,
        ]
        .map(Into::into),
    );
    args
}

/// Starts virtiofsd on the pod share, in the pod's cgroup from birth (its server
/// is forked at once), and waits for its socket.
pub fn start_virtiofsd(
    req: &SandboxRequest,
    sockets: &Sockets,
    timeout: Duration,
    log_limit: &Arc<RateLimit>,
) -> Result<Child, LaunchError> {
    let program = &req.config.virtiofsd;
    let mut command = Command::new(program);
    pre_exec_join(&mut command, cgroup_procs(req), Vec::new());
    let mut child = command
        .args(virtiofsd_args(req, sockets))
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
    // The child joins the pod's cgroup before exec: a jailed hull-vmm forks into its PID
    // namespace at once, and the VMM it forks must be born inside (guest RAM is charged
    // where it is first touched). `record` moves the process again and reports failures.
    pre_exec_join(&mut command, cgroup_procs(req), inherit.to_vec());
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
            if holder {
                record_children(req, pid);
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

/// The pids of `pid`'s children (of its main thread, which forks them).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Records the children of `pid` in `host-pids`, for cleanup after a shim crash and the
/// pod's figures: a jailed hull-vmm under its holder, virtiofsd's server.
fn record_children(req: &SandboxRequest, pid: u32) {
    for child in children_of(pid) {
        if let Err(e) = host_pids::record(&req.state_dir, child) {
            tracing::warn!(sandbox = %req.sandbox_id, pid = child, "record host pid: {e}");
        }
    }
}

/// Records virtiofsd's server: the child its namespace sandbox forked (PID 1 of its own
/// PID namespace; the process the shim spawned only waits for it). Called once the guest
/// booted, when the server has long served the share and the short-lived helper virtiofsd
/// forks before it is gone.
pub fn record_virtiofsd_server(req: &SandboxRequest, virtiofsd: &Child) {
    record_children(req, virtiofsd.id());
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

/// How long [`stop`] waits for a killed child's own children to exit.
const CHILDREN_EXIT: Duration = Duration::from_secs(5);

/// Waits up to `grace` for the child to exit, then SIGKILLs it and its own children
/// (virtiofsd's server, a jailed VMM under its holder: they would outlive it for a
/// moment and keep the pod's cgroup busy), reaps it and waits for them.
pub fn stop(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // pidfds of the children the child still lists after they were opened: a child
    // it has not reaped keeps its pid, so none of them is a recycled one.
    let pid = child.id();
    let opened: Vec<(u32, std::os::fd::OwnedFd)> = children_of(pid)
        .into_iter()
        .filter_map(|c| Some((c, supervise::pidfd("a pod process's child", c).ok()?)))
        .collect();
    let listed = children_of(pid);
    let kids: Vec<_> = opened
        .into_iter()
        .filter(|(c, _)| listed.contains(c))
        .map(|(_, fd)| fd)
        .collect();
    let _ = child.kill();
    kids.iter().for_each(supervise::kill);
    let _ = child.wait();
    let deadline = Instant::now() + CHILDREN_EXIT;
    while !kids.iter().all(supervise::exited) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
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

    /// A field of `/proc/<pid>/status`, its value's words.
    fn status(pid: u32, field: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }

    #[test]
    fn virtiofsd_serves_from_a_confined_server_and_stop_ends_both() {
        let home = std::env::var("HOME").unwrap_or_default();
        let found = [
            Path::new(&home).join(".cargo/bin/virtiofsd"),
            "/usr/local/bin/virtiofsd".into(),
            "/usr/libexec/virtiofsd".into(),
        ]
        .into_iter()
        .find(|p| p.exists());
        let Some(program) = found else {
            println!("skipped: no virtiofsd (cargo install virtiofsd)");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: virtiofsd's namespace sandbox needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            virtiofsd: program,
            ..Config::default()
        };
        let req = SandboxRequest {
            share_dir: dir.path().join("share"),
            state_dir: dir.path().into(),
            ..request(config)
        };
        std::fs::create_dir(&req.share_dir).unwrap();
        let sockets = Sockets::in_dir(dir.path());
        let limit = RateLimit::for_pod();
        let mut launcher =
            start_virtiofsd(&req, &sockets, Duration::from_secs(60), &limit).unwrap();
        // The server is the launcher's child that installed the seccomp filter.
        let deadline = Instant::now() + Duration::from_secs(20);
        let server = loop {
            let serving = children_of(launcher.id())
                .into_iter()
                .find(|&c| status(c, "Seccomp") == ["2"]);
            if let Some(server) = serving {
                break server;
            }
            assert!(Instant::now() < deadline, "no virtiofsd server");
            std::thread::sleep(Duration::from_millis(10));
        };
        let server_fd = supervise::pidfd("virtiofsd's server", server).unwrap();
        record_virtiofsd_server(&req, &launcher);
        let recorded = std::fs::read_to_string(dir.path().join(host_pids::FILE)).unwrap();
        assert!(
            recorded.starts_with(&format!("{} ", launcher.id())),
            "{recorded}"
        );
        assert!(recorded.contains(&format!("\n{server} ")), "{recorded}");
        assert_eq!(status(server, "NoNewPrivs"), ["1"]);
        // chown, dac_override, dac_read_search, fowner, fsetid, setgid, setuid; nothing else,
        // not even in the bounding set.
        assert_eq!(status(server, "CapEff"), ["00000000000000df"]);
        assert_eq!(status(server, "CapBnd"), ["0000000000000000"]);
        assert_eq!(
            status(server, "NSpid").last().map(String::as_str),
            Some("1")
        );
        let ns = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        for kind in ["mnt", "pid", "net"] {
            assert_ne!(
                ns(&server.to_string(), kind),
                ns("self", kind),
                "{kind} namespace"
            );
        }
        assert_eq!(
            status(launcher.id(), "CapEff"),
            ["0000000000000000"],
            "the launcher only waits"
        );
        stop(&mut launcher, Duration::ZERO);
        assert!(
            supervise::exited(&server_fd),
            "the server ends with the launcher"
        );
        sockets.remove();
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
