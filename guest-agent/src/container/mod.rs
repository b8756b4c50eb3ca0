//! Containers and their processes, one file per operation.

mod create;
mod exec;
mod image_disk;
mod layer;
mod remove;
mod signal;
mod spawn;
mod start;
mod tty;
mod update;
mod wait;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

pub use create::{check_spec, do_create};
pub use exec::do_exec;
pub use remove::do_remove;
pub use signal::do_signal;
pub use start::do_start;
pub use tty::{do_close_stdin, do_resize};
pub use update::do_update;
pub use wait::do_wait;

use crate::cgroup::{Cgroup, CgroupError};
use crate::channel::{Channel, ChannelError};
use crate::paths::PathError;
use crate::setup::NsId;
use crate::stdio::{Drained, StdioError};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    InvalidId(#[from] hull_protocol::ids::InvalidId),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("process {exec} of container {id} not found")]
    ProcessNotFound { id: String, exec: String },
    #[error("invalid OCI spec")]
    Spec(#[source] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("unsafe or missing path")]
    Path(#[from] PathError),
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("stdio")]
    Stdio(#[from] StdioError),
    #[error("setup channel")]
    Channel(#[from] ChannelError),
    #[error("cannot start the setup helper")]
    Helper(#[source] std::io::Error),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("writable layer")]
    Layer(#[from] layer::LayerError),
    #[error("image disk")]
    ImageDisk(#[from] image_disk::ImageDiskError),
    #[error("cannot read the namespaces of {0}")]
    Namespaces(String, #[source] std::io::Error),
    #[error("container {0} was already started")]
    AlreadyStarted(String),
    #[error("process has no terminal")]
    NoTerminal,
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// One process of a container: its init or an exec.
pub struct Process {
    pub pid: i32,
    /// Names this process for good (PIDs are reused).
    pub pidfd: OwnedFd,
    /// Our copy of the stdin stream, to end it on CloseStdin.
    pub stdin: Mutex<Option<OwnedFd>>,
    /// The pty master and its relay's progress, with a terminal.
    pub pty: Option<(OwnedFd, Arc<Drained>)>,
}

pub struct Container {
    pub id: String,
    pub cgroup: Cgroup,
    pub init: Arc<Process>,
    /// Applied to exec'd processes too.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The init's namespaces that are not the agent's: what an exec joins
    /// and what other containers' specs may name by path.
    pub namespaces: Vec<NsId>,
    /// Channel to the waiting init until StartContainer.
    start: Mutex<Option<Channel>>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The writable layer in the guest, when the host asked for one; removed with the container.
    layer: Mutex<Option<layer::WritableLayer>>,
}

impl Container {
    /// The namespaces other containers may join: none once the init is gone
    /// (a freed namespace's inode number can be reused).
    pub fn joinable(&self) -> &[NsId] {
        if crate::reaper::reaper().exited(self.init.pid).is_some() {
            &[]
        } else {
            &self.namespaces
        }
    }

    /// The init process for an empty `exec_id`, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ProcessNotFound {
                id: self.id.clone(),
                exec: exec_id.into(),
            })
    }
}
