//! The sandbox: the agent's state (its containers) and the guest-wide
//! operations CreateSandbox and DestroySandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hull_protocol::agent::CreateSandboxRequest;

use crate::cgroup;
use crate::container::{do_remove, Container, ContainerError};
use crate::network::{self, NetworkError};
use crate::oom::OomMonitor;
use crate::setup::NsId;

/// Where the pod's shared virtio-fs directory is mounted in the guest.
pub use hull_protocol::vm::GUEST_SHARE_DIR as SHARED_DIR;

#[derive(Debug, Clone)]
pub struct Config {
    /// Container rootfs paths must lie under this directory.
    pub containers_root: PathBuf,
    /// Parent cgroup of every container cgroup.
    pub cgroup_root: PathBuf,
    /// Where the agent writes sandbox files (resolv.conf, hosts).
    pub state_dir: PathBuf,
    /// Running as the guest's init: guest-wide changes are allowed.
    pub guest: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot write {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("cgroup")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("start the OOM monitor")]
    OomMonitor(#[source] std::io::Error),
    #[error("removing containers")]
    Container(#[from] ContainerError),
    #[error(transparent)]
    InvalidId(#[from] hull_protocol::ids::InvalidId),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

pub struct Sandbox {
    pub config: Config,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pub oom: Arc<OomMonitor>,
    /// The pod's network namespace, when CreateSandbox gave the pod a network.
    pod_netns: Mutex<Option<NsId>>,
}

impl Sandbox {
    pub fn new(config: Config) -> Result<Sandbox, SandboxError> {
        cgroup::setup_root(&config.cgroup_root)?;
        Ok(Sandbox {
            config,
            containers: Mutex::default(),
            oom: OomMonitor::start().map_err(SandboxError::OomMonitor)?,
            pod_netns: Mutex::default(),
        })
    }

    /// The pod's network namespace, which containers may join by its path
    /// ([`hull_protocol::GUEST_POD_NETNS`]).
    pub fn pod_netns(&self) -> Option<NsId> {
        *self.pod_netns.lock().expect("pod netns lock")
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.into()))
    }

    /// Every container, in no particular order.
    pub fn all(&self) -> Vec<Arc<Container>> {
        let containers = self.containers.lock().expect("containers lock");
        containers.values().cloned().collect()
    }

    pub fn insert(&self, container: Arc<Container>) {
        self.oom.watch(&container.id, &container.cgroup);
        self.containers
            .lock()
            .expect("containers lock")
            .insert(container.id.clone(), container);
    }

    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        self.oom.unwatch(id);
        do_remove(&container)?;
        self.containers.lock().expect("containers lock").remove(id);
        Ok(())
    }

    pub fn create(&self, req: &CreateSandboxRequest) -> Result<(), SandboxError> {
        let sandbox = req.sandbox_id.as_str();
        hull_protocol::ids::validate_id(hull_protocol::ids::IdKind::Sandbox, sandbox)?;
        let write = |name: &str, data: &[u8]| -> Result<(), SandboxError> {
            let path = self.config.state_dir.join(name);
            std::fs::create_dir_all(&self.config.state_dir)
                .and_then(|()| std::fs::write(&path, data))
                .map_err(|source| SandboxError::Write { path, source })
        };
        if !req.resolv_conf.is_empty() {
            write("resolv.conf", &req.resolv_conf)?;
        }
        if !req.hosts.is_empty() {
            write("hosts", &req.hosts)?;
        }
        let root = &self.config.cgroup_root;
        let limit = |file: &str, value: u64| -> Result<(), SandboxError> {
            if value > 0 {
                std::fs::write(root.join(file), value.to_string()).map_err(|source| {
                    SandboxError::Write {
                        path: root.join(file),
                        source,
                    }
                })?;
            }
            Ok(())
        };
        limit("memory.max", req.memory_limit_bytes)?;
        limit("pids.max", req.pids_limit)?;
        if !self.config.guest {
            tracing::info!(sandbox, "host mode: hostname and shared fs left alone");
            return Ok(());
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|source| SandboxError::Sys {
                what: "set the guest hostname".into(),
                source,
            })?;
        }
        if !req.shared_fs_tag.is_empty() {
            std::fs::create_dir_all(SHARED_DIR).map_err(|source| SandboxError::Write {
                path: SHARED_DIR.into(),
                source,
            })?;
            nix::mount::mount(
                Some(req.shared_fs_tag.as_str()),
                SHARED_DIR,
                Some("virtiofs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|source| SandboxError::Sys {
                what: format!("mount virtio-fs tag {:?}", req.shared_fs_tag),
                source,
            })?;
        }
        if let Some(net) = req.network.as_ref() {
            let id = network::setup(net, std::path::Path::new(hull_protocol::GUEST_POD_NETNS))?;
            *self.pod_netns.lock().expect("pod netns lock") = Some(id);
        }
        tracing::info!(sandbox, hostname = %req.hostname, "sandbox created");
        Ok(())
    }

    /// Removes every container; the caller then powers off (or exits).
    pub fn destroy(&self) -> Result<(), SandboxError> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .expect("containers lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remove(&id)?;
        }
        if self
            .pod_netns
            .lock()
            .expect("pod netns lock")
            .take()
            .is_some()
        {
            network::remove(std::path::Path::new(hull_protocol::GUEST_POD_NETNS));
        }
        nix::unistd::sync();
        Ok(())
    }
}
