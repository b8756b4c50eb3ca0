//! The errors of task operations, in one place for the pod, its sandbox and
//! the service that maps each kind to a ttrpc status code.

use std::path::PathBuf;

use super::rootfs::RootfsError;
use super::stdio::StdioError;
use crate::backend::BackendError;
use crate::config::ConfigError;

/// Errors of task operations; the service maps each kind to a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("read OCI spec {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("create pod directory {path}")]
    PodDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of task operations.
pub type Result<T> = std::result::Result<T, TaskError>;
