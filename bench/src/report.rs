//! Rendering a run: `report.md`, `data.csv` and the two plots.

use std::fmt::Write as _;

use crate::isolation;
use crate::model::{metrics, RunData, RuntimeData};
use crate::stats::ratio;
use crate::svg;

/// Escapes text for a markdown table cell.
pub fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Why a runtime has no figure for a scenario (short: the Runtimes and Errors sections say more).
pub fn why_missing(rt: &RuntimeData, scenario: &str) -> String {
    if rt.unavailable.is_some() {
        return "not available (see Runtimes)".into();
    }
    if let Some(e) = rt.errors.get(scenario) {
        if rt.failed.as_deref() != Some(e.as_str()) {
            return format!("failed: {}", short(e, 80));
        }
    }
    if rt.failed.is_some() {
        return "FAILED (see Runtimes)".into();
    }
    "not measured".into()
}

/// The full reason a runtime has no data for `scenario`, for the plots.
fn reason(rt: &RuntimeData, scenario: &str) -> String {
    rt.unavailable
        .clone()
        .or_else(|| rt.failed.clone())
        .or_else(|| rt.errors.get(scenario).cloned())
        .unwrap_or_else(|| "not measured".into())
        // The plots have little room: keep the part that says what went wrong.
        .replace("ctr: failed to create shim task: ", "")
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

/// Scenario (errors key) behind each cost row, in `metrics` order.
const SCENARIOS: &[&str] = &[
    "start",
    "first_byte",
    "exec",
    "stdout",
    "work",
    "work",
    "work",
    "work",
    "work",
    "work",
    "work",
    "work",
    "memory",
    "memory",
    "memory",
    "memory",
    "density",
    "density",
];

/// The cost table: medians (p95, n) per runtime, and each runtime's ratio to runc.
pub fn cost_table(runtimes: &[RuntimeData]) -> String {
    let mut s = String::from("| figure | unit |");
    for rt in runtimes {
        let _ = write!(s, " {} median (p95, n) |", rt.name);
    }
    let others: Vec<&RuntimeData> = runtimes.iter().filter(|r| r.name != "runc").collect();
    let runc = runtimes.iter().find(|r| r.name == "runc");
    if runc.is_some() {
        for o in &others {
            let _ = write!(s, " {}/runc |", o.name);
        }
    }
    s.push_str("\n|---|---|");
    for _ in runtimes {
        s.push_str("---|");
    }
    if runc.is_some() {
        for _ in &others {
            s.push_str("---|");
        }
    }
    s.push('\n');
    let per_rt: Vec<_> = runtimes.iter().map(metrics).collect();
    let runc_idx = runtimes.iter().position(|r| r.name == "runc");
    for (row, scenario) in SCENARIOS
        .iter()
        .enumerate()
        .take(per_rt.first().map_or(0, Vec::len))
    {
        let m0 = &per_rt[0][row];
        let _ = write!(s, "| {} | {} |", md_cell(m0.label), m0.unit);
        for (i, rt) in runtimes.iter().enumerate() {
            let cell = match per_rt[i][row].summary() {
                Some(sum) if sum.n > 1 => {
                    format!("{} ({}, {})", fmt_num(sum.median), fmt_num(sum.p95), sum.n)
                }
                Some(sum) => fmt_num(sum.median),
                None => why_missing(rt, scenario),
            };
            let _ = write!(s, " {} |", md_cell(&cell));
        }
        if let Some(ri) = runc_idx {
            let base = per_rt[ri][row].summary();
            for (i, rt) in runtimes.iter().enumerate() {
                if rt.name == "runc" {
                    continue;
                }
                let r = match (per_rt[i][row].summary(), base) {
                    (Some(a), Some(b)) => {
                        ratio(a.median, b.median).map_or("n/a".into(), |r| format!("{r:.2}x"))
                    }
                    _ => "n/a".into(),
                };
                let _ = write!(s, " {r} |");
            }
        }
        s.push('\n');
    }
    s
}

/// The isolation table.
pub fn isolation_table(data: &RunData) -> String {
    let mut s = String::from("| probe | expected when isolated |");
    for rt in &data.runtimes {
        let _ = write!(s, " {} |", rt.name);
    }
    s.push_str("\n|---|---|");
    for _ in &data.runtimes {
        s.push_str("---|");
    }
    s.push('\n');
    for row in isolation::rows(&data.host, &data.runtimes) {
        let _ = write!(s, "| {} | {} |", md_cell(row.probe), md_cell(&row.expected));
        for c in &row.cells {
            let mark = match c.isolated {
                Some(true) => "isolated: ",
                Some(false) => "**NOT isolated**: ",
                None => "",
            };
            let _ = write!(s, " {mark}{} |", md_cell(&c.text));
        }
        s.push('\n');
    }
    s
}

fn status(rt: &RuntimeData) -> String {
    if let Some(u) = &rt.unavailable {
        format!("not available: {u}")
    } else if let Some(f) = &rt.failed {
        format!("**FAILED**: {f} (its remaining scenarios were skipped)")
    } else if rt.errors.is_empty() {
        "ok".into()
    } else {
        format!(
            "ran, with {} failed scenario(s) (see Errors)",
            rt.errors.len()
        )
    }
}

/// The whole `report.md`.
pub fn markdown(data: &RunData) -> String {
    let mut s = String::new();
    let names: Vec<&str> = data.runtimes.iter().map(|r| r.name.as_str()).collect();
    let _ = writeln!(s, "# Hull isolation benchmark: {}\n", names.join(" vs "));
    let place = if data.env.place == "lab" {
        "**in the lab** (a nested VM under QEMU's software emulator, 1 vCPU): every figure is \
         roughly 30-150x slower than on hardware; compare runtimes side by side within this run \
         (the ratios), never against hardware figures"
    } else {
        "directly on a host with hardware KVM"
    };
    let _ = writeln!(
        s,
        "Made by `make bench` on {} {place}. The whole run took {:.0} s ({:.1} min); host kernel `{}`, {} CPUs, {} MiB.\n",
        data.started,
        data.elapsed_s,
        data.elapsed_s / 60.0,
        data.host.kernel_release,
        data.env.cpus,
        data.env.mem_mib
    );
    s.push_str("## Runtimes\n\n| runtime | ctr flags | status |\n|---|---|---|\n");
    for rt in &data.runtimes {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} |",
            rt.name,
            rt.ctr_flags.join(" "),
            md_cell(&status(rt))
        );
    }
    let c = &data.config;
    let _ = writeln!(
        s,
        "\n## Cost\n\nSamples per runtime: {} `ctr run --rm` starts, {} first-byte starts (plus the long-running \
         container's own start), {} execs, {} containers in the density round; one in-container probe run each \
         for the rest (loops of {} ms, {} MiB sequential files, {} small files, a {} MiB stdout blast). Runtimes \
         alternate within each round. Ratios are of medians; p95 with this few samples is the slowest sample.\n",
        c.start_runs, c.first_byte_runs, c.exec_runs, c.density, c.loop_ms, c.seq_mib, c.small_files, c.blast_mib
    );
    s.push_str(&cost_table(&data.runtimes));
    s.push_str(
        "\nHow: start = wall time of `ctr run --rm IMAGE ID true`; first byte = from spawning `ctr run --rm ... echo` \
         to its first stdout byte; exec = wall time of `ctr task exec` of `true` into a running container; stdio = \
         bytes after a marker line / time from the marker to the last byte, as read by the driver from ctr's stdout; \
         syscall and file figures come from `hull-bench-probe` inside the container (file cycle and rootfs tests in \
         the container's /tmp, volume tests in a host directory bind-mounted at /vol; reads follow fsync + \
         fadvise(DONTNEED)); memory = PSS from /proc/PID/smaps of the pod's shim and all its descendants (runc/crun: \
         shim + the container's process; Hull: shim + hull-vmm + virtiofsd, with the guest RAM memfd mapping \
         counted apart) while the container idles; pods per GiB = 1024 / MiB per pod.\n\n",
    );
    s.push_str("![start latency](start-latency.svg)\n![memory per pod](memory-per-pod.svg)\n\n");
    s.push_str("### Memory per idle pod, by process\n\n| runtime | process | PSS MiB | of which guest RAM MiB |\n|---|---|---|---|\n");
    for rt in &data.runtimes {
        match &rt.memory {
            Some(m) => {
                for p in &m.procs {
                    let _ = writeln!(
                        s,
                        "| {} | {} (pid {}) | {:.1} | {:.1} |",
                        rt.name,
                        p.name,
                        p.pid,
                        p.pss_kib as f64 / 1024.0,
                        p.guest_ram_kib as f64 / 1024.0
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | | |",
                    rt.name,
                    md_cell(&why_missing(rt, "memory"))
                );
            }
        }
    }
    if let Some((rt, b)) = data
        .runtimes
        .iter()
        .find_map(|rt| rt.burst.as_ref().map(|b| (rt, b)))
    {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = write!(
            s,
            "\n### Memory back to the host ({})\n\nGuest RAM of one pod on the host (PSS of the memfd \
             mapping) while idle, after {} MiB were written to a tmpfs in its {} MiB guest, and {:.1} s after \
             the file was deleted (virtio-balloon free page reporting returns freed guest pages).\n\n\
             | idle MiB | after the burst MiB | after the delete MiB | given back |\n|---|---|---|---|\n\
             | {:.1} | {:.1} | {:.1} | {:.0}% |\n",
            rt.name,
            b.mib,
            b.vm_mib,
            b.after_s,
            mib(b.idle_kib),
            mib(b.peak_kib),
            mib(b.after_kib),
            100.0 * b.peak_kib.saturating_sub(b.after_kib) as f64
                / b.peak_kib.saturating_sub(b.idle_kib).max(1) as f64
        );
    }
    s.push_str(
        "\n### Density\n\nN containers started at once (`ctr run --rm` true each); per pod: the total over N, \
         against one start alone (the median of the start figure above).\n\n\
         | runtime | N | total s | per pod s | one alone s | per pod / alone | failures | errors |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for rt in &data.runtimes {
        match &rt.density {
            Some(d) => {
                let per_pod = d.total_s / f64::from(d.n.max(1));
                let alone = crate::stats::median(&crate::model::ok_walls(&rt.start));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
                    rt.name,
                    d.n,
                    d.total_s,
                    per_pod,
                    alone.map_or_else(|| "no data".into(), |a| format!("{a:.1}")),
                    alone
                        .and_then(|a| ratio(per_pod, a))
                        .map_or_else(|| "n/a".into(), |r| format!("{r:.2}x")),
                    d.failures,
                    md_cell(&d.errors.join("; "))
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | | | | | | | {} |",
                    rt.name,
                    md_cell(&why_missing(rt, "density"))
                );
            }
        }
    }
    s.push_str(&crate::netreport::section(
        data.network.as_ref(),
        data.network_note.as_deref(),
    ));
    s.push_str(&crate::boot::section(
        data.boot.as_ref(),
        data.boot_note.as_deref(),
    ));
    s.push_str(
        "\n## Isolation\n\nEach cell is what `hull-bench-probe` printed inside a container of that runtime (the privileged \
         rows: `ctr run --privileged`), judged against what the driver read on the host. An answer from a kernel \
         other than the host's counts as isolated: it is the pod's own guest kernel answering.\n\n",
    );
    s.push_str(&isolation_table(data));
    s.push_str("\n## Errors\n\n");
    let mut any = false;
    for rt in &data.runtimes {
        for (k, v) in &rt.errors {
            any = true;
            let _ = writeln!(s, "- {} / {k}: {}", rt.name, md_cell(v));
        }
    }
    if !any {
        s.push_str("none\n");
    }
    s.push_str("\n## Left running after the run\n\n");
    if data.leftovers.is_empty() {
        s.push_str("nothing (no shim, hull-vmm, virtiofsd, runc/crun or probe process, no mount under the benchmark's directories)\n");
    } else {
        for l in &data.leftovers {
            let _ = writeln!(s, "- `{}`", md_cell(l));
        }
    }
    s.push_str("\n## Environment\n\n");
    for (k, v) in &data.env.versions {
        let _ = writeln!(s, "- {k}: {}", md_cell(v));
    }
    for n in &data.notes {
        let _ = writeln!(s, "- {}", md_cell(n));
    }
    s.push_str("\nRaw data: `data.json` (everything), `data.csv` (one row per sample).\n");
    if let Some(w) = &data.whole_command {
        let _ = writeln!(s, "\n{}", w.trim());
    }
    s
}

/// One row per sample: runtime, figure, unit, sample index, value.
pub fn csv(data: &RunData) -> String {
    let mut s = String::from("runtime,figure,unit,sample,value\n");
    for rt in &data.runtimes {
        for m in metrics(rt) {
            for (i, v) in m.samples.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},\"{}\",{},{i},{v}",
                    rt.name,
                    m.label.trim().replace('"', "'"),
                    m.unit
                );
            }
        }
    }
    s
}

/// The plots: (file name, SVG text): start latency, memory, and the pod network's and the boot's when measured.
pub fn plots(data: &RunData) -> Vec<(&'static str, String)> {
    let series: Vec<svg::Series> = data
        .runtimes
        .iter()
        .map(|rt| svg::Series {
            name: rt.name.clone(),
            samples: metrics(rt)[0].samples.clone(),
            note: Some(reason(rt, "start")),
        })
        .collect();
    let bars: Vec<svg::Bar> = data
        .runtimes
        .iter()
        .map(|rt| match &rt.memory {
            Some(m) => svg::Bar {
                name: rt.name.clone(),
                overhead_mib: m.overhead_kib() as f64 / 1024.0,
                guest_mib: m.guest_ram_kib() as f64 / 1024.0,
                note: None,
            },
            None => svg::Bar {
                name: rt.name.clone(),
                overhead_mib: 0.0,
                guest_mib: 0.0,
                note: Some(reason(rt, "memory")),
            },
        })
        .collect();
    let where_ = if data.env.place == "lab" {
        " (lab)"
    } else {
        ""
    };
    let mut plots = vec![
        (
            "start-latency.svg",
            svg::start_latency(
                &format!("ctr run --rm true: wall time{where_}"),
                "seconds",
                &series,
            ),
        ),
        (
            "memory-per-pod.svg",
            svg::memory(&format!("Host memory per idle pod{where_}"), &bars),
        ),
    ];
    if let Some(net) = &data.network {
        plots.extend(crate::netreport::plots(net, data.env.place == "lab"));
    }
    if let Some(boot) = &data.boot {
        plots.push(crate::boot::plot(boot, data.env.place == "lab"));
    }
    plots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RuntimeData, Sample};

    fn data() -> RunData {
        let ok = |w: f64| Sample {
            ok: true,
            wall_s: w,
            ..Default::default()
        };
        RunData {
            env: crate::model::Env {
                place: "lab".into(),
                ..Default::default()
            },
            runtimes: vec![
                RuntimeData {
                    name: "runc".into(),
                    start: vec![ok(20.0), ok(30.0), ok(25.0)],
                    ..Default::default()
                },
                RuntimeData {
                    name: "crun".into(),
                    unavailable: Some("crun not installed".into()),
                    ..Default::default()
                },
                RuntimeData {
                    name: "hull".into(),
                    start: vec![ok(40.0), ok(50.0), ok(60.0)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn cost_table_has_medians_p95_and_ratios() {
        let t = cost_table(&data().runtimes);
        let start = t
            .lines()
            .find(|l| l.contains("container start (`ctr run --rm` true)"))
            .unwrap();
        assert!(start.contains("| 25.00 (30.00, 3) |"), "{start}");
        assert!(
            start.contains("| not available (see Runtimes) |"),
            "{start}"
        );
        assert!(start.contains("| 50.00 (60.00, 3) |"), "{start}");
        assert!(start.ends_with("| n/a | 2.00x |"), "{start}");
        let header = t.lines().next().unwrap();
        assert!(header.contains("crun/runc") && header.contains("hull/runc"));
    }

    #[test]
    fn markdown_names_the_lab_and_a_failed_runtime() {
        let mut d = data();
        d.runtimes[2].failed =
            Some("ctr run: exit 1: mount virtio-fs tag \"hullshare\": EINVAL".into());
        let md = markdown(&d);
        assert!(md.contains("**in the lab**"));
        assert!(
            md.contains("| hull | `` | **FAILED**: ctr run: exit 1"),
            "{md}"
        );
        assert!(md.contains("## Isolation") && md.contains("kernel release seen"));
        assert!(md.contains("![start latency](start-latency.svg)"));
    }

    #[test]
    fn md_cell_escapes_pipes_and_newlines() {
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn csv_has_one_row_per_sample() {
        let c = csv(&data());
        assert_eq!(c.lines().count(), 1 + 6);
        assert!(c.contains("runc,\"container start (`ctr run --rm` true), wall\",s,0,20"));
    }

    #[test]
    fn plots_are_both_svg() {
        let p = plots(&data());
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|(_, s)| s.starts_with("<svg")));
    }
}
