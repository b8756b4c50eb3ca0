//! The report's "Boot" section: hull-vmm against QEMU microvm booting the same guest kernel,
//! initramfs, memory and vCPUs, from `boot.json` (`bench/vmm-boot-lab.sh` writes it when
//! `HULL_BOOT_JSON` names a file; `make bench` runs it after the other steps).

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::report::md_cell;
use crate::stats::{median, ratio};

/// The boots of one VMM setting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootRuns {
    /// Wall time from the VMM's start to the agent's ready line on the console, per boot.
    pub ready_ms: Vec<f64>,
    /// The guest's own uptime in that line, per boot.
    pub uptime_s: Vec<f64>,
    /// Wall time from the VMM's start to its exit (the guest powers off after its line).
    pub exit_ms: Vec<f64>,
    /// Wall time from the VMM's start to its first KVM_RUN (hull-vmm's debug line; none for
    /// QEMU).
    #[serde(default)]
    pub first_run_ms: Vec<f64>,
}

/// What `boot.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootData {
    /// hull-vmm with shmem huge pages at `advise` (hull-vmm advises them for guest RAM).
    pub hull: BootRuns,
    /// hull-vmm with shmem huge pages at `never` (Debian's default).
    pub hull_no_thp: BootRuns,
    pub qemu: BootRuns,
    /// Guest memory (MiB) and vCPUs of every boot.
    pub memory_mib: u32,
    pub vcpus: u32,
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "no data".into(), |v| format!("{v:.decimals$}"))
}

fn times(a: Option<f64>, b: Option<f64>) -> String {
    a.zip(b)
        .and_then(|(a, b)| ratio(a, b))
        .map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
}

/// The markdown section; `note` says why there is no data when `boot` is `None`.
pub fn section(boot: Option<&BootData>, note: Option<&str>) -> String {
    let mut s = String::from("\n## Boot: hull-vmm against QEMU microvm\n\n");
    let Some(b) = boot else {
        let _ = writeln!(
            s,
            "not measured in this run: {}",
            md_cell(note.unwrap_or("no boot.json (HULL_BENCH_BOOT=0?)"))
        );
        return s;
    };
    let _ = writeln!(
        s,
        "The same guest kernel (ELF `vmlinux`), initramfs, {} MiB and {} vCPU under each VMM, booted \
         one after the other in each round (`bench/vmm-boot-lab.sh`), each VMM once untimed first. \
         Ready: wall time from the VMM's start to the agent's ready line on the console. The first KVM_RUN: \
         from hull-vmm's own debug line (QEMU prints none), the VMM's share of the boot. Goals (issue \
         13): start to ready at most 0.4x QEMU microvm's; guest uptime at ready no worse than QEMU's.\n",
        b.memory_mib, b.vcpus
    );
    s.push_str(
        "| median of the boots | hull-vmm | hull-vmm, no huge pages | QEMU microvm | hull-vmm/QEMU | \
         no huge pages/QEMU |\n|---|---|---|---|---|---|\n",
    );
    let vmms = [&b.hull, &b.hull_no_thp, &b.qemu];
    let rows = [
        ("start to agent ready, ms", 0, vmms.map(|r| &r.ready_ms)),
        ("guest uptime at ready, s", 2, vmms.map(|r| &r.uptime_s)),
        ("start to VMM exit, ms", 0, vmms.map(|r| &r.exit_ms)),
        (
            "start to the first KVM_RUN, ms",
            0,
            vmms.map(|r| &r.first_run_ms),
        ),
    ];
    for (label, decimals, samples) in rows {
        let [h, n, q] = samples.map(|v| median(v));
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(h, decimals),
            cell(n, decimals),
            cell(q, decimals),
            times(h, q),
            times(n, q)
        );
    }
    let _ = writeln!(
        s,
        "\nBoots: hull-vmm {}, without huge pages {}, QEMU {} (a boot whose ready line never came \
         counts in none of the medians).\n\n![boot](boot.svg)",
        b.hull.ready_ms.len(),
        b.hull_no_thp.ready_ms.len(),
        b.qemu.ready_ms.len()
    );
    s
}

/// The plot, (file name, SVG text): start to ready and guest uptime at ready, in seconds,
/// one bar per VMM setting.
pub fn plot(b: &BootData, lab: bool) -> (&'static str, String) {
    let where_ = if lab { " (lab)" } else { "" };
    let series = [
        ("hull-vmm", &b.hull),
        ("hull-vmm, no huge pages", &b.hull_no_thp),
        ("QEMU microvm", &b.qemu),
    ]
    .map(|(name, r)| {
        (
            name.to_string(),
            vec![median(&r.ready_ms).map(|ms| ms / 1e3), median(&r.uptime_s)],
        )
    });
    (
        "boot.svg",
        crate::svg::grouped_bars(
            &format!("Boot of the same guest: hull-vmm vs QEMU microvm{where_}"),
            "seconds (median)",
            &["VMM start to agent ready", "guest uptime at ready"],
            &series,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_gives_medians_and_ratios_to_qemu() {
        let runs = |ready: &[f64], up: &[f64]| BootRuns {
            ready_ms: ready.to_vec(),
            uptime_s: up.to_vec(),
            exit_ms: ready.iter().map(|r| r + 100.0).collect(),
            first_run_ms: vec![200.0],
        };
        let data = BootData {
            hull: runs(&[4000.0, 3000.0, 5000.0], &[1.5, 1.7, 1.6]),
            hull_no_thp: runs(&[4400.0], &[2.5]),
            qemu: runs(&[8000.0, 9000.0, 10000.0], &[1.6, 1.8, 1.7]),
            memory_mib: 256,
            vcpus: 1,
        };
        let s = section(Some(&data), None);
        assert!(
            s.contains("| start to agent ready, ms | 4000 | 4400 | 9000 | 0.44x | 0.49x |"),
            "{s}"
        );
        assert!(
            s.contains("| guest uptime at ready, s | 1.60 | 2.50 | 1.70 | 0.94x | 1.47x |"),
            "{s}"
        );
        assert!(
            s.contains("| start to the first KVM_RUN, ms | 200 | 200 | 200 | 1.00x | 1.00x |"),
            "{s}"
        );
        assert!(
            s.contains("Boots: hull-vmm 3, without huge pages 1, QEMU 3"),
            "{s}"
        );
        let (name, svg) = plot(&data, true);
        assert_eq!(name, "boot.svg");
        assert!(
            svg.starts_with("<svg") && svg.contains("QEMU microvm"),
            "{svg}"
        );
    }

    #[test]
    fn no_data_says_why() {
        let s = section(None, Some("qemu-system-x86_64 is not installed"));
        assert!(s.contains("not measured in this run: qemu-system-x86_64 is not installed"));
        let empty = section(Some(&BootData::default()), None);
        assert!(
            empty.contains("| no data | no data | no data | n/a | n/a |"),
            "{empty}"
        );
    }
}
