//! Per-pod figures in the Prometheus text format (version 0.0.4): each pod's host
//! processes (hull-vmm, virtiofsd) from /proc, hull-vmm's own figures and its
//! virtio devices' counters from its control socket, and the guest's memory and
//! CPU from its agent. Every pod is asked at once, each within a deadline, so a
//! hung VMM or agent costs its own figures only.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_protocol::control::VmStats;

use crate::guest::{GuestFigures, CPU_MODES};
use crate::pods::{self, Pod, Process, GUEST_TIMEOUT, VMM_TIMEOUT};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the pods' answers: hull-vmm's, then the agent's
/// handshake and call, plus a margin. A pod that has not answered by then is
/// shown down (`hull_vmm_up 0`, `hull_guest_up 0`).
pub const SCRAPE_DEADLINE: Duration = VMM_TIMEOUT
    .saturating_add(GUEST_TIMEOUT)
    .saturating_add(GUEST_TIMEOUT)
    .saturating_add(Duration::from_millis(500));

/// What was gathered for one pod.
#[derive(Debug, Clone)]
pub struct PodFigures {
    pub pod: Pod,
    pub processes: Vec<Process>,
    /// hull-vmm's answer; None when the pod has no control socket or it did not answer.
    pub vmm: Option<VmStats>,
    /// The agent's checked answer; None when it did not answer in time or lied.
    pub guest: Option<GuestFigures>,
}

/// One pod's answers as they arrive from its asking thread.
enum Answer {
    Vmm(usize, VmStats),
    Guest(usize, GuestFigures),
}

/// Gathers the figures of every pod under `run_dir`, waiting at most `deadline`
/// for the answers of hull-vmm and the agents (asked side by side, one thread per
/// pod; a thread past the deadline ends on its own sockets' timeouts).
pub fn gather(run_dir: &Path, deadline: Duration) -> std::io::Result<Vec<PodFigures>> {
    let mut figures: Vec<PodFigures> = pods::list(run_dir)?
        .into_iter()
        .map(|pod| PodFigures {
            processes: pods::processes(&pod),
            pod,
            vmm: None,
            guest: None,
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    for (i, f) in figures.iter().enumerate() {
        let (pod, tx) = (f.pod.clone(), tx.clone());
        std::thread::spawn(move || {
            let vmm = pod.vmm_stats().ok();
            if let Some(v) = &vmm {
                let _ = tx.send(Answer::Vmm(i, v.clone()));
            }
            if let Ok(g) = pod.guest_stats(vmm.as_ref()) {
                let _ = tx.send(Answer::Guest(i, g));
            }
        });
    }
    drop(tx);
    let until = Instant::now() + deadline;
    while let Ok(answer) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        match answer {
            Answer::Vmm(i, v) => figures[i].vmm = Some(v),
            Answer::Guest(i, g) => figures[i].guest = Some(g),
        }
    }
    Ok(figures)
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every family of the page, in order: name, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("hull_pods", "gauge", "Hull pods in the run directory."),
    (
        "hull_process_resident_memory_bytes",
        "gauge",
        "Resident memory of a pod's host process (hull-vmm, virtiofsd), from /proc.",
    ),
    (
        "hull_process_cpu_seconds_total",
        "counter",
        "CPU time of a pod's host process by mode (user, system), from /proc.",
    ),
    (
        "hull_vmm_up",
        "gauge",
        "1 if the pod's hull-vmm answered on its control socket, else 0.",
    ),
    ("hull_vmm_vcpus", "gauge", "vCPUs of the pod's VM."),
    (
        "hull_vmm_guest_memory_bytes",
        "gauge",
        "Guest memory of the pod's VM.",
    ),
    (
        "hull_vmm_paused",
        "gauge",
        "1 if the VM's vCPUs are paused.",
    ),
    (
        "hull_vmm_uptime_seconds",
        "gauge",
        "Time since hull-vmm started the VM.",
    ),
    (
        "hull_vmm_vcpu_exits_total",
        "counter",
        "Exits from KVM_RUN hull-vmm handled, summed over the VM's vCPUs (I/O, MMIO, interrupts).",
    ),
    (
        "hull_vmm_device_notifications_total",
        "counter",
        "Guest notifications (queue kicks) of a virtio device's queue, as hull-vmm read them \
         (none for virtio-fs: virtiofsd reads its kicks).",
    ),
    (
        "hull_vmm_device_interrupts_total",
        "counter",
        "Used-ring interrupts hull-vmm raised for a virtio device.",
    ),
    (
        "hull_vmm_device_bytes_total",
        "counter",
        "Payload bytes a virtio device moved: rx towards the guest (network receive, disk read, \
         vsock host to guest), tx from it (none for virtio-fs: virtiofsd moves them).",
    ),
    (
        "hull_guest_up",
        "gauge",
        "1 if the pod's agent answered GuestStats in time with plausible figures, else 0.",
    ),
    (
        "hull_guest_memory_total_bytes",
        "gauge",
        "MemTotal of the guest's /proc/meminfo.",
    ),
    (
        "hull_guest_memory_available_bytes",
        "gauge",
        "MemAvailable of the guest's /proc/meminfo.",
    ),
    (
        "hull_guest_memory_free_bytes",
        "gauge",
        "MemFree of the guest's /proc/meminfo.",
    ),
    (
        "hull_guest_memory_cached_bytes",
        "gauge",
        "Cached of the guest's /proc/meminfo.",
    ),
    (
        "hull_guest_cpus",
        "gauge",
        "Online CPUs the guest's /proc/stat lists.",
    ),
    (
        "hull_guest_cpu_seconds_total",
        "counter",
        "CPU time of the guest by mode, all its CPUs together, from its /proc/stat.",
    ),
];

/// The page being built: each family's samples, written together under one
/// HELP and TYPE as the format requires.
struct Page {
    samples: Vec<Vec<(String, f64)>>,
}

impl Page {
    fn new() -> Self {
        Self {
            samples: vec![Vec::new(); FAMILIES.len()],
        }
    }

    fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(i) = FAMILIES.iter().position(|(n, ..)| *n == name) else {
            debug_assert!(false, "unknown family {name}");
            return;
        };
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        self.samples[i].push((labels.join(","), value));
    }

    fn write(&self) -> String {
        let mut out = String::new();
        for ((name, kind, help), samples) in FAMILIES.iter().zip(&self.samples) {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

fn bit(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

fn add_processes(page: &mut Page, pod: &[(&str, &str)], processes: &[Process]) {
    for p in processes {
        let pid = p.pid.to_string();
        let mut base = pod.to_vec();
        base.extend([("process", p.name.as_str()), ("pid", pid.as_str())]);
        page.add(
            "hull_process_resident_memory_bytes",
            &base,
            p.rss_bytes as f64,
        );
        for (mode, secs) in [("user", p.user_cpu_s), ("system", p.system_cpu_s)] {
            let mut labels = base.clone();
            labels.push(("mode", mode));
            page.add("hull_process_cpu_seconds_total", &labels, secs);
        }
    }
}

fn add_vmm(page: &mut Page, pod: &[(&str, &str)], v: &VmStats) {
    page.add("hull_vmm_vcpus", pod, f64::from(v.vcpus));
    page.add(
        "hull_vmm_guest_memory_bytes",
        pod,
        (v.memory.guest_mib * 1024 * 1024) as f64,
    );
    page.add("hull_vmm_paused", pod, bit(v.paused));
    page.add("hull_vmm_uptime_seconds", pod, v.uptime_s);
    page.add("hull_vmm_vcpu_exits_total", pod, v.vcpu_exits as f64);
    for d in &v.devices {
        let device = d.label();
        let mut base = pod.to_vec();
        base.push(("device", device.as_str()));
        for (q, n) in d.queue_notifications.iter().enumerate() {
            let index = q.to_string();
            let mut labels = base.clone();
            labels.push(("queue", d.kind.queue_name(q).unwrap_or(&index)));
            page.add("hull_vmm_device_notifications_total", &labels, *n as f64);
        }
        page.add(
            "hull_vmm_device_interrupts_total",
            &base,
            d.interrupts as f64,
        );
        if let Some(b) = d.bytes {
            for (direction, n) in [("rx", b.rx), ("tx", b.tx)] {
                let mut labels = base.clone();
                labels.push(("direction", direction));
                page.add("hull_vmm_device_bytes_total", &labels, n as f64);
            }
        }
    }
}

fn add_guest(page: &mut Page, pod: &[(&str, &str)], g: &GuestFigures) {
    for (name, bytes) in [
        ("hull_guest_memory_total_bytes", g.memory_total_bytes),
        (
            "hull_guest_memory_available_bytes",
            g.memory_available_bytes,
        ),
        ("hull_guest_memory_free_bytes", g.memory_free_bytes),
        ("hull_guest_memory_cached_bytes", g.memory_cached_bytes),
    ] {
        page.add(name, pod, bytes as f64);
    }
    page.add("hull_guest_cpus", pod, f64::from(g.cpus));
    for (mode, secs) in CPU_MODES.iter().zip(g.cpu_seconds) {
        let mut labels = pod.to_vec();
        labels.push(("mode", mode));
        page.add("hull_guest_cpu_seconds_total", &labels, secs);
    }
}

/// The text-format page for these pods.
pub fn render(figures: &[PodFigures]) -> String {
    let mut page = Page::new();
    page.add("hull_pods", &[], figures.len() as f64);
    for f in figures {
        let pod = [
            ("namespace", f.pod.namespace.as_str()),
            ("pod", f.pod.id.as_str()),
        ];
        add_processes(&mut page, &pod, &f.processes);
        page.add("hull_vmm_up", &pod, bit(f.vmm.is_some()));
        if let Some(v) = &f.vmm {
            add_vmm(&mut page, &pod, v);
        }
        page.add("hull_guest_up", &pod, bit(f.guest.is_some()));
        if let Some(g) = &f.guest {
            add_guest(&mut page, &pod, g);
        }
    }
    page.write()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use hull_protocol::control::{DeviceBytes, DeviceKind, DeviceStats, MemoryStats};

    use super::*;

    fn pod(id: &str) -> Pod {
        Pod {
            namespace: "default".into(),
            id: id.into(),
            dir: PathBuf::from("/x"),
        }
    }

    fn vmm() -> VmStats {
        VmStats {
            vcpus: 2,
            uptime_s: 3.0,
            memory: MemoryStats {
                guest_mib: 128,
                vmm_rss_kib: 4,
            },
            vcpu_exits: 12345,
            devices: vec![
                DeviceStats {
                    kind: DeviceKind::Fs,
                    index: 0,
                    interrupts: 40,
                    ..DeviceStats::default()
                },
                DeviceStats {
                    kind: DeviceKind::Vsock,
                    index: 0,
                    queue_notifications: vec![5, 6, 0],
                    interrupts: 7,
                    bytes: Some(DeviceBytes { rx: 100, tx: 200 }),
                },
                DeviceStats {
                    kind: DeviceKind::Unknown,
                    index: 0,
                    queue_notifications: vec![1],
                    ..DeviceStats::default()
                },
            ],
            ..VmStats::default()
        }
    }

    #[test]
    fn families_group_their_samples_and_labels_are_escaped() {
        let figures = vec![PodFigures {
            pod: pod("p\"1"),
            processes: vec![Process {
                pid: 7,
                name: "hull-vmm".into(),
                user_cpu_s: 1.5,
                system_cpu_s: 0.5,
                rss_bytes: 4096,
            }],
            vmm: Some(vmm()),
            guest: None,
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
        // Each family's HELP and TYPE appear once, its samples right after them.
        let types: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(types.len(), FAMILIES.len());
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(helps, FAMILIES.len());
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
            }
        }
    }

    #[test]
    fn device_counters_are_labelled_by_device_and_queue() {
        let figures = vec![PodFigures {
            pod: pod("p1"),
            processes: Vec::new(),
            vmm: Some(vmm()),
            guest: None,
        }];
        let text = render(&figures);
        let pod = "namespace=\"default\",pod=\"p1\"";
        for sample in [
            format!("hull_vmm_device_notifications_total{{{pod},device=\"vsock0\",queue=\"tx\"}} 6\n"),
            format!("hull_vmm_device_notifications_total{{{pod},device=\"vsock0\",queue=\"event\"}} 0\n"),
            format!("hull_vmm_device_notifications_total{{{pod},device=\"unknown0\",queue=\"0\"}} 1\n"),
            format!("hull_vmm_device_interrupts_total{{{pod},device=\"fs0\"}} 40\n"),
            format!("hull_vmm_device_bytes_total{{{pod},device=\"vsock0\",direction=\"rx\"}} 100\n"),
            format!("hull_vmm_device_bytes_total{{{pod},device=\"vsock0\",direction=\"tx\"}} 200\n"),
        ] {
            assert!(text.contains(&sample), "{sample} missing from\n{text}");
        }
        assert!(
            !text.contains("device=\"fs0\",queue="),
            "fs kicks are not hull-vmm's"
        );
        assert!(
            !text.contains("device=\"fs0\",direction="),
            "nor are its bytes"
        );
        assert!(text.contains(&format!("hull_guest_up{{{pod}}} 0\n")));
        assert!(!text.contains("hull_guest_memory_total_bytes{"));
    }

    #[test]
    fn guest_figures_are_rendered() {
        let figures = vec![PodFigures {
            pod: pod("p1"),
            processes: Vec::new(),
            vmm: None,
            guest: Some(GuestFigures {
                memory_total_bytes: 100 << 20,
                memory_free_bytes: 60 << 20,
                memory_available_bytes: 80 << 20,
                memory_cached_bytes: 10 << 20,
                cpus: 2,
                cpu_seconds: [1.5, 0.0, 0.25, 30.0, 0.0, 0.0, 0.125, 0.0],
            }),
        }];
        let text = render(&figures);
        let pod = "namespace=\"default\",pod=\"p1\"";
        for sample in [
            format!("hull_guest_up{{{pod}}} 1\n"),
            format!("hull_guest_memory_total_bytes{{{pod}}} 104857600\n"),
            format!("hull_guest_memory_available_bytes{{{pod}}} 83886080\n"),
            format!("hull_guest_cpus{{{pod}}} 2\n"),
            format!("hull_guest_cpu_seconds_total{{{pod},mode=\"user\"}} 1.5\n"),
            format!("hull_guest_cpu_seconds_total{{{pod},mode=\"softirq\"}} 0.125\n"),
            format!("hull_vmm_up{{{pod}}} 0\n"),
        ] {
            assert!(text.contains(&sample), "{sample} missing from\n{text}");
        }
    }

    #[test]
    fn a_pod_without_sockets_is_down_with_no_vmm_or_guest_figures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ns/p1")).unwrap();
        let text = render(&gather(dir.path(), SCRAPE_DEADLINE).unwrap());
        assert!(
            text.contains("hull_vmm_up{namespace=\"ns\",pod=\"p1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("hull_guest_up{namespace=\"ns\",pod=\"p1\"} 0\n"));
        assert!(!text.contains("hull_vmm_vcpus{"));
        assert!(!text.contains("hull_vmm_vcpu_exits_total{"));
    }

    #[test]
    fn a_hung_pod_costs_only_its_own_figures() {
        let dir = tempfile::tempdir().unwrap();
        let hung = dir.path().join("ns/hung");
        std::fs::create_dir_all(&hung).unwrap();
        std::fs::create_dir_all(dir.path().join("ns/gone")).unwrap();
        // A control socket that accepts and never answers.
        let listener = std::os::unix::net::UnixListener::bind(
            hung.join(hull_protocol::vm::pod_files::CONTROL),
        )
        .unwrap();
        let started = Instant::now();
        let figures = gather(dir.path(), Duration::from_millis(300)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(figures.len(), 2);
        assert!(figures.iter().all(|f| f.vmm.is_none() && f.guest.is_none()));
        drop(listener);
    }
}
