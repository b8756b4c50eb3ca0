//! How big the pod's VM is: the pod's resources as containerd's CRI plugin
//! passes them (`io.kubernetes.cri.sandbox-*` annotations on the sandbox
//! container's spec) plus the config's base for the guest kernel and agent,
//! else the config's defaults; bounded by the admin ceilings, never clamped.
//! Also the check that a container's memory limit fits in its VM.

use std::collections::HashMap;

use oci_spec::runtime::{LinuxResources, Spec};

use crate::config::{Config, ANNOTATION_PREFIX};

/// CFS period of the pod's CPU limit, in µs (CRI `LinuxContainerResources.cpu_period`).
pub const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// CFS quota of the pod's CPU limit, in µs per period.
pub const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The pod's memory limit, in bytes.
pub const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// The least memory a VM boots with.
const MIN_VM_MEMORY_MIB: u64 = 64;
const MIB: u64 = 1 << 20;

/// Errors of sizing a pod's VM or fitting a container in it.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    #[error("annotation {key}={value:?}: not a whole number")]
    NotANumber { key: &'static str, value: String },
    #[error(
        "the pod asks for {asked} vCPUs (CPU quota {quota} µs per {period} µs, plus base_vcpus \
         = {base}), above the admin ceiling max_vcpus = {max}; give the pod less CPU or raise \
         max_vcpus in the Hull config"
    )]
    Vcpus {
        asked: u64,
        quota: u64,
        period: u64,
        base: u32,
        max: u32,
    },
    #[error(
        "the pod asks for {asked} MiB of VM memory ({pod_mib} MiB for the pod plus \
         base_memory_mib = {base}), above the admin ceiling max_memory_mib = {max}; give the \
         pod less memory or raise max_memory_mib in the Hull config"
    )]
    Memory {
        asked: u64,
        pod_mib: u64,
        base: u32,
        max: u32,
    },
    #[error(
        "the pod asks for {asked} MiB of VM memory, below the {MIN_VM_MEMORY_MIB} MiB a VM \
         needs; give the pod more memory or raise base_memory_mib in the Hull config"
    )]
    TooLittle { asked: u64 },
    #[error(
        "container {container}: memory limit {limit_mib} MiB does not fit in the pod's VM of \
         {vm_mib} MiB; give the pod more memory (its resources) or the container a lower limit"
    )]
    ContainerLimit {
        container: String,
        limit_mib: u64,
        vm_mib: u32,
    },
}

/// The pod VM's vCPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

fn number(annotations: &HashMap<String, String>, key: &'static str) -> Result<u64, SizingError> {
    match annotations.get(key) {
        None => Ok(0),
        // containerd writes a negative quota (-1) for "no limit".
        Some(v) if v.starts_with('-') && v[1..].parse::<u64>().is_ok() => Ok(0),
        Some(v) => v.parse().map_err(|_| SizingError::NotANumber {
            key,
            value: v.clone(),
        }),
    }
}

/// The VM size for a pod whose sandbox spec has `annotations`, given `config`
/// (the Hull config with the pod's `io.hull.*` annotations applied, which win
/// over the pod's resources): vCPUs are `base_vcpus` + quota / period rounded
/// up, memory is `base_memory_mib` + the pod's memory limit rounded up to a
/// MiB. A pod without a CPU (memory) limit gets the config's `vcpus`
/// (`memory_mib`). CPU shares set no size (they weigh CPU time, not CPUs).
pub fn pod_size(
    config: &Config,
    annotations: &HashMap<String, String>,
) -> Result<VmSize, SizingError> {
    let explicit = |name: &str| annotations.contains_key(&format!("{ANNOTATION_PREFIX}{name}"));
    let mut size = VmSize {
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
    };
    let (period, quota) = (
        number(annotations, CPU_PERIOD)?,
        number(annotations, CPU_QUOTA)?,
    );
    if !explicit("vcpus") && period > 0 && quota > 0 {
        let asked = u64::from(config.base_vcpus) + quota.div_ceil(period);
        if asked > u64::from(config.max_vcpus) {
            return Err(SizingError::Vcpus {
                asked,
                quota,
                period,
                base: config.base_vcpus,
                max: config.max_vcpus,
            });
        }
        size.vcpus = asked as u32;
    }
    let memory = number(annotations, MEMORY)?;
    if !explicit("memory_mib") && memory > 0 {
        let pod_mib = memory.div_ceil(MIB);
        let asked = pod_mib + u64::from(config.base_memory_mib);
        if asked > u64::from(config.max_memory_mib) {
            return Err(SizingError::Memory {
                asked,
                pod_mib,
                base: config.base_memory_mib,
                max: config.max_memory_mib,
            });
        }
        if asked < MIN_VM_MEMORY_MIB {
            return Err(SizingError::TooLittle { asked });
        }
        size.memory_mib = asked as u32;
    }
    Ok(size)
}

/// Refuses a container whose memory limit is above its VM's memory: the
/// limit could never be reached, the guest would run out first.
pub fn check_container_limit(container: &str, spec: &Spec, vm_mib: u32) -> Result<(), SizingError> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    check_resources_limit(container, resources, vm_mib)
}

/// The same check for a container's new resources (task Update).
pub fn check_resources_limit(
    container: &str,
    resources: Option<&LinuxResources>,
    vm_mib: u32,
) -> Result<(), SizingError> {
    let limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .unwrap_or(0);
    let Ok(limit) = u64::try_from(limit) else {
        return Ok(()); // -1: no limit
    };
    if limit > u64::from(vm_mib) * MIB {
        return Err(SizingError::ContainerLimit {
            container: container.to_string(),
            limit_mib: limit.div_ceil(MIB),
            vm_mib,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder};

    fn config() -> Config {
        Config {
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: 4,
            max_memory_mib: 2048,
            base_vcpus: 0,
            base_memory_mib: 128,
            ..Config::default()
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_pod_without_resources_gets_the_defaults() {
        let size = pod_size(&config(), &pod(&[("io.kubernetes.cri.sandbox-id", "p")])).unwrap();
        assert_eq!(
            size,
            VmSize {
                vcpus: 1,
                memory_mib: 512
            }
        );
        // containerd's "no limit" values.
        let unlimited = pod(&[(CPU_PERIOD, "100000"), (CPU_QUOTA, "-1"), (MEMORY, "0")]);
        assert_eq!(pod_size(&config(), &unlimited).unwrap(), size);
    }

    #[test]
    fn cpus_round_up_and_memory_adds_the_base() {
        let p = pod(&[
            (CPU_PERIOD, "100000"),
            (CPU_QUOTA, "150000"),
            (MEMORY, &(1u64 << 30).to_string()),
            ("io.kubernetes.cri.sandbox-cpu-shares", "1536"),
        ]);
        assert_eq!(
            pod_size(&config(), &p).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 1024 + 128
            }
        );
        let c = Config {
            base_vcpus: 1,
            ..config()
        };
        let odd = pod(&[
            (CPU_PERIOD, "100000"),
            (CPU_QUOTA, "100000"),
            (MEMORY, "1048577"),
        ]);
        assert_eq!(
            pod_size(&c, &odd).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 2 + 128
            }
        );
    }

    #[test]
    fn above_the_ceilings_fails_with_the_numbers_and_no_clamping() {
        let cpu = pod(&[(CPU_PERIOD, "100000"), (CPU_QUOTA, "500000")]);
        let err = pod_size(&config(), &cpu).unwrap_err().to_string();
        assert!(
            err.contains("5 vCPUs") && err.contains("max_vcpus = 4"),
            "{err}"
        );
        let mem = pod(&[(MEMORY, &(2000u64 << 20).to_string())]);
        let err = pod_size(&config(), &mem).unwrap_err().to_string();
        assert!(
            err.contains("2128 MiB") && err.contains("max_memory_mib = 2048"),
            "{err}"
        );
        let tiny = Config {
            base_memory_mib: 0,
            ..config()
        };
        let err = pod_size(&tiny, &pod(&[(MEMORY, "1048576")])).unwrap_err();
        assert!(matches!(err, SizingError::TooLittle { asked: 1 }), "{err}");
        let bad = pod(&[(MEMORY, "lots")]);
        assert!(matches!(
            pod_size(&config(), &bad),
            Err(SizingError::NotANumber { .. })
        ));
    }

    #[test]
    fn hull_annotations_win_over_the_pods_resources() {
        let c = Config {
            vcpus: 3,
            memory_mib: 300,
            ..config()
        };
        let p = pod(&[
            (CPU_PERIOD, "100000"),
            (CPU_QUOTA, "900000"),
            (MEMORY, &(8u64 << 30).to_string()),
            ("io.hull.vcpus", "3"),
            ("io.hull.memory_mib", "300"),
        ]);
        assert_eq!(
            pod_size(&c, &p).unwrap(),
            VmSize {
                vcpus: 3,
                memory_mib: 300
            }
        );
    }

    fn with_limit(limit: Option<i64>) -> Spec {
        let mut memory = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            memory = memory.limit(l);
        }
        let resources = LinuxResourcesBuilder::default()
            .memory(memory.build().unwrap())
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .resources(resources)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    #[test]
    fn a_container_limit_must_fit_in_the_vm() {
        assert!(check_container_limit("c", &with_limit(None), 512).is_ok());
        assert!(check_container_limit("c", &with_limit(Some(-1)), 512).is_ok());
        assert!(check_container_limit("c", &with_limit(Some(512 << 20)), 512).is_ok());
        let err = check_container_limit("c", &with_limit(Some(4096 << 20)), 1152)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "container c: memory limit 4096 MiB does not fit in the pod's VM of 1152 MiB"
            ),
            "{err}"
        );
        // An update's resources get the same check and the same message.
        let res = |limit| {
            let spec = with_limit(limit);
            spec.linux().as_ref().unwrap().resources().clone()
        };
        assert!(check_resources_limit("c", None, 512).is_ok());
        assert!(check_resources_limit("c", res(Some(256 << 20)).as_ref(), 512).is_ok());
        let err = check_resources_limit("c", res(Some(4096 << 20)).as_ref(), 1152)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not fit in the pod's VM of 1152 MiB"),
            "{err}"
        );
    }
}
