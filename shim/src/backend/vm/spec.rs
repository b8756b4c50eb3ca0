//! The OCI spec the guest gets: host volumes point into the share, and the
//! only namespace paths allowed are the pod's own, written as containerd knows
//! them (`/proc/<task pid>/ns/<type>`, the task pid being this shim's) and
//! rewritten to the sandbox container's init in the guest. No other host path
//! is ever opened in the guest.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::GUEST_SHARE;
use crate::backend::{BackendError, Result, SharedVolume};

/// What namespace paths of a container's spec may name.
#[derive(Debug, Clone, Copy)]
pub struct PodNamespaces {
    /// The pid this shim reports to containerd for every task (its own).
    pub task_pid: u32,
    /// The guest pid of the pod's first (sandbox) container's init, once it exists.
    pub sandbox_init: Option<u32>,
}

/// The `/proc/<pid>/ns/<name>` name of a namespace type.
fn ns_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The guest path for a namespace path of the spec, or why it is refused.
fn map_namespace(typ: LinuxNamespaceType, path: &Path, pod: PodNamespaces) -> Result<PathBuf> {
    let name = ns_name(typ);
    let refuse = |why: &str| {
        BackendError::Invalid(format!(
            "namespace path {} is not a namespace of this pod ({why}; Hull accepts only \
             /proc/<task pid of this pod>/ns/{name}, which names the pod's sandbox container)",
            path.display()
        ))
    };
    let text = path.to_str().ok_or_else(|| refuse("not UTF-8"))?;
    let rest = text
        .strip_prefix("/proc/")
        .ok_or_else(|| refuse("not under /proc"))?;
    let (pid, ns) = rest
        .split_once("/ns/")
        .ok_or_else(|| refuse("not /proc/<pid>/ns/<type>"))?;
    if pid != pod.task_pid.to_string() {
        return Err(refuse("the process is not a task of this pod"));
    }
    if ns != name {
        return Err(refuse(&format!("a {ns} namespace where {name} is wanted")));
    }
    let init = pod
        .sandbox_init
        .ok_or_else(|| refuse("the pod has no sandbox container yet"))?;
    Ok(PathBuf::from(format!("/proc/{init}/ns/{name}")))
}

/// The spec for the guest, as JSON: bind mounts of host volumes point into the
/// share; namespace paths are mapped to the pod's guest namespaces or refused.
pub fn guest_spec(spec: &Spec, volumes: &[SharedVolume], pod: PodNamespaces) -> Result<Vec<u8>> {
    let mut spec = spec.clone();
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                if let Some(v) = volumes.iter().find(|v| v.destination == *m.destination()) {
                    m.set_source(Some(Path::new(GUEST_SHARE).join(&v.path_in_share)));
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(namespaces) = linux.namespaces_mut() {
            for ns in namespaces.iter_mut() {
                let Some(path) = ns.path().clone().filter(|p| !p.as_os_str().is_empty()) else {
                    continue;
                };
                let mapped = map_namespace(ns.typ(), &path, pod)?;
                ns.set_path(Some(mapped));
            }
        }
    }
    serde_json::to_vec(&spec).map_err(|e| BackendError::Invalid(format!("OCI spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, SpecBuilder};

    const POD: PodNamespaces = PodNamespaces {
        task_pid: 4242,
        sandbox_init: Some(7),
    };

    fn spec_with(namespaces: &[(LinuxNamespaceType, Option<&str>)]) -> Spec {
        let namespaces = namespaces
            .iter()
            .map(|(typ, path)| {
                let mut b = LinuxNamespaceBuilder::default().typ(*typ);
                if let Some(p) = path {
                    b = b.path(*p);
                }
                b.build().unwrap()
            })
            .collect::<Vec<_>>();
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    fn guest_namespaces(spec: &Spec, pod: PodNamespaces) -> Result<Vec<serde_json::Value>> {
        let json: serde_json::Value = serde_json::from_slice(&guest_spec(spec, &[], pod)?).unwrap();
        Ok(json["linux"]["namespaces"].as_array().unwrap().clone())
    }

    #[test]
    fn volumes_are_bound_from_the_guest_share() {
        let mounts = vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/srv/data")
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .unwrap(),
        ];
        let spec = SpecBuilder::default().mounts(mounts).build().unwrap();
        let volumes = [SharedVolume {
            destination: "/data".into(),
            path_in_share: ".volumes/c1/0".into(),
            readonly: true,
        }];
        let json: serde_json::Value =
            serde_json::from_slice(&guest_spec(&spec, &volumes, POD).unwrap()).unwrap();
        let mounts = json["mounts"].as_array().unwrap();
        assert_eq!(mounts[0]["source"], "proc");
        assert_eq!(mounts[1]["source"], "/run/hull/shared/.volumes/c1/0");
    }

    #[test]
    fn the_pods_task_namespaces_map_to_the_sandbox_init() {
        let spec = spec_with(&[
            (LinuxNamespaceType::Network, Some("/proc/4242/ns/net")),
            (LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc")),
            (LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts")),
            (LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid")),
            (LinuxNamespaceType::Mount, None),
        ]);
        let ns = guest_namespaces(&spec, POD).unwrap();
        let paths: Vec<_> = ns.iter().map(|n| n["path"].clone()).collect();
        assert_eq!(
            serde_json::Value::from(paths),
            serde_json::json!([
                "/proc/7/ns/net",
                "/proc/7/ns/ipc",
                "/proc/7/ns/uts",
                "/proc/7/ns/pid",
                null
            ])
        );
    }

    #[test]
    fn every_other_namespace_path_is_refused_by_name() {
        for (typ, path) in [
            (LinuxNamespaceType::Network, "/var/run/netns/cni-1234"),
            (LinuxNamespaceType::Pid, "/proc/1/ns/pid"),
            (LinuxNamespaceType::Pid, "/proc/self/ns/pid"),
            (LinuxNamespaceType::Ipc, "/proc/42420/ns/ipc"),
            (LinuxNamespaceType::Ipc, "/proc/04242/ns/ipc"),
            (LinuxNamespaceType::Ipc, "/proc/4242/ns/net"),
            (
                LinuxNamespaceType::Mount,
                "/proc/4242/ns/mnt/../../1/ns/mnt",
            ),
            (LinuxNamespaceType::Uts, "/proc/4242/../1/ns/uts"),
        ] {
            let err = guest_namespaces(&spec_with(&[(typ, Some(path))]), POD).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!(
                    "namespace path {path} is not a namespace of this pod"
                )),
                "{path}: {msg}"
            );
        }
        let first = PodNamespaces {
            sandbox_init: None,
            ..POD
        };
        let spec = spec_with(&[(LinuxNamespaceType::Network, Some("/proc/4242/ns/net"))]);
        let err = guest_namespaces(&spec, first).unwrap_err();
        assert!(err.to_string().contains("no sandbox container"), "{err}");
    }
}
