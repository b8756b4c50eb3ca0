//! The agent's checks and translations of a request's fields, made before any
//! system call, gathered for the fuzz targets in `guest-agent/fuzz/` (the
//! agent calls them where they live; this module only names them).

use hull_protocol::agent::PodNetwork;
use oci_spec::runtime::LinuxResources;

pub use crate::cgroup::CgroupError;
pub use crate::container::{check_spec, ContainerError};
pub use crate::network::NetworkError;
pub use crate::paths::{check_lexical, secure_join, PathError};
pub use crate::setup::{compile_seccomp, MountOpts, SetupError};

/// The (file, value) pairs a spec's resources turn into; a CPU period given
/// alone keeps the quota "max" (the cgroup's current value at update).
pub fn cgroup_limits(res: &LinuxResources) -> Result<Vec<(String, String)>, CgroupError> {
    crate::cgroup::limits(res, || Ok("max".to_owned()))
}

/// CreateSandbox's check of the pod network, before anything changes.
pub fn check_network(req: &PodNetwork) -> Result<(), NetworkError> {
    crate::network::check(req).map(drop)
}
