//! What one benchmark run found, as saved in `data.json` and rendered in the report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probe_data::{Isolation, Work};
use crate::procs::ProcMem;
use crate::stats::{summarize, Summary};

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunData {
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub elapsed_s: f64,
    pub env: Env,
    pub config: Config,
    pub host: HostFacts,
    pub runtimes: Vec<RuntimeData>,
    /// Pod machinery and mounts found after containerd stopped (should be empty).
    pub leftovers: Vec<String>,
    pub notes: Vec<String>,
    /// How long the whole `make bench` command took, lab boot included
    /// (written by bench/run.sh to `whole-command.txt`, read by `render`).
    #[serde(default)]
    pub whole_command: Option<String>,
    /// The pod network benchmark (bench/run.sh's second step: `network.json`, read by `render`).
    #[serde(default)]
    pub network: Option<crate::net::NetData>,
    /// Why there is no `network` (bench/run.sh's `network-note.txt`).
    #[serde(default)]
    pub network_note: Option<String>,
    /// hull-vmm against QEMU microvm (bench/run.sh's last step: `boot.json`, read by `render`).
    #[serde(default)]
    pub boot: Option<crate::boot::BootData>,
    /// Why there is no `boot` (bench/run.sh's `boot-note.txt`).
    #[serde(default)]
    pub boot_note: Option<String>,
}

/// Where it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Env {
    /// "lab" (nested VM under TCG) or "host" (hardware KVM).
    pub place: String,
    pub cpus: usize,
    pub mem_mib: u64,
    /// `name version` of containerd, runc, crun, the guest kernel...
    pub versions: BTreeMap<String, String>,
}

/// How much work each scenario did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    pub runtimes: Vec<String>,
    pub start_runs: u32,
    pub first_byte_runs: u32,
    pub exec_runs: u32,
    pub density: u32,
    pub loop_ms: u32,
    pub seq_mib: u32,
    pub small_files: u32,
    pub blast_mib: u32,
    /// MiB written to a tmpfs in the guest and deleted, for the memory-back figure (0: skip).
    #[serde(default)]
    pub burst_mib: u32,
    /// Files in the tarball extracted on the container's root (0: skip).
    #[serde(default)]
    pub untar_files: u32,
    pub ctr_timeout_s: u64,
    pub crash_hull: bool,
    pub image: String,
}

/// What the driver read on the host, to compare with what containers see.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub proc_version: String,
    pub process_count: usize,
    /// containerd's root directory (its snapshots live below).
    pub containerd_root: String,
    /// The host directory bind-mounted as the container's /vol.
    pub volume_dir: String,
    pub cgroup_dirs: Vec<String>,
}

/// One timed container operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub ok: bool,
    pub wall_s: f64,
    pub first_byte_s: Option<f64>,
    pub error: Option<String>,
}

/// Host memory of one idle pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    pub procs: Vec<ProcMem>,
}

impl Memory {
    pub fn total_kib(&self) -> u64 {
        self.procs.iter().map(|p| p.pss_kib).sum()
    }
    pub fn guest_ram_kib(&self) -> u64 {
        self.procs.iter().map(|p| p.guest_ram_kib).sum()
    }
    /// Everything but the guest RAM mapping.
    pub fn overhead_kib(&self) -> u64 {
        self.total_kib() - self.guest_ram_kib()
    }
    /// The part of `total_kib` in processes named like `pred`.
    pub fn kib_of(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.procs
            .iter()
            .filter(|p| pred(&p.name))
            .map(|p| p.pss_kib)
            .sum()
    }
}

/// N containers started at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Density {
    pub n: u32,
    pub total_s: f64,
    pub failures: u32,
    pub errors: Vec<String>,
}

/// Everything measured for one runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeData {
    /// "runc", "crun" or "hull".
    pub name: String,
    /// The ctr flags that select it.
    pub ctr_flags: Vec<String>,
    /// Why it was not run at all (not installed, no KVM...).
    pub unavailable: Option<String>,
    /// Why its later scenarios were skipped (its first container failed).
    pub failed: Option<String>,
    pub start: Vec<Sample>,
    pub first_byte: Vec<Sample>,
    pub exec: Vec<Sample>,
    pub work: Option<Work>,
    pub stdout_mibs: Option<f64>,
    pub memory: Option<Memory>,
    pub isolation: Option<Isolation>,
    pub privileged: Option<Isolation>,
    pub density: Option<Density>,
    /// Guest RAM on the host around a burst of guest memory (Hull only).
    pub burst: Option<Burst>,
    /// Seconds to extract a tarball of small files on the container's root.
    pub untar_s: Option<f64>,
    /// What the opt-in kernel crash probe found (Hull only).
    pub crash: Option<String>,
    /// Scenario name -> what went wrong in it.
    pub errors: BTreeMap<String, String>,
}

impl RuntimeData {
    /// Whether scenarios should still run for it.
    pub fn usable(&self) -> bool {
        self.unavailable.is_none() && self.failed.is_none()
    }
}

/// Host memory of a pod's guest RAM (PSS of the memfd mapping in hull-vmm and virtiofsd)
/// while idle, after `mib` MiB were written to a tmpfs in the guest, and after they were
/// deleted and the guest reported the free pages (virtio-balloon free page reporting).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Burst {
    pub mib: u32,
    pub vm_mib: u32,
    pub idle_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
    /// Seconds from the delete to the `after` figure.
    pub after_s: f64,
}

/// One row of the cost table: a named series of samples.
#[derive(Debug, Clone)]
pub struct Metric {
    pub label: &'static str,
    pub unit: &'static str,
    pub samples: Vec<f64>,
}

impl Metric {
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.samples)
    }
}

/// Wall times of the samples that succeeded.
pub fn ok_walls(s: &[Sample]) -> Vec<f64> {
    s.iter().filter(|s| s.ok).map(|s| s.wall_s).collect()
}

/// The cost table's rows for one runtime, in report order (empty samples = not measured).
pub fn metrics(rt: &RuntimeData) -> Vec<Metric> {
    let one = |v: Option<f64>| v.into_iter().collect::<Vec<_>>();
    let work = rt.work.as_ref();
    let root = work.and_then(|w| w.rootfs.as_ref());
    let vol = work.and_then(|w| w.volume.as_ref());
    let mem = rt.memory.as_ref();
    let mib = |kib: u64| kib as f64 / 1024.0;
    vec![
        Metric {
            label: "container start (`ctr run --rm` true), wall",
            unit: "s",
            samples: ok_walls(&rt.start),
        },
        Metric {
            label: "container start, time to first output byte",
            unit: "s",
            samples: rt
                .first_byte
                .iter()
                .filter(|s| s.ok)
                .filter_map(|s| s.first_byte_s)
                .collect(),
        },
        Metric {
            label: "exec latency (`ctr task exec` true)",
            unit: "s",
            samples: ok_walls(&rt.exec),
        },
        Metric {
            label: "stdio throughput (stdout blast)",
            unit: "MiB/s",
            samples: one(rt.stdout_mibs),
        },
        Metric {
            label: "syscall: getppid",
            unit: "ns/op",
            samples: one(work.map(|w| w.getppid_ns).filter(|v| *v > 0.0)),
        },
        Metric {
            label: "syscall: create+write 4K+unlink (rootfs)",
            unit: "ns/op",
            samples: one(work.map(|w| w.file_cycle_ns).filter(|v| *v > 0.0)),
        },
        Metric {
            label: "rootfs: sequential write",
            unit: "MiB/s",
            samples: one(root.map(|f| f.seq_write_mibs)),
        },
        Metric {
            label: "rootfs: sequential read",
            unit: "MiB/s",
            samples: one(root.map(|f| f.seq_read_mibs)),
        },
        Metric {
            label: "rootfs: small files (create+read+delete)",
            unit: "files/s",
            samples: one(root.map(|f| f.small_files_per_s)),
        },
        Metric {
            label: "rootfs: extract a tarball of small files (`tar x`)",
            unit: "s",
            samples: one(rt.untar_s),
        },
        Metric {
            label: "volume: sequential write",
            unit: "MiB/s",
            samples: one(vol.map(|f| f.seq_write_mibs)),
        },
        Metric {
            label: "volume: sequential read",
            unit: "MiB/s",
            samples: one(vol.map(|f| f.seq_read_mibs)),
        },
        Metric {
            label: "volume: small files (create+read+delete)",
            unit: "files/s",
            samples: one(vol.map(|f| f.small_files_per_s)),
        },
        Metric {
            label: "memory per idle pod (PSS, all host processes)",
            unit: "MiB",
            samples: one(mem.map(|m| mib(m.total_kib()))),
        },
        Metric {
            label: "  of which guest RAM touched",
            unit: "MiB",
            samples: one(mem.map(|m| mib(m.guest_ram_kib()))),
        },
        Metric {
            label: "  overhead beyond guest RAM",
            unit: "MiB",
            samples: one(mem.map(|m| mib(m.overhead_kib()))),
        },
        Metric {
            label: "idle pods per GiB of host memory",
            unit: "pods",
            samples: one(mem
                .map(|m| m.total_kib())
                .filter(|k| *k > 0)
                .map(|k| 1024.0 * 1024.0 / k as f64)),
        },
        Metric {
            label: "density: N parallel starts, total",
            unit: "s",
            samples: one(rt.density.as_ref().map(|d| d.total_s)),
        },
        Metric {
            label: "density: failures of N",
            unit: "count",
            samples: one(rt.density.as_ref().map(|d| f64::from(d.failures))),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_skip_failed_samples_and_missing_parts() {
        let rt = RuntimeData {
            name: "runc".into(),
            start: vec![
                Sample {
                    ok: true,
                    wall_s: 2.0,
                    ..Default::default()
                },
                Sample {
                    ok: false,
                    wall_s: 9.0,
                    ..Default::default()
                },
            ],
            memory: Some(Memory {
                procs: vec![ProcMem {
                    pid: 1,
                    name: "containerd-shim-runc-v2".into(),
                    pss_kib: 8192,
                    guest_ram_kib: 0,
                    seccomp: None,
                }],
            }),
            ..Default::default()
        };
        let m = metrics(&rt);
        assert_eq!(m[0].samples, vec![2.0]);
        assert!(m[1].samples.is_empty());
        let per_gib = m.iter().find(|m| m.unit == "pods").unwrap();
        assert_eq!(per_gib.samples, vec![128.0]);
    }
}
