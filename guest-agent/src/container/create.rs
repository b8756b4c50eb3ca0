//! CreateContainer: check the spec, make the cgroup, dial stdio and set the
//! process up; it then waits for StartContainer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocol::agent::CreateContainerRequest;
use oci_spec::runtime::Spec;

use super::spawn::spawn;
use super::{check_id, Container, ContainerError};
use crate::cgroup::Cgroup;
use crate::paths::{check_lexical, check_rootfs};
use crate::sandbox::Sandbox;
use crate::setup::{namespace_flag, SetupConfig, SetupKind};
use crate::stdio::dial_all;

pub fn do_create(sandbox: &Sandbox, req: &CreateContainerRequest) -> Result<u32, ContainerError> {
    let id = req.container_id.as_str();
    check_id(id)?;
    if sandbox.get(id).is_ok() {
        return Err(ContainerError::Exists(id.into()));
    }
    let spec: Spec = serde_json::from_slice(&req.oci_spec_json).map_err(ContainerError::Spec)?;
    let rootfs = check_rootfs(&sandbox.config.containers_root, Path::new(&req.rootfs))?;
    check_spec(&spec)?;
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
    if let Some(res) = resources {
        cgroup.apply(&res).map_err(|e| undo(e.into()))?;
    }
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
        },
    };
    let (init, chan) = spawn(&config, streams).map_err(undo)?;
    let pid = init.pid as u32;
    let container = Arc::new(Container {
        id: id.into(),
        cgroup,
        init,
        seccomp,
        start: Mutex::new(Some(chan)),
        execs: Mutex::default(),
    });
    sandbox.insert(container);
    Ok(pid)
}

/// What can be refused before touching the system.
fn check_spec(spec: &Spec) -> Result<(), ContainerError> {
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
