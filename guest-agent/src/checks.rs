//! The agent's checks and translations of a request's fields, made before any
//! system call, gathered for the fuzz targets in `guest-agent/fuzz/` (the
//! agent calls them where they live; this module only names them).

use hull_protocol::agent::PodNetwork;

pub use crate::cgroup::{limits as cgroup_limits, CgroupError};
pub use crate::container::{check_spec, ContainerError};
pub use crate::network::NetworkError;
pub use crate::paths::{check_lexical, secure_join, PathError};
pub use crate::setup::{compile_seccomp, MountOpts, SetupError};

/// CreateSandbox's check of the pod network, before anything changes.
pub fn check_network(req: &PodNetwork) -> Result<(), NetworkError> {
    crate::network::check(req).map(drop)
}
