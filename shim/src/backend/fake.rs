//! TEST DOUBLE, never the product: a backend that runs container processes
//! directly on the host, chrooted into the container's rootfs in the pod share.
//! No VM, no isolation beyond chroot. Built only with the `fake-backend` feature
//! and chosen only with `HULL_SHIM_BACKEND=fake`, so host-tier tests can drive
//! the shim's containerd bookkeeping through a real containerd.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::openpty;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process as OciProcess};

use super::{
    host_pids, Backend, BackendError, ContainerRequest, ContainerStats, ExecRequest,
    ProcessStreams, Result, SandboxRequest, StdioWanted,
};

type Key = (String, Option<String>);

/// A process that is created, running, or reaped.
struct FakeProcess {
    rootfs: PathBuf,
    process: OciProcess,
    /// Child ends of the stdio pipes, until start.
    stdio: [Option<OwnedFd>; 3],
    /// The pty master, when the process has a terminal.
    pty: Option<File>,
    pid: Option<u32>,
    child: Option<Child>,
    exited: bool,
}

#[derive(Default)]
struct State {
    share_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    procs: HashMap<Key, FakeProcess>,
    /// Memory limits set by `update`, by container, reported by `stats`
    /// (the fake enforces none).
    memory_limits: HashMap<String, u64>,
    destroyed: bool,
}

/// Runs containers as chrooted host processes. Test double only.
#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<State>,
    destroyed: Condvar,
}

fn key(container_id: &str, exec_id: Option<&str>) -> Key {
    (container_id.to_string(), exec_id.map(str::to_string))
}

fn not_found(container_id: &str, exec_id: Option<&str>) -> BackendError {
    BackendError::NotFound {
        container_id: container_id.to_string(),
        exec_id: exec_id.unwrap_or("").to_string(),
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        context: context.to_string(),
        source,
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))
}

/// A pty master read as a stream: EIO (every slave closed) is its end of file.
struct PtyReader(File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

fn cloexec(fd: &OwnedFd) -> Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(drop)
        .map_err(|e| io("set close-on-exec")(e.into()))
}

/// Child stdio ends, the streams the shim keeps, and the pty master (for resizing).
type Stdio3 = ([Option<OwnedFd>; 3], ProcessStreams, Option<File>);

/// Makes a pty: the slave on the child's 0, 1 and 2, the master as the shim's streams.
fn make_pty(wanted: StdioWanted) -> Result<Stdio3> {
    let pty = openpty(None, None).map_err(|e| io("openpty")(e.into()))?;
    cloexec(&pty.master)?;
    cloexec(&pty.slave)?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(io("duplicate pty fd"));
    let child = [
        Some(dup(&pty.slave)?),
        Some(dup(&pty.slave)?),
        Some(pty.slave),
    ];
    let master = File::from(pty.master);
    let clone = |f: &File| f.try_clone().map_err(io("duplicate pty master"));
    let stdin: Option<Box<dyn std::io::Write + Send>> = if wanted.stdin {
        Some(Box::new(clone(&master)?))
    } else {
        None
    };
    let streams = ProcessStreams {
        stdin,
        stdout: Some(Box::new(PtyReader(clone(&master)?))),
        stderr: None,
    };
    Ok((child, streams, Some(master)))
}

/// Makes the pipes (or a pty) for the wanted streams.
fn make_stdio(wanted: StdioWanted) -> Result<Stdio3> {
    if wanted.terminal {
        return make_pty(wanted);
    }
    let mut child: [Option<OwnedFd>; 3] = [None, None, None];
    let mut streams = ProcessStreams::default();
    if wanted.stdin {
        let (r, w) = pipe()?;
        child[0] = Some(r);
        streams.stdin = Some(Box::new(File::from(w)));
    }
    if wanted.stdout {
        let (r, w) = pipe()?;
        child[1] = Some(w);
        streams.stdout = Some(Box::new(File::from(r)));
    }
    if wanted.stderr {
        let (r, w) = pipe()?;
        child[2] = Some(w);
        streams.stderr = Some(Box::new(File::from(r)));
    }
    Ok((child, streams, None))
}

/// Finds `program` inside `rootfs` along the process's PATH; returns the in-root path.
fn resolve(rootfs: &Path, program: &str, env: &[String]) -> Result<String> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .find(|p| rootfs.join(p.trim_start_matches('/')).exists())
        .ok_or_else(|| {
            BackendError::Invalid(format!("{program}: not found in the container's PATH"))
        })
}

fn spawn(p: &mut FakeProcess) -> Result<Child> {
    let args = p.process.args().clone().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| BackendError::Invalid("the process has no args".to_string()))?;
    let env = p.process.env().clone().unwrap_or_default();
    let program = resolve(&p.rootfs, program, &env)?;
    let root = CString::new(p.rootfs.as_os_str().as_bytes())
        .map_err(|_| BackendError::Invalid("rootfs path has a NUL byte".to_string()))?;
    let cwd = CString::new(p.process.cwd().as_os_str().as_bytes())
        .map_err(|_| BackendError::Invalid("cwd has a NUL byte".to_string()))?;
    let (uid, gid) = (p.process.user().uid(), p.process.user().gid());
    let terminal = p.pty.is_some();
    let mut cmd = Command::new(&program);
    cmd.args(&args[1..]).env_clear();
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let [stdin, stdout, stderr] = std::mem::take(&mut p.stdio);
    cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .stderr(stderr.map_or_else(Stdio::null, Stdio::from));
    // SAFETY: runs in the forked child before exec, after stdio redirection, and only
    // makes async-signal-safe syscalls (setsid, ioctl, chroot, chdir, setgid, setuid)
    // on CStrings built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setsid())?;
            if terminal {
                // Stdin is the pty slave: make it the controlling terminal.
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(cwd.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
    cmd.spawn().map_err(io("start the container process"))
}

impl FakeBackend {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_pids(state: &State, container_id: &str) -> Vec<u32> {
        state
            .procs
            .iter()
            .filter(|((cid, _), p)| cid == container_id && !p.exited)
            .filter_map(|(_, p)| p.pid)
            .collect()
    }

    fn signal_pids(pids: &[u32], signal: Signal) -> Result<()> {
        for pid in pids {
            let pid = i32::try_from(*pid).map_err(|_| BackendError::Invalid("pid".to_string()))?;
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(io("kill")(e.into())),
            }
        }
        Ok(())
    }

    fn add(
        &self,
        key: Key,
        rootfs: PathBuf,
        process: OciProcess,
        wanted: StdioWanted,
    ) -> Result<ProcessStreams> {
        let (stdio, streams, pty) = make_stdio(wanted)?;
        self.lock().procs.insert(
            key,
            FakeProcess {
                rootfs,
                process,
                stdio,
                pty,
                pid: None,
                child: None,
                exited: false,
            },
        );
        Ok(streams)
    }
}

impl Backend for FakeBackend {
    fn create_sandbox(&self, req: &SandboxRequest) -> Result<()> {
        tracing::info!(
            sandbox = %req.sandbox_id,
            state_dir = %req.state_dir.display(),
            vcpus = req.config.vcpus,
            memory_mib = req.config.memory_mib,
            "fake sandbox: no VM, processes run on the host"
        );
        let mut state = self.lock();
        state.share_dir = Some(req.share_dir.clone());
        state.state_dir = Some(req.state_dir.clone());
        Ok(())
    }

    fn create_container(&self, req: &ContainerRequest<'_>) -> Result<ProcessStreams> {
        let share = self
            .lock()
            .share_dir
            .clone()
            .ok_or_else(|| BackendError::Invalid("no sandbox".to_string()))?;
        let process = req
            .spec
            .process()
            .clone()
            .ok_or_else(|| BackendError::Invalid("the spec has no process".to_string()))?;
        let rootfs = share.join(req.rootfs_in_share);
        for v in req.volumes {
            tracing::info!(
                container = req.container_id,
                destination = %v.destination.display(),
                share = %v.path_in_share,
                readonly = v.readonly,
                "volume shared (the fake does not mount it in the container)"
            );
        }
        self.add(key(req.container_id, None), rootfs, process, req.stdio)
    }

    fn exec(&self, req: &ExecRequest<'_>) -> Result<ProcessStreams> {
        let rootfs = self
            .lock()
            .procs
            .get(&key(req.container_id, None))
            .map(|p| p.rootfs.clone())
            .ok_or_else(|| not_found(req.container_id, None))?;
        let key = key(req.container_id, Some(req.exec_id));
        self.add(key, rootfs, req.process.clone(), req.stdio)
    }

    fn start(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        let mut state = self.lock();
        let p = state
            .procs
            .get_mut(&key(container_id, exec_id))
            .ok_or_else(|| not_found(container_id, exec_id))?;
        let child = spawn(p)?;
        let pid = child.id();
        p.pid = Some(pid);
        p.child = Some(child);
        if let Some(dir) = &state.state_dir {
            if let Err(e) = host_pids::record(dir, pid) {
                tracing::warn!(container = container_id, pid, "record host pid: {e}");
            }
        }
        Ok(pid)
    }

    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        let k = key(container_id, exec_id);
        let mut child = self
            .lock()
            .procs
            .get_mut(&k)
            .and_then(|p| p.child.take())
            .ok_or_else(|| not_found(container_id, exec_id))?;
        let status = child.wait().map_err(io("wait for the container process"))?;
        if let Some(p) = self.lock().procs.get_mut(&k) {
            p.exited = true;
        }
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255);
        Ok(u32::try_from(code).unwrap_or(255))
    }

    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| BackendError::Invalid(format!("signal {signal}")))?;
        let state = self.lock();
        let pids = if all {
            Self::live_pids(&state, container_id)
        } else {
            let p = state
                .procs
                .get(&key(container_id, exec_id))
                .ok_or_else(|| not_found(container_id, exec_id))?;
            p.pid.filter(|_| !p.exited).into_iter().collect()
        };
        Self::signal_pids(&pids, signal)
    }

    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        cols: u32,
        rows: u32,
    ) -> Result<()> {
        let state = self.lock();
        let pty = state
            .procs
            .get(&key(container_id, exec_id))
            .ok_or_else(|| not_found(container_id, exec_id))?
            .pty
            .as_ref()
            .ok_or(BackendError::Unsupported(
                "resizing a process without a terminal",
            ))?;
        let size = libc::winsize {
            ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
            ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which outlives the
        // call; the fd is a pty master this backend owns.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(io("resize pty")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn close_stdin(&self, _: &str, _: Option<&str>) -> Result<()> {
        // Dropping the pipe's write end, which the shim did, is the whole job.
        Ok(())
    }

    fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        Ok(Self::live_pids(&self.lock(), container_id))
    }

    fn stats(&self, container_id: &str) -> Result<ContainerStats> {
        let state = self.lock();
        Ok(ContainerStats {
            pids: Self::live_pids(&state, container_id).len() as u64,
            memory_limit_bytes: state.memory_limits.get(container_id).copied().unwrap_or(0),
            ..ContainerStats::default()
        })
    }

    fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        let mut state = self.lock();
        if !state.procs.contains_key(&key(container_id, None)) {
            return Err(not_found(container_id, None));
        }
        let limit = resources.memory().as_ref().and_then(|m| m.limit());
        if let Some(limit) = limit.filter(|l| *l != 0) {
            let limit = u64::try_from(limit).unwrap_or(0);
            state.memory_limits.insert(container_id.to_string(), limit);
        }
        tracing::info!(
            container = container_id,
            ?limit,
            "resources updated (not enforced by the fake)"
        );
        Ok(())
    }

    fn pause(&self, container_id: &str) -> Result<()> {
        Self::signal_pids(
            &Self::live_pids(&self.lock(), container_id),
            Signal::SIGSTOP,
        )
    }

    fn resume(&self, container_id: &str) -> Result<()> {
        Self::signal_pids(
            &Self::live_pids(&self.lock(), container_id),
            Signal::SIGCONT,
        )
    }

    fn remove_container(&self, container_id: &str) -> Result<()> {
        let mut state = self.lock();
        Self::signal_pids(&Self::live_pids(&state, container_id), Signal::SIGKILL)?;
        state.procs.retain(|(cid, _), _| cid != container_id);
        state.memory_limits.remove(container_id);
        Ok(())
    }

    fn next_oom(&self) -> Option<String> {
        let mut state = self.lock();
        while !state.destroyed {
            state = self
                .destroyed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        None
    }

    fn destroy_sandbox(&self) -> Result<()> {
        let mut state = self.lock();
        let pids: Vec<u32> = state
            .procs
            .values()
            .filter(|p| !p.exited)
            .filter_map(|p| p.pid)
            .collect();
        Self::signal_pids(&pids, Signal::SIGKILL)?;
        state.procs.clear();
        if let Some(dir) = &state.state_dir {
            host_pids::clear(dir);
        }
        state.destroyed = true;
        self.destroyed.notify_all();
        Ok(())
    }
}
