//! Starts the setup helper (`hull-agent __setup`) for a new process and
//! collects what it reports: PID, pty master, ready or error.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::{ContainerError, Process};
use crate::channel::{Channel, Msg};
use crate::reaper::reaper;
use crate::setup::{SetupConfig, CHANNEL_FD, CONFIG_FD, PIDFD_FD, SETUP_ARG};
use crate::stdio::{relay_pty, Streams};

/// Descriptors at or above this are free while the child rearranges its table.
const SCRATCH_FD: i32 = 10;

/// How long a setup runs before the agent says where it is, and again after each as long.
const SLOW_SETUP: Duration = Duration::from_secs(15);

/// Runs the helper until the process is set up (`Ready`); returns the process
/// and the channel, which reaches end-of-file once the program is executed.
/// `init_pidfd` (an exec) is handed to the helper at [`PIDFD_FD`].
pub fn spawn(
    config: &SetupConfig,
    streams: Streams,
    init_pidfd: Option<&OwnedFd>,
) -> Result<(Arc<Process>, Channel), ContainerError> {
    let id = &config.container_id;
    let (ours, theirs) = Channel::pair()?;
    let (config_r, config_w) = pipe2(OFlag::O_CLOEXEC).map_err(|source| ContainerError::Sys {
        what: "pipe for the setup config",
        source,
    })?;
    let stdin_copy = streams
        .stdin
        .as_ref()
        .map(OwnedFd::try_clone)
        .transpose()
        .map_err(ContainerError::Helper)?;
    let terminal = config.process.terminal().unwrap_or(false);
    let stdio = |fd: Option<OwnedFd>| fd.map_or_else(Stdio::null, Stdio::from);
    let (pty_stream, helper_stdin) = if terminal {
        (streams.stdin, None)
    } else {
        (None, streams.stdin)
    };
    // (from, to) pairs; -1 for no pidfd.
    let moves = [
        (theirs.fd().as_raw_fd(), CHANNEL_FD),
        (config_r.as_raw_fd(), CONFIG_FD),
        (init_pidfd.map_or(-1, |fd| fd.as_raw_fd()), PIDFD_FD),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(SETUP_ARG)
        .env_clear()
        .stdin(stdio(helper_stdin))
        .stdout(stdio(streams.stdout))
        .stderr(stdio(streams.stderr));
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe fcntl/dup2/close on descriptors we own. Every source
    // is first copied above the targets, so no target overwrites a source.
    unsafe {
        cmd.pre_exec(move || {
            let mut scratch = [-1; 3];
            for (i, &(fd, _)) in moves.iter().enumerate() {
                if fd >= 0 {
                    scratch[i] = libc::fcntl(fd, libc::F_DUPFD, SCRATCH_FD);
                    if scratch[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            for (i, &(_, target)) in moves.iter().enumerate() {
                if scratch[i] >= 0 {
                    if libc::dup2(scratch[i], target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(scratch[i]);
                }
            }
            Ok(())
        })
    };
    let helper = cmd.spawn().map_err(ContainerError::Helper)?;
    drop(theirs);
    drop(config_r);
    let json = serde_json::to_vec(config).map_err(ContainerError::Spec)?;
    std::fs::File::from(config_w)
        .write_all(&json)
        .map_err(ContainerError::Helper)?;

    let (mut pid, mut pidfd, mut master, mut ready) = (None, None, None, false);
    // The helper reports the PID and its child reports Ready: either may come first.
    let helper_pid = helper.id() as i32;
    let waiting = Instant::now();
    let result = loop {
        // A setup that takes long says where its processes are (the host's
        // CreateContainer bound may end the wait first).
        while !ours.readable(SLOW_SETUP)? {
            tracing::warn!(
                container = %id,
                waited_s = waiting.elapsed().as_secs(),
                helper = %describe(helper_pid),
                process = %pid.map_or_else(|| "not forked yet".into(), describe),
                "setup is slow"
            );
        }
        match ours.recv()? {
            Some((Msg::Pid(p), fd)) => {
                pid = Some(p);
                pidfd = fd;
                if ready {
                    break Ok(());
                }
            }
            Some((Msg::PtyMaster, fd)) => master = fd,
            Some((Msg::Ready, _)) => {
                ready = true;
                if pid.is_some() {
                    break Ok(());
                }
            }
            Some((Msg::Error(e), _)) => break Err(ContainerError::Setup(e)),
            Some((other, _)) => break Err(ContainerError::Setup(format!("unexpected {other:?}"))),
            None => {
                break Err(ContainerError::Setup(
                    "setup helper exited without a word".into(),
                ))
            }
        }
    };
    reaper().wait(helper_pid);
    reaper().forget(helper_pid);
    result?;
    let pid = pid.ok_or_else(|| ContainerError::Setup("no PID reported".into()))?;
    let pidfd = pidfd.ok_or_else(|| ContainerError::Setup("no pidfd reported".into()))?;
    let pty = match (terminal, master) {
        (true, Some(master)) => {
            let drained = relay_pty(id, &master, pty_stream)?;
            Some((master, drained))
        }
        (true, None) => return Err(ContainerError::Setup("no pty master received".into())),
        (false, _) => None,
    };
    tracing::info!(container = %id, pid, terminal, "process set up");
    let process = Process {
        pid,
        pidfd,
        stdin: Mutex::new(if terminal { None } else { stdin_copy }),
        pty,
    };
    Ok((Arc::new(process), ours))
}

/// What a process is doing, from /proc: its state and, when it is in a
/// system call, the call's number and first argument (`/proc/PID/syscall`).
fn describe(pid: i32) -> String {
    let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}"));
    let state = read("stat").ok().and_then(|s| {
        // The state follows the command name's closing parenthesis.
        let rest = &s[s.rfind(')')? + 1..];
        rest.split_whitespace().next().map(str::to_string)
    });
    let syscall = read("syscall").map_or_else(
        |e| format!("syscall unknown ({e})"),
        |s| {
            let words: Vec<&str> = s.split_whitespace().take(2).collect();
            format!("syscall {}", words.join(" "))
        },
    );
    match state {
        Some(state) => format!("pid {pid} state {state} {syscall}"),
        None => format!("pid {pid} gone"),
    }
}

/// After `Start` (or right away for exec): end-of-file means executed.
pub fn await_exec(chan: &Channel) -> Result<(), ContainerError> {
    match chan.recv()? {
        None => Ok(()),
        Some((Msg::Error(e), _)) => Err(ContainerError::Setup(e)),
        Some((other, _)) => Err(ContainerError::Setup(format!("unexpected {other:?}"))),
    }
}
