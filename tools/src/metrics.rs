//! Per-pod figures in the Prometheus text format (version 0.0.4): each pod's host
//! processes (hull-vmm, virtiofsd) from /proc, and hull-vmm's own figures from
//! its control socket when the pod has one.

use std::fmt::Write as _;
use std::path::Path;

use hull_protocol::control::VmStats;

use crate::pods::{self, Pod, Process};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What was gathered for one pod.
#[derive(Debug, Clone)]
pub struct PodFigures {
    pub pod: Pod,
    pub processes: Vec<Process>,
    /// hull-vmm's answer; None when the pod has no control socket or it did not answer.
    pub vmm: Option<VmStats>,
}

/// Gathers the figures of every pod under `run_dir`.
pub fn gather(run_dir: &Path) -> std::io::Result<Vec<PodFigures>> {
    Ok(pods::list(run_dir)?
        .into_iter()
        .map(|pod| {
            let processes = pods::processes(&pod);
            let vmm = pod.vmm_stats().ok();
            PodFigures {
                pod,
                processes,
                vmm,
            }
        })
        .collect())
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its header and samples, written together as the format requires.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        self.samples.push((labels.join(","), value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
            }
        }
    }
}

/// The text-format page for these pods.
pub fn render(figures: &[PodFigures]) -> String {
    let mut pods = Family::new("hull_pods", "gauge", "Hull pods in the run directory.");
    pods.add(&[], figures.len() as f64);
    let mut rss = Family::new(
        "hull_process_resident_memory_bytes",
        "gauge",
        "Resident memory of a pod's host process (hull-vmm, virtiofsd), from /proc.",
    );
    let mut cpu = Family::new(
        "hull_process_cpu_seconds_total",
        "counter",
        "CPU time of a pod's host process by mode (user, system), from /proc.",
    );
    let mut up = Family::new(
        "hull_vmm_up",
        "gauge",
        "1 if the pod's hull-vmm answered on its control socket, else 0.",
    );
    let mut vcpus = Family::new("hull_vmm_vcpus", "gauge", "vCPUs of the pod's VM.");
    let mut guest = Family::new(
        "hull_vmm_guest_memory_bytes",
        "gauge",
        "Guest memory of the pod's VM.",
    );
    let mut paused = Family::new(
        "hull_vmm_paused",
        "gauge",
        "1 if the VM's vCPUs are paused.",
    );
    let mut uptime = Family::new(
        "hull_vmm_uptime_seconds",
        "gauge",
        "Time since hull-vmm started the VM.",
    );
    let mut exits = Family::new(
        "hull_vmm_vcpu_exits_total",
        "counter",
        "Exits from KVM_RUN hull-vmm handled, summed over the VM's vCPUs (I/O, MMIO, interrupts).",
    );
    for f in figures {
        let (ns, id) = (f.pod.namespace.as_str(), f.pod.id.as_str());
        for p in &f.processes {
            let pid = p.pid.to_string();
            let base = [
                ("namespace", ns),
                ("pod", id),
                ("process", p.name.as_str()),
                ("pid", pid.as_str()),
            ];
            rss.add(&base, p.rss_bytes as f64);
            for (mode, secs) in [("user", p.user_cpu_s), ("system", p.system_cpu_s)] {
                let mut labels = base.to_vec();
                labels.push(("mode", mode));
                cpu.add(&labels, secs);
            }
        }
        let pod = [("namespace", ns), ("pod", id)];
        up.add(&pod, if f.vmm.is_some() { 1.0 } else { 0.0 });
        if let Some(v) = &f.vmm {
            vcpus.add(&pod, f64::from(v.vcpus));
            guest.add(&pod, (v.memory.guest_mib * 1024 * 1024) as f64);
            paused.add(&pod, if v.paused { 1.0 } else { 0.0 });
            uptime.add(&pod, v.uptime_s);
            exits.add(&pod, v.vcpu_exits as f64);
        }
    }
    let mut out = String::new();
    for family in [
        &pods, &rss, &cpu, &up, &vcpus, &guest, &paused, &uptime, &exits,
    ] {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use hull_protocol::control::MemoryStats;

    use super::*;

    #[test]
    fn families_group_their_samples_and_labels_are_escaped() {
        let figures = vec![PodFigures {
            pod: Pod {
                namespace: "default".into(),
                id: "p\"1".into(),
                dir: PathBuf::from("/x"),
            },
            processes: vec![Process {
                pid: 7,
                name: "hull-vmm".into(),
                user_cpu_s: 1.5,
                system_cpu_s: 0.5,
                rss_bytes: 4096,
            }],
            vmm: Some(VmStats {
                vcpus: 2,
                uptime_s: 3.0,
                memory: MemoryStats {
                    guest_mib: 128,
                    vmm_rss_kib: 4,
                },
                vcpu_exits: 12345,
                ..VmStats::default()
            }),
        }];
        let text = render(&figures);
        assert!(text.contains("hull_pods 1\n"), "{text}");
        assert!(text.contains(
            "hull_process_resident_memory_bytes{namespace=\"default\",pod=\"p\\\"1\",\
             process=\"hull-vmm\",pid=\"7\"} 4096\n"
        ));
        assert!(text.contains("mode=\"system\"} 0.5\n"));
        assert!(text.contains(
            "hull_vmm_guest_memory_bytes{namespace=\"default\",pod=\"p\\\"1\"} 134217728\n"
        ));
        assert!(text.contains("# TYPE hull_vmm_vcpu_exits_total counter\n"));
        assert!(text.contains("# HELP hull_vmm_vcpu_exits_total Exits from KVM_RUN"));
        assert!(text
            .contains("hull_vmm_vcpu_exits_total{namespace=\"default\",pod=\"p\\\"1\"} 12345\n"));
        // Each family's samples follow its own TYPE line, before the next family.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(types.len(), 9);
        let cpu_at = text.find("# TYPE hull_process_cpu_seconds_total").unwrap();
        let up_at = text.find("# TYPE hull_vmm_up").unwrap();
        let cpu_samples: Vec<_> = text
            .match_indices("hull_process_cpu_seconds_total{")
            .collect();
        assert_eq!(cpu_samples.len(), 2);
        assert!(cpu_samples.iter().all(|(i, _)| *i > cpu_at && *i < up_at));
    }

    #[test]
    fn a_pod_without_control_socket_is_down_with_no_vmm_figures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ns/p1")).unwrap();
        let text = render(&gather(dir.path()).unwrap());
        assert!(
            text.contains("hull_vmm_up{namespace=\"ns\",pod=\"p1\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("hull_vmm_vcpus{"));
        assert!(!text.contains("hull_vmm_vcpu_exits_total{"));
    }
}
