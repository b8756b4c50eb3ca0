//! The OCI spec the guest gets: host volumes point into the share, and the
//! only namespace paths allowed are the pod's own, mapped explicitly to the
//! pod's guest namespaces. Two forms name them: `/proc/<task pid>/ns/<type>`
//! (the task pid being this shim's), which containerd writes for containers
//! joining the sandbox, and the host network namespace CNI configured (CRI's
//! `/var/run/netns/cni-…`), which the CRI sandbox container's spec names and
//! which stands for the pod's network namespace in the guest. No host path is
//! ever opened in the guest.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::GUEST_SHARE;
use crate::backend::{BackendError, Result, SharedVolume};

/// The annotation by which containerd's CRI plugin tells the sandbox (pause)
/// container (`sandbox`) from the pod's app containers (`container`).
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// What namespace paths of a container's spec may name.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// The pid this shim reports to containerd for every task (its own).
    pub task_pid: u32,
    /// The guest pid of the pod's first (sandbox) container's init, once it exists.
    pub sandbox_init: Option<u32>,
    /// The host network namespace the CRI sandbox container's spec named
    /// (where CNI put the pod's interfaces), once that container exists.
    pub sandbox_netns: Option<PathBuf>,
    /// The agent made the pod's network namespace (with the CNI interfaces)
    /// at [`hull_protocol::GUEST_POD_NETNS`]: the CRI sandbox container joins it.
    pub pod_netns: bool,
}

/// The network a pod's sandbox (first) container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// A network namespace of its own without a path (plain `ctr run`), or a
    /// spec that is not a CRI sandbox's: the guest's loopback only.
    Loopback,
    /// The CRI sandbox's network namespace CNI configured on the host.
    Cni(PathBuf),
    /// A CRI sandbox without a network namespace: `hostNetwork: true`.
    Host,
}

/// The network the first container's spec asks the pod to have.
pub fn sandbox_network(spec: &Spec) -> SandboxNetwork {
    if let Some(path) = sandbox_netns(spec) {
        return SandboxNetwork::Cni(path);
    }
    let has_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|ns| ns.typ() == LinuxNamespaceType::Network));
    if is_cri_sandbox(spec) && !has_netns {
        SandboxNetwork::Host
    } else {
        SandboxNetwork::Loopback
    }
}

/// Whether the spec is a CRI sandbox (pause) container's.
pub fn is_cri_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .is_some_and(|t| t == "sandbox")
}

/// The host network namespace a CRI sandbox container's spec names, if any.
pub fn sandbox_netns(spec: &Spec) -> Option<PathBuf> {
    if !is_cri_sandbox(spec) {
        return None;
    }
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
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

/// Where a namespace of the spec is in the guest.
#[derive(Debug, PartialEq, Eq)]
enum GuestNamespace {
    /// A new namespace of the container's own: the CRI sandbox's network
    /// namespace, which becomes the pod's network namespace in the guest.
    Fresh,
    /// The namespace at this guest path (the sandbox container's init's).
    Join(PathBuf),
}

/// The guest namespace for a namespace path of the spec, or why it is refused.
/// `sandbox` says the spec is the CRI sandbox container's.
fn map_namespace(
    typ: LinuxNamespaceType,
    path: &Path,
    pod: &PodNamespaces,
    sandbox: bool,
) -> Result<GuestNamespace> {
    let name = ns_name(typ);
    let refuse = |why: &str| {
        BackendError::Invalid(format!(
            "namespace path {} is not a namespace of this pod ({why}; Hull accepts only \
             /proc/<task pid of this pod>/ns/{name}, which names the pod's sandbox container, \
             and the CRI sandbox's network namespace)",
            path.display()
        ))
    };
    if typ == LinuxNamespaceType::Network {
        // The CRI sandbox's own: CNI's namespace on the host stands for the
        // pod's network namespace, which the sandbox container creates in the guest.
        if sandbox && pod.sandbox_init.is_none() {
            if pod.pod_netns {
                return Ok(GuestNamespace::Join(hull_protocol::GUEST_POD_NETNS.into()));
            }
            return Ok(GuestNamespace::Fresh);
        }
        // An app container naming the sandbox's network namespace file joins it.
        if !sandbox && pod.sandbox_netns.as_deref() == Some(path) {
            let init = pod
                .sandbox_init
                .ok_or_else(|| refuse("the pod has no sandbox container yet"))?;
            return Ok(GuestNamespace::Join(format!("/proc/{init}/ns/net").into()));
        }
    }
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
    Ok(GuestNamespace::Join(
        format!("/proc/{init}/ns/{name}").into(),
    ))
}

/// The spec for the guest, as JSON: bind mounts of host volumes point into the
/// share; namespace paths are mapped to the pod's guest namespaces or refused.
pub fn guest_spec(spec: &Spec, volumes: &[SharedVolume], pod: &PodNamespaces) -> Result<Vec<u8>> {
    let sandbox = is_cri_sandbox(spec);
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
                ns.set_path(match map_namespace(ns.typ(), &path, pod, sandbox)? {
                    GuestNamespace::Fresh => None,
                    GuestNamespace::Join(guest) => Some(guest),
                });
            }
        }
    }
    serde_json::to_vec(&spec).map_err(|e| BackendError::Invalid(format!("OCI spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, SpecBuilder};

    const CNI_NETNS: &str = "/var/run/netns/cni-1234";

    fn pod() -> PodNamespaces {
        PodNamespaces {
            task_pid: 4242,
            sandbox_init: Some(7),
            sandbox_netns: Some(CNI_NETNS.into()),
            pod_netns: false,
        }
    }

    fn with_type(mut spec: Spec, typ: &str) -> Spec {
        spec.set_annotations(Some(
            [(CONTAINER_TYPE_ANNOTATION.to_string(), typ.to_string())].into(),
        ));
        spec
    }

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

    fn guest_namespaces(spec: &Spec, pod: &PodNamespaces) -> Result<Vec<serde_json::Value>> {
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
            serde_json::from_slice(&guest_spec(&spec, &volumes, &pod()).unwrap()).unwrap();
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
        let ns = guest_namespaces(&spec, &pod()).unwrap();
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
            (LinuxNamespaceType::Network, "/var/run/netns/cni-5678"),
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
            let err = guest_namespaces(&spec_with(&[(typ, Some(path))]), &pod()).unwrap_err();
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
            ..pod()
        };
        let spec = spec_with(&[(LinuxNamespaceType::Network, Some("/proc/4242/ns/net"))]);
        let err = guest_namespaces(&spec, &first).unwrap_err();
        assert!(err.to_string().contains("no sandbox container"), "{err}");
    }

    #[test]
    fn the_cri_sandbox_gets_a_fresh_guest_network_namespace_for_cnis() {
        let spec = with_type(
            spec_with(&[
                (LinuxNamespaceType::Network, Some(CNI_NETNS)),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
            ]),
            "sandbox",
        );
        assert_eq!(sandbox_netns(&spec), Some(PathBuf::from(CNI_NETNS)));
        let first = PodNamespaces {
            task_pid: 4242,
            ..Default::default()
        };
        let ns = guest_namespaces(&spec, &first).unwrap();
        assert!(
            ns.iter().all(|n| n["path"].is_null()),
            "no host path reaches the guest: {ns:?}"
        );
        // Only its network namespace: a sandbox naming another path is refused.
        let other = with_type(
            spec_with(&[(LinuxNamespaceType::Ipc, Some("/var/run/ipcns/x"))]),
            "sandbox",
        );
        let err = guest_namespaces(&other, &first).unwrap_err();
        assert!(err.to_string().contains("/var/run/ipcns/x"), "{err}");
        // An app container is no sandbox, even as the first container.
        let app = with_type(
            spec_with(&[(LinuxNamespaceType::Network, Some(CNI_NETNS))]),
            "container",
        );
        assert_eq!(sandbox_netns(&app), None);
        assert!(guest_namespaces(&app, &first).is_err());
    }

    #[test]
    fn app_containers_join_the_sandboxs_network_by_its_cni_path() {
        let app = with_type(
            spec_with(&[
                (LinuxNamespaceType::Network, Some(CNI_NETNS)),
                (LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts")),
            ]),
            "container",
        );
        let ns = guest_namespaces(&app, &pod()).unwrap();
        assert_eq!(ns[0]["path"], "/proc/7/ns/net");
        assert_eq!(ns[1]["path"], "/proc/7/ns/uts");
        // Another pod's CNI namespace is not this pod's.
        let stranger = with_type(
            spec_with(&[(LinuxNamespaceType::Network, Some("/var/run/netns/cni-9999"))]),
            "container",
        );
        let err = guest_namespaces(&stranger, &pod()).unwrap_err();
        assert!(
            err.to_string()
                .contains("/var/run/netns/cni-9999 is not a namespace of this pod"),
            "{err}"
        );
        // A second sandbox container in a running pod gets no fresh network either.
        let again = with_type(
            spec_with(&[(LinuxNamespaceType::Network, Some(CNI_NETNS))]),
            "sandbox",
        );
        assert!(guest_namespaces(&again, &pod()).is_err());
    }

    #[test]
    fn with_a_pod_network_the_cri_sandbox_joins_the_agents_pod_netns() {
        let spec = with_type(
            spec_with(&[(LinuxNamespaceType::Network, Some(CNI_NETNS))]),
            "sandbox",
        );
        let first = PodNamespaces {
            task_pid: 4242,
            pod_netns: true,
            ..Default::default()
        };
        let ns = guest_namespaces(&spec, &first).unwrap();
        assert_eq!(ns[0]["path"], hull_protocol::GUEST_POD_NETNS);
    }

    #[test]
    fn the_sandbox_network_is_cni_host_or_loopback() {
        let cri = |ns: &[(LinuxNamespaceType, Option<&str>)]| with_type(spec_with(ns), "sandbox");
        assert_eq!(
            sandbox_network(&cri(&[(LinuxNamespaceType::Network, Some(CNI_NETNS))])),
            SandboxNetwork::Cni(CNI_NETNS.into())
        );
        // CRI's hostNetwork: no network namespace at all.
        assert_eq!(
            sandbox_network(&cri(&[(LinuxNamespaceType::Ipc, None)])),
            SandboxNetwork::Host
        );
        // ctr run: a fresh namespace without a path.
        let plain = spec_with(&[(LinuxNamespaceType::Network, None)]);
        assert_eq!(sandbox_network(&plain), SandboxNetwork::Loopback);
        assert_eq!(
            sandbox_network(&spec_with(&[(LinuxNamespaceType::Ipc, None)])),
            SandboxNetwork::Loopback,
            "only a CRI sandbox is taken to ask for the host network"
        );
    }
}
