//! The pod's sandbox: its directories (`<run_dir>/<namespace>/<pod>`, 0700,
//! with the share laid out by `share.rs`), the backend that runs it (the VM), its
//! OOM watch, and its teardown with the pod's last container.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use containerd_shim::protos::topics;

use super::error::{Result, TaskError};
use super::events::Events;
use super::image_disk::ImageCache;
use super::share::{self, PodShare, ShareError};
use crate::backend::{Backend, SandboxRequest};
use crate::config::{Config, WritableLayer};

/// The running sandbox of the pod.
pub struct Sandbox {
    pub id: String,
    pub backend: Arc<dyn Backend>,
    pub state_dir: PathBuf,
    pub share_dir: PathBuf,
    /// Where the containers' writes go (the config's, when the backend can do it).
    pub writable_layer: WritableLayer,
    /// The image cache when images go to the guest on disks (see `image_disk.rs`).
    pub image_cache: Option<ImageCache>,
}

/// Reads `config_path` (field 2) from containerd's `runtimeoptions.v1.Options`.
pub(super) fn config_path_from_options(options: Option<&Any>) -> Option<PathBuf> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        if tag == (2 << 3) | 2 {
            return input
                .read_string()
                .ok()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
        }
        let wire = WireType::new(tag & 7)?;
        input.skip_field(wire).ok()?;
    }
    None
}

impl Sandbox {
    /// Makes the pod's directories and boots its sandbox on `backend`; undoes
    /// both on failure. OOM events of the sandbox go to `events`.
    pub(super) fn start(
        backend: Arc<dyn Backend>,
        namespace: &str,
        sandbox_id: &str,
        config: Config,
        cgroups_path: Option<PathBuf>,
        network: crate::backend::vm::SandboxNetwork,
        events: &Events,
    ) -> Result<Sandbox> {
        let state_dir =
            share::create_pod_dir(&config.run_dir, namespace, sandbox_id).map_err(|e| match e {
                ShareError::BadName(_) => TaskError::InvalidArgument(e.to_string()),
                ShareError::PodDir { path, source } => TaskError::PodDir { path, source },
                e => TaskError::Rootfs(e.into()),
            })?;
        let share_dir = match PodShare::create(&state_dir) {
            Ok(share) => share.served(),
            Err(e) => {
                remove_pod_dirs(&state_dir);
                return Err(TaskError::Rootfs(e.into()));
            }
        };
        let writable_layer = match backend.guest_writable_layer() {
            true => config.writable_layer,
            false => WritableLayer::Host,
        };
        let image_cache =
            (writable_layer == WritableLayer::Guest && config.image_disks()).then(|| ImageCache {
                dir: config.image_cache_dir.clone(),
                max_bytes: config.image_cache_max_mib << 20,
            });
        let req = SandboxRequest {
            sandbox_id: sandbox_id.to_string(),
            share_dir: share_dir.clone(),
            state_dir: state_dir.clone(),
            config,
            cgroups_path,
            network,
        };
        if let Err(e) = backend.create_sandbox(&req) {
            remove_pod_dirs(&state_dir);
            return Err(e.into());
        }
        watch_oom(backend.clone(), sandbox_id, events.clone());
        tracing::info!(sandbox = %sandbox_id, dir = %state_dir.display(), "sandbox started");
        Ok(Sandbox {
            id: sandbox_id.to_string(),
            backend,
            state_dir,
            share_dir,
            writable_layer,
            image_cache,
        })
    }

    /// Tears the sandbox down and removes the pod's directories.
    pub(super) fn destroy(self) {
        if let Err(e) = self.backend.destroy_sandbox() {
            tracing::error!(sandbox = %self.id, "destroy sandbox: {e}");
        }
        remove_pod_dirs(&self.state_dir);
        tracing::info!(sandbox = %self.id, "sandbox stopped");
    }
}

/// Forwards the backend's OOM reports as containerd events until it has no more.
fn watch_oom(backend: Arc<dyn Backend>, sandbox_id: &str, events: Events) {
    let sandbox_id = sandbox_id.to_string();
    std::thread::spawn(move || {
        while let Some(container_id) = backend.next_oom() {
            tracing::warn!(sandbox = %sandbox_id, container = %container_id, "out of memory");
            events.emit(
                topics::TASK_OOM_EVENT_TOPIC,
                TaskOOM {
                    container_id,
                    ..Default::default()
                },
            );
        }
    });
}

/// Unmounts the pod share and removes the (empty) pod directories; never
/// recursively, so a mount that is somehow still there is never deleted through.
fn remove_pod_dirs(state_dir: &Path) {
    if let Err(e) = PodShare::open(state_dir).and_then(|share| share.remove()) {
        tracing::warn!(dir = %state_dir.display(), "remove the pod share: {e}");
    }
    share::remove_pod_dir(state_dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn config_path_is_read_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url = "x" (1), config_path = "/etc/h.toml" (2) }
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/h.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_from_options(Some(&any)),
            Some(PathBuf::from("/etc/h.toml"))
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: containerd_shim::api::Options::new()
                .write_to_bytes()
                .unwrap(),
            ..Default::default()
        };
        assert_eq!(config_path_from_options(Some(&other)), None);
        assert_eq!(config_path_from_options(None), None);
    }
}
