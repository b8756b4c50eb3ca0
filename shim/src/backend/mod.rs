//! The narrow interface between containerd bookkeeping and whatever runs the
//! containers: the pod microVM driven through `hull-agent` in the product, a
//! host-process test double under the `fake-backend` feature.

#[cfg(feature = "fake-backend")]
pub mod fake;
pub mod host_pids;
pub mod vm;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::config::Config;

/// Environment variable choosing the backend; only `fake` exists besides the default.
pub const BACKEND_ENV: &str = "HULL_SHIM_BACKEND";

/// Errors a backend reports; the task service maps them to ttrpc status codes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    #[error("no such process {container_id}/{exec_id}")]
    NotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// The guest has no such container or process (the agent's NOT_FOUND).
    #[error("{0}")]
    Missing(String),
    /// The container or process exists already (the agent's ALREADY_EXISTS).
    #[error("{0}")]
    Exists(String),
    /// The process is not in a state that allows the call (the agent's FAILED_PRECONDITION).
    #[error("{0}")]
    Precondition(String),
    // Only the test double does host I/O itself; the VM backend's I/O errors are `Sandbox`.
    #[cfg_attr(not(feature = "fake-backend"), allow(dead_code))]
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The pod's VM could not be started or reached.
    #[error("pod VM")]
    Sandbox(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The guest agent refused or failed a call.
    #[error("guest agent: {0}")]
    Agent(String),
}

/// Result of backend calls.
pub type Result<T> = std::result::Result<T, BackendError>;

/// What the pod's sandbox (the VM) is built from. Given once, for the pod's first container.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub sandbox_id: String,
    /// Host directory served to the guest (virtio-fs); each container's rootfs is
    /// `<share_dir>/<container_id>`.
    pub share_dir: PathBuf,
    /// Per-pod state directory (sockets, console log).
    pub state_dir: PathBuf,
    /// Configuration with the pod's annotations applied.
    pub config: Config,
    /// The pod's host cgroup: the first (sandbox) container's `linux.cgroupsPath`.
    pub cgroups_path: Option<PathBuf>,
    /// The network the first container's spec asks for (CNI's namespace under CRI).
    pub network: vm::SandboxNetwork,
}

/// Which stdio streams the caller wants; `terminal` merges stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioWanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

/// A host bind mount of the spec (a volume), already mounted inside the share
/// (read-only on the host when the spec says `ro`); the guest mounts it at `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedVolume {
    pub destination: PathBuf,
    /// Relative to the share, e.g. `.volumes/<container_id>/0`.
    pub path_in_share: String,
    pub readonly: bool,
}

/// A container to create; its init process waits for [`Backend::start`].
#[derive(Debug)]
pub struct ContainerRequest<'a> {
    pub container_id: &'a str,
    /// The OCI spec as containerd wrote it; its bind mounts are in `volumes`.
    pub spec: &'a Spec,
    /// The container's root inside the share (`<container_id>`), relative to the share.
    pub rootfs_in_share: &'a str,
    /// The root in the share is the read-only image; the guest adds the writable layer.
    pub writable_layer_in_guest: bool,
    /// The image as a read-only ext4 file, for the guest to read from a disk rather than
    /// through the share (only with `writable_layer_in_guest`).
    pub image_disk: Option<ImageDisk>,
    pub volumes: &'a [SharedVolume],
    pub stdio: StdioWanted,
}

/// A container image made into a read-only ext4 file (see `task/image_disk.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDisk {
    /// The image's cache name: the same key, the same files.
    pub key: String,
    pub path: PathBuf,
}

/// An additional process in a running container; it waits for [`Backend::start`].
#[derive(Debug)]
pub struct ExecRequest<'a> {
    pub container_id: &'a str,
    pub exec_id: &'a str,
    pub process: &'a Process,
    pub stdio: StdioWanted,
}

/// The byte streams of one process (one vsock stream each, in the VM backend).
/// Dropping `stdin` closes the process's standard input.
#[derive(Default)]
pub struct ProcessStreams {
    pub stdin: Option<Box<dyn Write + Send>>,
    pub stdout: Option<Box<dyn Read + Send>>,
    pub stderr: Option<Box<dyn Read + Send>>,
}

/// Resource usage of one container, reported as cgroup v2 metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub pids: u64,
    pub cpu_usage_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
}

/// Runs containers for one pod. `exec_id` is `None` for a container's init process.
/// Every method but [`Backend::wait`] and [`Backend::next_oom`] returns promptly.
pub trait Backend: Send + Sync {
    /// Boots the pod's sandbox (VM, virtiofsd, agent connection).
    fn create_sandbox(&self, req: &SandboxRequest) -> Result<()>;
    /// Creates a container whose init process waits for `start`.
    fn create_container(&self, req: &ContainerRequest<'_>) -> Result<ProcessStreams>;
    /// Creates an exec process whose start waits for `start`.
    fn exec(&self, req: &ExecRequest<'_>) -> Result<ProcessStreams>;
    /// Starts a created process; returns its pid (in the guest for the VM).
    fn start(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32>;
    /// Blocks until the process exits; returns its wait status as containerd wants it
    /// (exit code, or 128 + signal).
    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32>;
    /// Sends a signal to the process, or with `all` to every process of the container.
    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: u32,
        all: bool,
    ) -> Result<()>;
    /// Resizes the process's terminal.
    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        cols: u32,
        rows: u32,
    ) -> Result<()>;
    /// Tells the process its stdin is closed (after the shim dropped the stream).
    fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<()>;
    /// Pids of the container's processes.
    fn pids(&self, container_id: &str) -> Result<Vec<u32>>;
    /// Resource usage of the container.
    fn stats(&self, container_id: &str) -> Result<ContainerStats>;
    /// Freezes every process of the container (the container's cgroup in the guest;
    /// the VM's vCPUs keep running for the pod's other containers).
    fn pause(&self, container_id: &str) -> Result<()>;
    /// Thaws every process of the container.
    fn resume(&self, container_id: &str) -> Result<()>;
    /// Applies new resource limits to the container (its cgroup in the guest);
    /// what `resources` leaves out stays as it is.
    fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<()>;
    /// Removes a container whose processes have exited (or were never started).
    fn remove_container(&self, container_id: &str) -> Result<()>;
    /// Blocks until a container hits its memory limit and returns its id;
    /// `None` once the sandbox is gone.
    fn next_oom(&self) -> Option<String>;
    /// Stops the sandbox and everything it started. Idempotent.
    fn destroy_sandbox(&self) -> Result<()>;
    /// Whether containers may keep their writable layer in the sandbox (the guest) rather
    /// than in containerd's snapshot: then their root is served read-only.
    fn guest_writable_layer(&self) -> bool {
        false
    }
}

/// Picks the backend named by `$HULL_SHIM_BACKEND` (default: the microVM).
pub fn select() -> Result<Arc<dyn Backend>> {
    select_named(&std::env::var(BACKEND_ENV).unwrap_or_default())
}

fn select_named(name: &str) -> Result<Arc<dyn Backend>> {
    match name {
        #[cfg(feature = "fake-backend")]
        "fake" => Ok(Arc::new(fake::FakeBackend::default())),
        "" | "vm" => Ok(Arc::new(vm::VmBackend::default())),
        _ => Err(BackendError::Invalid(format!(
            "{BACKEND_ENV}={name:?}: unknown backend (this build knows: vm{})",
            if cfg!(feature = "fake-backend") {
                ", fake"
            } else {
                ""
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backend_is_the_vm_and_unknown_names_are_refused() {
        assert!(select_named("").is_ok());
        assert!(select_named("vm").is_ok());
        let err = select_named("qemu").err().unwrap();
        assert!(err.to_string().contains("unknown backend"), "{err}");
        assert_eq!(select_named("fake").is_ok(), cfg!(feature = "fake-backend"));
    }
}
