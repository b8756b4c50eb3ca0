//! CreateContainer: check the spec, make the cgroup, dial stdio and set the
//! process up; it then waits for StartContainer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocol::agent::CreateContainerRequest;
use hull_protocol::ids::{validate_id, IdKind};
use oci_spec::runtime::Spec;

use super::image_disk;
use super::layer::{self, WritableLayer, LAYERS_DIR};
use super::spawn::spawn;
use super::{Container, ContainerError, Process};
use crate::cgroup::Cgroup;
use crate::paths::{check_lexical, check_rootfs};
use crate::sandbox::Sandbox;
use crate::setup::{check_joinable, id_at, ids_of, namespace_flag, NsId, SetupConfig, SetupKind};
use crate::stdio::dial_all;

pub fn do_create(sandbox: &Sandbox, req: &CreateContainerRequest) -> Result<u32, ContainerError> {
    let id = req.container_id.as_str();
    validate_id(IdKind::Container, id)?;
    if sandbox.get(id).is_ok() {
        return Err(ContainerError::Exists(id.into()));
    }
    let spec: Spec = serde_json::from_slice(&req.oci_spec_json).map_err(ContainerError::Spec)?;
    let image = check_rootfs(&sandbox.config.containers_root, Path::new(&req.rootfs))?;
    check_spec(&spec)?;
    if !req.image_disk.is_empty() && !req.writable_layer_in_guest {
        return Err(ContainerError::Invalid(
            "an image disk needs the writable layer in the guest".into(),
        ));
    }
    let own =
        ids_of("/proc/self").map_err(|e| ContainerError::Namespaces("the agent".into(), e))?;
    let joinable: Vec<NsId> = sandbox
        .all()
        .iter()
        .flat_map(|c| c.joinable().to_vec())
        .chain(sandbox.pod_netns())
        .filter(|ns| !own.contains(ns))
        .collect();
    check_namespace_paths(&spec, &own, &joinable)?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| ContainerError::Invalid("the spec has no process".into()))?;

    let cgroup = Cgroup::create(&sandbox.config.cgroup_root, id)?;
    let undo = |e: ContainerError| {
        if let Err(e) = cgroup.destroy(Duration::from_secs(5)) {
            tracing::warn!(container = %id, error = %e, "cgroup left behind");
        }
        e
    };
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    if let Some(res) = &resources {
        cgroup.apply(res).map_err(|e| undo(e.into()))?;
    }
    // An image disk is only ever the lower layer of a writable layer in the guest.
    let layer = match req.writable_layer_in_guest {
        true => {
            let disk;
            let lower = match req.image_disk.as_str() {
                "" => &image,
                serial => {
                    disk = image_disk::mount_image(serial).map_err(|e| undo(e.into()))?;
                    &disk
                }
            };
            let limit = resources
                .as_ref()
                .and_then(|r| r.memory().as_ref()?.limit());
            let size = layer::size_for(limit);
            let base = Path::new(LAYERS_DIR);
            Some(WritableLayer::create(base, id, lower, size).map_err(|e| undo(e.into()))?)
        }
        false => None,
    };
    let rootfs = layer.as_ref().map_or(image, |l| l.root.clone());
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let terminal = process.terminal().unwrap_or(false);
    let streams = dial_all(&req.stdio, terminal).map_err(|e| undo(e.into()))?;
    let config = SetupConfig {
        container_id: id.into(),
        cgroup: cgroup.path.clone(),
        process,
        seccomp: seccomp.clone(),
        kind: SetupKind::Create {
            rootfs,
            spec: Box::new(spec),
            joinable,
        },
    };
    let (init, chan) = spawn(&config, streams, None).map_err(undo)?;
    let pid = init.pid as u32;
    let namespaces = namespaces_of(&init, &own).map_err(undo)?;
    let container = Arc::new(Container {
        id: id.into(),
        cgroup,
        init,
        seccomp,
        namespaces,
        start: Mutex::new(Some(chan)),
        execs: Mutex::default(),
        layer: Mutex::new(layer),
    });
    sandbox.insert(container);
    Ok(pid)
}

/// The init's namespaces that are not the agent's. The init waits for
/// Start and is not reaped, which the pidfd confirms after reading /proc.
fn namespaces_of(init: &Process, own: &[NsId]) -> Result<Vec<NsId>, ContainerError> {
    let proc_dir = format!("/proc/{}", init.pid);
    let ids = ids_of(&proc_dir).map_err(|e| ContainerError::Namespaces(proc_dir.clone(), e))?;
    if !crate::pidfd::alive(&init.pidfd) {
        return Err(ContainerError::Setup(format!(
            "the container process {} died during setup",
            init.pid
        )));
    }
    Ok(ids.into_iter().filter(|ns| !own.contains(ns)).collect())
}

/// Every namespace the spec names by path must belong to a container of the
/// pod, not to the agent (`/proc/1/ns/*`) or any other guest process.
fn check_namespace_paths(
    spec: &Spec,
    own: &[NsId],
    joinable: &[NsId],
) -> Result<(), ContainerError> {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    for ns in namespaces.unwrap_or_default() {
        let Some(path) = ns.path() else { continue };
        let kind = namespace_flag(ns.typ()).map_err(|e| ContainerError::Invalid(e.to_string()))?;
        let id = id_at(path, kind).map_err(|e| {
            ContainerError::Invalid(format!("namespace path {}: {e}", path.display()))
        })?;
        check_joinable(path, id, own, joinable)
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// What can be refused before touching the system.
pub fn check_spec(spec: &Spec) -> Result<(), ContainerError> {
    let linux = spec.linux().clone().unwrap_or_default();
    for ns in linux.namespaces().clone().unwrap_or_default() {
        namespace_flag(ns.typ()).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    }
    for m in spec.mounts().clone().unwrap_or_default() {
        check_lexical(m.destination())?;
    }
    for p in linux
        .masked_paths()
        .iter()
        .chain(linux.readonly_paths())
        .flatten()
    {
        check_lexical(Path::new(p))?;
    }
    let args = spec.process().as_ref().and_then(|p| p.args().clone());
    if args.unwrap_or_default().is_empty() {
        return Err(ContainerError::Invalid("process.args is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Spec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn unknown_namespace_type_is_refused() {
        let bad = r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"bogus"}]}}"#;
        assert!(spec(bad).is_err());
        let user = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]},
                       "linux":{"namespaces":[{"type":"user"}]}}"#;
        assert!(matches!(
            check_spec(&spec(user).unwrap()),
            Err(ContainerError::Invalid(_))
        ));
    }

    #[test]
    fn dotdot_mount_destination_is_refused() {
        let bad = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]},
                      "mounts":[{"destination":"/../../etc","type":"tmpfs"}]}"#;
        assert!(matches!(
            check_spec(&spec(bad).unwrap()),
            Err(ContainerError::Path(_))
        ));
    }

    #[test]
    fn empty_args_are_refused() {
        let bad =
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}}"#;
        assert!(matches!(
            check_spec(&spec(bad).unwrap()),
            Err(ContainerError::Invalid(_))
        ));
    }
}
