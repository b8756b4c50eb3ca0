//! The setup helper: `hull-agent __setup`, run by the agent for every new
//! container or exec'd process.
//!
//! A freshly executed, single-threaded copy of the agent can safely unshare
//! or join namespaces and fork. It joins the container's cgroup, enters the
//! namespaces, forks the process-to-be (PID 1 of a new PID namespace when
//! creating), reports its PID and exits. The child builds the container's
//! filesystem, reports `Ready`, waits for `Start` (creation only) and
//! executes the process. Errors travel back on the channel as text.

mod mount_opts;
mod namespaces;
mod process;
mod rootfs;
mod seccomp;

pub use mount_opts::MountOpts;
pub use namespaces::{check_joinable, flag as namespace_flag, id_at, ids_of, NsId};
pub use seccomp::compile as compile_seccomp;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use hull_protocol::error::chain;
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::channel::{Channel, ChannelError, Msg};
use crate::paths::PathError;

/// Descriptor of the helper's end of the channel.
pub const CHANNEL_FD: i32 = 3;
/// Descriptor from which the helper reads its [`SetupConfig`] (JSON, to EOF).
pub const CONFIG_FD: i32 = 4;
/// Descriptor of the container init's pidfd, for an exec.
pub const PIDFD_FD: i32 = 5;
/// argv[1] that selects the helper.
pub const SETUP_ARG: &str = "__setup";

#[derive(Debug, Serialize, Deserialize)]
pub struct SetupConfig {
    pub container_id: String,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    pub process: Process,
    /// The container's seccomp profile, for its init and every exec.
    pub seccomp: Option<LinuxSeccomp>,
    pub kind: SetupKind,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SetupKind {
    /// A new container: fresh namespaces, the spec's filesystem, wait for
    /// Start; namespace paths must name one of `joinable`.
    Create {
        rootfs: PathBuf,
        spec: Box<Spec>,
        joinable: Vec<NsId>,
    },
    /// A new process in the container whose first process is `init_pid`,
    /// joining its namespaces `kinds` (clone flags) through its pidfd.
    Exec { init_pid: i32, kinds: i32 },
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unsafe path")]
    Path(#[from] PathError),
    #[error("setup channel")]
    Channel(#[from] ChannelError),
    #[error("bad setup config")]
    Config(#[from] serde_json::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Refused(String),
}

/// Shorthand for mapping a nix error to [`SetupError::Sys`].
pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Sys { what, source }
}

/// Shorthand for mapping an I/O error to [`SetupError::Io`].
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

/// Entry point of `hull-agent __setup`; never returns to the agent's main.
pub fn main() -> ! {
    // SAFETY: the agent installs the channel on CHANNEL_FD before executing us,
    // and nothing else in this fresh process owns it.
    let chan = unsafe { Channel::from_raw(CHANNEL_FD) };
    if let Err(e) = run(&chan) {
        let _ = chan.send(&Msg::Error(chain(&e)), None);
        std::process::exit(1);
    }
    unreachable!("setup either executes the process or fails")
}

fn run(chan: &Channel) -> Result<(), SetupError> {
    // Keep the channel away from the container process.
    nix::fcntl::fcntl(
        chan.fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(sys("mark the channel close-on-exec"))?;
    let config = read_config()?;
    namespaces::join_cgroup(&config.cgroup)?;
    match &config.kind {
        SetupKind::Create { spec, joinable, .. } => namespaces::create(spec, joinable)?,
        SetupKind::Exec { kinds, .. } => namespaces::join(*kinds)?,
    }
    // SAFETY: this helper is single-threaded (freshly executed, no threads
    // started), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(sys("fork the container process"))? {
        ForkResult::Parent { child } => {
            // Our child cannot be reaped before we exit, so its PID is still
            // its own: the pidfd names it for good.
            let pidfd = crate::pidfd::open(child.as_raw())
                .map_err(io("pidfd_open the container process"))?;
            chan.send(&Msg::Pid(child.as_raw()), Some(pidfd.as_raw_fd()))?;
            std::process::exit(0);
        }
        ForkResult::Child => child(chan, &config),
    }
}

fn read_config() -> Result<SetupConfig, SetupError> {
    // SAFETY: the agent installs the config pipe on CONFIG_FD; we own it now.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(CONFIG_FD) });
    let mut json = Vec::new();
    pipe.read_to_end(&mut json)
        .map_err(io("read the setup config"))?;
    Ok(serde_json::from_slice(&json)?)
}

fn child(chan: &Channel, config: &SetupConfig) -> Result<(), SetupError> {
    match &config.kind {
        SetupKind::Create { rootfs, spec, .. } => {
            rootfs::prepare(rootfs, spec, &config.cgroup)?;
            process::session(chan, &config.process)?;
            chan.send(&Msg::Ready, None)?;
            match chan.recv()? {
                Some((Msg::Start, _)) => {}
                other => {
                    return Err(SetupError::Unsupported(format!(
                        "expected Start from the agent, got {other:?}"
                    )))
                }
            }
        }
        SetupKind::Exec { .. } => {
            process::session(chan, &config.process)?;
            chan.send(&Msg::Ready, None)?;
        }
    }
    process::exec(&config.process, config.seccomp.as_ref())
}
