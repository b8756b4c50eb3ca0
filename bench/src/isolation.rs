//! The isolation table: each probe's answer per runtime, judged against what
//! the host itself shows (an answer from another kernel counts as isolated).

use crate::model::{HostFacts, RuntimeData};
use crate::probe_data::Isolation;

/// Device nodes every container gets; anything else in /dev is "extra".
const STANDARD_DEVICES: &[&str] = &[
    "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx",
];

/// One verdict cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    /// `None`: no data (the probe did not run).
    pub isolated: Option<bool>,
}

/// One probe across runtimes.
#[derive(Debug, Clone)]
pub struct Row {
    pub probe: &'static str,
    pub expected: String,
    pub cells: Vec<Cell>,
}

fn same_kernel(iso: &Isolation, host: &HostFacts) -> bool {
    iso.kernel_release == host.kernel_release
}

fn cell(text: String, isolated: bool) -> Cell {
    Cell {
        text,
        isolated: Some(isolated),
    }
}

fn list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(", ... ({} in all)", items.len()));
    }
    s
}

/// Mount lines that name a host path the container should not know.
pub fn host_paths_in_mounts(mounts: &[String], host: &HostFacts) -> Vec<String> {
    let needles: Vec<&str> = [host.containerd_root.as_str(), host.volume_dir.as_str()]
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    mounts
        .iter()
        .filter(|m| needles.iter().any(|n| m.contains(n)))
        .cloned()
        .collect()
}

fn extra_devices(iso: &Isolation) -> Vec<String> {
    iso.devices
        .iter()
        .filter(|d| {
            (d.kind == "char" || d.kind == "block") && !STANDARD_DEVICES.contains(&d.name.as_str())
        })
        .map(|d| format!("{} ({})", d.name, d.kind))
        .collect()
}

fn kernel(iso: &Isolation, host: &HostFacts) -> Cell {
    let same = same_kernel(iso, host);
    cell(
        format!(
            "{}{}",
            iso.kernel_release,
            if same { " (the host's)" } else { "" }
        ),
        !same,
    )
}

fn pids(iso: &Isolation, host: &HostFacts) -> Cell {
    let names: Vec<String> = iso
        .processes
        .iter()
        .map(|p| format!("{} {}", p.pid, p.comm))
        .collect();
    let sees_containerd = iso.processes.iter().any(|p| p.comm == "containerd");
    cell(
        format!(
            "{} processes visible (host: {}): {}{}",
            iso.processes.len(),
            host.process_count,
            list(&names, 4),
            if sees_containerd {
                "; containerd visible"
            } else {
                ""
            }
        ),
        !sees_containerd,
    )
}

fn mounts(iso: &Isolation, host: &HostFacts) -> Cell {
    let leaks = host_paths_in_mounts(&iso.mounts, host);
    let example = leaks
        .first()
        .map(|l| format!(": `{}`", l.chars().take(90).collect::<String>()))
        .unwrap_or_default();
    cell(
        format!(
            "{} mounts, {} name host paths{example}",
            iso.mounts.len(),
            leaks.len()
        ),
        leaks.is_empty(),
    )
}

fn dmesg(iso: &Isolation, host: &HostFacts) -> Cell {
    let d = &iso.dmesg;
    let whose = if !d.readable {
        ""
    } else if same_kernel(iso, host) {
        " (host log)"
    } else {
        " (guest kernel's log)"
    };
    cell(
        format!(
            "{}{whose}: {}",
            if d.readable {
                "readable"
            } else {
                "not readable"
            },
            d.detail
        ),
        !d.readable || !same_kernel(iso, host),
    )
}

fn kallsyms(iso: &Isolation, host: &HostFacts) -> Cell {
    let k = &iso.kallsyms;
    match &k.error {
        Some(e) => cell(format!("unreadable: {e}"), true),
        None => cell(
            format!("{} symbols, {} with real addresses", k.symbols, k.nonzero),
            k.nonzero == 0 || !same_kernel(iso, host),
        ),
    }
}

fn devices(iso: &Isolation, host: &HostFacts) -> Cell {
    let extra = extra_devices(iso);
    let whose = if extra.is_empty() || !same_kernel(iso, host) {
        ""
    } else {
        " of the host"
    };
    cell(
        format!(
            "{} entries; extra devices{whose}: {}",
            iso.devices.len(),
            if extra.is_empty() {
                "none".into()
            } else {
                list(&extra, 6)
            }
        ),
        extra.is_empty() || !same_kernel(iso, host),
    )
}

fn cgroups(iso: &Isolation, host: &HostFacts) -> Cell {
    let shared: Vec<String> = iso
        .cgroup_dirs
        .iter()
        .filter(|d| host.cgroup_dirs.contains(d))
        .cloned()
        .collect();
    cell(
        format!(
            "`{}`; {} of the host's top-level cgroups visible{}",
            iso.cgroup_self.lines().next().unwrap_or_default(),
            shared.len(),
            if shared.is_empty() {
                String::new()
            } else {
                format!(" ({})", list(&shared, 4))
            }
        ),
        shared.is_empty() || !same_kernel(iso, host),
    )
}

fn syscalls(iso: &Isolation, host: &HostFacts) -> Cell {
    let Some(s) = &iso.syscalls else {
        return Cell {
            text: "not scanned".into(),
            isolated: None,
        };
    };
    let detail = format!(
        "{} of {} numbers answered (ENOSYS {}, SIGSYS {}) by kernel {}",
        s.answered, s.probed, s.enosys, s.sigsys, iso.kernel_release
    );
    if same_kernel(iso, host) {
        cell(
            format!("**{}** host syscalls reachable: {detail}", s.answered),
            false,
        )
    } else {
        cell(
            format!(
                "0 host syscalls reachable from the container: {detail} (the guest); \
                 the pod's host processes: see the next row"
            ),
            true,
        )
    }
}

fn sysrq(
    normal: Option<&Isolation>,
    privileged: Option<&Isolation>,
    crash: Option<&str>,
    host: &HostFacts,
) -> Cell {
    let mut parts = Vec::new();
    let mut isolated = true;
    for (label, iso) in [("unprivileged", normal), ("privileged", privileged)] {
        let Some(iso) = iso else { continue };
        let text = if !iso.sysrq.readable {
            format!("{label}: not writable ({})", iso.sysrq.detail)
        } else if same_kernel(iso, host) {
            isolated = false;
            format!("{label}: writable: `echo c` would crash the HOST (not triggered)")
        } else {
            format!("{label}: writable: crashes only this pod's guest kernel")
        };
        parts.push(text);
    }
    if let Some(c) = crash {
        parts.push(format!("crash test: {c}"));
    }
    if parts.is_empty() {
        return Cell {
            text: "not run".into(),
            isolated: None,
        };
    }
    cell(parts.join("; "), isolated)
}

fn caps(iso: &Isolation, host: &HostFacts) -> Cell {
    let same = same_kernel(iso, host);
    cell(
        format!(
            "CapEff {}: {}{}",
            iso.cap_eff,
            if iso.powerful_caps.is_empty() {
                "none powerful".into()
            } else {
                iso.powerful_caps.join(" ")
            },
            if same || iso.powerful_caps.is_empty() {
                ""
            } else {
                " (over the guest kernel only)"
            }
        ),
        iso.powerful_caps.is_empty() || !same,
    )
}

fn block(iso: &Isolation, host: &HostFacts) -> Cell {
    cell(
        iso.block_read.detail.clone(),
        !iso.block_read.readable || !same_kernel(iso, host),
    )
}

fn missing(rt: &RuntimeData, what: &str) -> Cell {
    Cell {
        text: crate::report::why_missing(rt, what),
        isolated: None,
    }
}

type Probe = fn(&Isolation, &HostFacts) -> Cell;

/// How many syscalls the host kernel answers, from a scan that ran on it (runc, crun).
fn host_syscall_count(host: &HostFacts, runtimes: &[RuntimeData]) -> Option<u32> {
    runtimes
        .iter()
        .filter_map(|rt| rt.isolation.as_ref())
        .filter(|iso| same_kernel(iso, host))
        .filter_map(|iso| iso.syscalls.as_ref())
        .map(|s| s.answered + s.skipped.len() as u32)
        .max()
}

/// The host syscalls the pod's own host processes (shim, hull-vmm, virtiofsd; runc's container)
/// can make, from the `Seccomp:` mode each had while the pod ran: a process without a filter
/// can make every syscall the host kernel answers.
fn host_side(rt: &RuntimeData, host_syscalls: Option<u32>) -> Cell {
    let Some(m) = &rt.memory else {
        return missing(rt, "memory");
    };
    let all = host_syscalls.map_or_else(
        || "every host syscall".to_string(),
        |n| format!("all {n} host syscalls"),
    );
    let mut seen: Vec<(String, Option<u8>)> = Vec::new();
    for p in &m.procs {
        if !seen.contains(&(p.name.clone(), p.seccomp)) {
            seen.push((p.name.clone(), p.seccomp));
        }
    }
    if seen.is_empty() {
        return Cell {
            text: "no host processes recorded".into(),
            isolated: None,
        };
    }
    let mut isolated = true;
    let parts: Vec<String> = seen
        .iter()
        .map(|(name, mode)| match mode {
            Some(0) => {
                isolated = false;
                format!("{name}: no seccomp filter: **{all}**")
            }
            Some(1) => format!("{name}: strict seccomp (4 syscalls)"),
            Some(2) => format!("{name}: seccomp filter (its allow-list)"),
            _ => {
                isolated = false;
                format!("{name}: seccomp mode not recorded")
            }
        })
        .collect();
    cell(parts.join("; "), isolated)
}

/// The table's rows, one cell per runtime in `runtimes` order.
pub fn rows(host: &HostFacts, runtimes: &[RuntimeData]) -> Vec<Row> {
    let hk = &host.kernel_release;
    let normal: [(&str, String, Probe); 8] = [
        (
            "kernel release seen",
            format!("not the host's ({hk})"),
            kernel,
        ),
        (
            "host PIDs visible",
            "only the container's processes".into(),
            pids,
        ),
        (
            "host mounts visible",
            "no host paths in /proc/self/mounts".into(),
            mounts,
        ),
        (
            "host kernel log (dmesg)",
            "not readable, or another kernel's".into(),
            dmesg,
        ),
        (
            "/proc/kallsyms addresses",
            "hidden (zero), or another kernel's".into(),
            kallsyms,
        ),
        (
            "host devices",
            "only null, zero, full, random, urandom, tty, console, ptmx".into(),
            devices,
        ),
        (
            "host cgroup tree",
            "none of the host's cgroups visible".into(),
            cgroups,
        ),
        (
            "host kernel syscalls reachable",
            "0: another kernel answers".into(),
            syscalls,
        ),
    ];
    let privileged: [(&str, String, Probe); 6] = [
        (
            "privileged: kernel seen",
            format!("not the host's ({hk})"),
            kernel,
        ),
        ("privileged: kernel log", "not the host's".into(), dmesg),
        (
            "privileged: kallsyms",
            "not the host's addresses".into(),
            kallsyms,
        ),
        (
            "privileged: devices",
            "not the host's devices".into(),
            devices,
        ),
        (
            "privileged: raw block device read",
            "no host disk readable".into(),
            block,
        ),
        (
            "privileged: capabilities",
            "powerful only over another kernel".into(),
            caps,
        ),
    ];
    let mut out = Vec::new();
    for (probe, expected, f) in normal {
        let cells = runtimes
            .iter()
            .map(|rt| {
                rt.isolation
                    .as_ref()
                    .map_or_else(|| missing(rt, "isolation"), |i| f(i, host))
            })
            .collect();
        out.push(Row {
            probe,
            expected,
            cells,
        });
    }
    let n = host_syscall_count(host, runtimes);
    out.push(Row {
        probe: "host syscalls of the pod's own host processes",
        expected: "each behind a seccomp filter".into(),
        cells: runtimes.iter().map(|rt| host_side(rt, n)).collect(),
    });
    out.push(Row {
        probe: "kernel crash (sysrq-trigger)",
        expected: "cannot reach the host kernel; a crash takes down only its pod".into(),
        cells: runtimes
            .iter()
            .map(|rt| {
                if rt.isolation.is_none() && rt.privileged.is_none() {
                    missing(rt, "isolation")
                } else {
                    sysrq(
                        rt.isolation.as_ref(),
                        rt.privileged.as_ref(),
                        rt.crash.as_deref(),
                        host,
                    )
                }
            })
            .collect(),
    });
    for (probe, expected, f) in privileged {
        let cells = runtimes
            .iter()
            .map(|rt| {
                rt.privileged
                    .as_ref()
                    .map_or_else(|| missing(rt, "privileged"), |i| f(i, host))
            })
            .collect();
        out.push(Row {
            probe,
            expected,
            cells,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_data::{Access, Dev, Proc, SyscallScan};

    fn host() -> HostFacts {
        HostFacts {
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            process_count: 90,
            containerd_root: "/run/hb/containerd/root".into(),
            volume_dir: "/run/hb/vol".into(),
            cgroup_dirs: vec!["default".into(), "system.slice".into()],
            ..Default::default()
        }
    }

    fn runc_like() -> Isolation {
        Isolation {
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            processes: vec![Proc { pid: 1, comm: "hull-bench-prob".into() }],
            mounts: vec!["overlay / overlay rw,lowerdir=/run/hb/containerd/root/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs 0 0".into()],
            devices: vec![Dev { name: "null".into(), kind: "char".into() }, Dev { name: "kvm".into(), kind: "char".into() }],
            syscalls: Some(SyscallScan { probed: 457, answered: 380, enosys: 77, ..Default::default() }),
            sysrq: Access { readable: true, detail: String::new() },
            ..Default::default()
        }
    }

    #[test]
    fn same_kernel_answers_are_not_isolated_and_guest_answers_are() {
        let rt = RuntimeData {
            name: "runc".into(),
            isolation: Some(runc_like()),
            ..Default::default()
        };
        let mut guest = runc_like();
        guest.kernel_release = "6.12.7-hull".into();
        guest.mounts = vec!["hullshare / virtiofs rw 0 0".into()];
        let hull = RuntimeData {
            name: "hull".into(),
            isolation: Some(guest),
            ..Default::default()
        };
        let rows = rows(&host(), &[rt, hull]);
        let get = |p: &str| rows.iter().find(|r| r.probe == p).unwrap();
        assert_eq!(get("kernel release seen").cells[0].isolated, Some(false));
        assert_eq!(get("kernel release seen").cells[1].isolated, Some(true));
        let mounts = &get("host mounts visible").cells;
        assert_eq!(mounts[0].isolated, Some(false));
        assert!(
            mounts[0].text.contains("1 name host paths"),
            "{}",
            mounts[0].text
        );
        assert_eq!(mounts[1].isolated, Some(true));
        let sys = &get("host kernel syscalls reachable").cells;
        assert!(
            sys[0].text.starts_with("**380** host syscalls"),
            "{}",
            sys[0].text
        );
        assert!(
            sys[1].text.starts_with("0 host syscalls"),
            "{}",
            sys[1].text
        );
        let crash = &get("kernel crash (sysrq-trigger)").cells;
        assert!(crash[0].text.contains("would crash the HOST"));
        assert_eq!(crash[1].isolated, Some(true));
        assert_eq!(get("host devices").cells[0].isolated, Some(false));
    }

    #[test]
    fn the_pods_host_processes_are_judged_by_their_seccomp_mode() {
        use crate::model::Memory;
        use crate::procs::ProcMem;
        let proc = |name: &str, seccomp| ProcMem {
            pid: 7,
            name: name.into(),
            pss_kib: 1,
            guest_ram_kib: 0,
            seccomp,
        };
        let runc = RuntimeData {
            name: "runc".into(),
            isolation: Some(runc_like()),
            ..Default::default()
        };
        let hull = RuntimeData {
            name: "hull".into(),
            memory: Some(Memory {
                procs: vec![
                    proc("containerd-shim-hull-v2", Some(0)),
                    proc("hull-vmm", Some(0)),
                    proc("virtiofsd", Some(2)),
                    proc("virtiofsd", Some(2)),
                ],
            }),
            ..Default::default()
        };
        let jailed = RuntimeData {
            name: "hull".into(),
            memory: Some(Memory {
                procs: vec![proc("hull-vmm", Some(2)), proc("virtiofsd", Some(2))],
            }),
            ..Default::default()
        };
        let rows = rows(&host(), &[runc, hull, jailed]);
        let row = rows
            .iter()
            .find(|r| r.probe == "host syscalls of the pod's own host processes")
            .unwrap();
        // runc recorded no processes: said so, not judged.
        assert_eq!(row.cells[0].isolated, None);
        // hull-vmm without a filter can make every syscall runc's scan found on this kernel.
        let text = &row.cells[1].text;
        assert_eq!(row.cells[1].isolated, Some(false));
        assert!(
            text.contains("hull-vmm: no seccomp filter: **all 380 host syscalls**"),
            "{text}"
        );
        assert_eq!(text.matches("virtiofsd").count(), 1, "{text}");
        assert!(text.contains("virtiofsd: seccomp filter"), "{text}");
        assert_eq!(row.cells[2].isolated, Some(true));
    }

    #[test]
    fn missing_data_says_why() {
        let rt = RuntimeData {
            name: "hull".into(),
            failed: Some("ctr run: exit 1: mount virtio-fs: EINVAL".into()),
            ..Default::default()
        };
        let rows = rows(&host(), &[rt]);
        assert!(rows.iter().all(|r| r.cells[0].isolated.is_none()));
        assert_eq!(rows[0].cells[0].text, "FAILED (see Runtimes)");
    }
}
