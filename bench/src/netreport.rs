//! The report's "Pod network" section and plots, from `network.json` (the
//! lab CRI test `net_bench` writes it; see [`crate::net`]).

use std::fmt::Write;

use crate::net::{NetData, NetHandler};
use crate::report::md_cell;
use crate::stats::{median, summarize};
use crate::svg;

/// The four figures of one handler: node→pod and pod→node Mbit/s (medians of
/// the rounds), round-trip median and p95 µs (over every timed round trip).
pub fn figures(d: &NetHandler) -> [Option<f64>; 4] {
    let rtt = summarize(&d.rtt_us);
    [
        median(&d.node_to_pod_mbit),
        median(&d.pod_to_node_mbit),
        rtt.map(|s| s.median),
        rtt.map(|s| s.p95),
    ]
}

const ROWS: [&str; 4] = [
    "node → pod throughput, Mbit/s (median of rounds)",
    "pod → node throughput, Mbit/s (median of rounds)",
    "round trip, 1 byte, median µs",
    "round trip, 1 byte, p95 µs",
];

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "no data".into(), |v| format!("{v:.1}"))
}

/// The markdown section; `note` says why there is no data when `net` is `None`.
pub fn section(net: Option<&NetData>, note: Option<&str>) -> String {
    let mut s = String::from("\n## Pod network (pod↔node TCP)\n\n");
    let Some(net) = net else {
        let _ = writeln!(
            s,
            "not measured in this run: {}",
            md_cell(note.unwrap_or("no network.json (HULL_BENCH_NET=0?)"))
        );
        return s;
    };
    let _ = writeln!(
        s,
        "Pods through containerd's CRI plugin with the runtime handlers below and a CNI bridge; \
         the node is the lab VM's root network namespace. {} Ratios are the last handler's figure over the \
         first's: above 1 means more throughput, or a longer round trip.\n",
        md_cell(&net.setup)
    );
    let hs = &net.handlers;
    s.push_str("| figure |");
    for h in hs {
        let _ = write!(s, " {} |", h.handler);
    }
    let ratio = match &hs[..] {
        [first, .., last] => Some((first, last)),
        _ => None,
    };
    if let Some((a, b)) = ratio {
        let _ = write!(s, " {}/{} |", b.handler, a.handler);
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(hs.len() + usize::from(ratio.is_some())));
    s.push('\n');
    let figs: Vec<[Option<f64>; 4]> = hs.iter().map(figures).collect();
    for (row, label) in ROWS.iter().enumerate() {
        let _ = write!(s, "| {label} |");
        for f in &figs {
            let _ = write!(s, " {} |", cell(f[row]));
        }
        if ratio.is_some() {
            let (a, b) = (figs[0][row], figs[figs.len() - 1][row]);
            let r = a.zip(b).filter(|(a, _)| *a > 0.0).map(|(a, b)| b / a);
            let _ = write!(
                s,
                " {} |",
                r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"))
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nSamples: {}.\n",
        hs.iter()
            .map(|h| format!(
                "{} {} rounds, {} round trips",
                h.handler,
                h.node_to_pod_mbit.len(),
                h.rtt_us.len()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    s.push_str("![pod network throughput](network-throughput.svg)\n![pod network round trip](network-rtt.svg)\n");
    for h in hs {
        for e in &h.errors {
            let _ = writeln!(s, "- error, {}: {}", h.handler, md_cell(e));
        }
    }
    s
}

/// The two plots, (file name, SVG text): throughput both ways, round trip median and p95.
pub fn plots(net: &NetData, lab: bool) -> Vec<(&'static str, String)> {
    let where_ = if lab { " (lab)" } else { "" };
    let series = |range: std::ops::Range<usize>| -> Vec<(String, Vec<Option<f64>>)> {
        net.handlers
            .iter()
            .map(|h| (h.handler.clone(), figures(h)[range.clone()].to_vec()))
            .collect()
    };
    vec![
        (
            "network-throughput.svg",
            svg::grouped_bars(
                &format!("Pod network TCP throughput{where_}"),
                "Mbit/s (median)",
                &["node → pod", "pod → node"],
                &series(0..2),
            ),
        ),
        (
            "network-rtt.svg",
            svg::grouped_bars(
                &format!("Pod network 1-byte TCP round trip{where_}"),
                "microseconds",
                &["median", "p95"],
                &series(2..4),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> NetData {
        NetData {
            setup: "test setup.".into(),
            secs_per_transfer: 5.0,
            repeats: 3,
            handlers: vec![
                NetHandler {
                    handler: "runc".into(),
                    node_to_pod_mbit: vec![800.0, 1000.0, 900.0],
                    pod_to_node_mbit: vec![500.0, 600.0, 700.0],
                    rtt_us: (1..=100).map(f64::from).collect(),
                    errors: vec![],
                },
                NetHandler {
                    handler: "hull".into(),
                    node_to_pod_mbit: vec![450.0],
                    pod_to_node_mbit: vec![],
                    rtt_us: (1..=100).map(|v| f64::from(v) * 3.0).collect(),
                    errors: vec!["pod->node transfer: reset".into()],
                },
            ],
        }
    }

    #[test]
    fn section_has_both_handlers_and_the_ratios() {
        let md = section(Some(&data()), None);
        assert!(md.contains("| figure | runc | hull | hull/runc |"), "{md}");
        assert!(md.contains("| 900.0 | 450.0 | 0.50x |"), "{md}");
        assert!(md.contains("| 600.0 | no data | n/a |"), "{md}");
        assert!(md.contains("| 50.5 | 151.5 | 3.00x |"), "{md}");
        assert!(md.contains("| 95.0 | 285.0 | 3.00x |"), "{md}");
        assert!(md.contains("- error, hull: pod->node transfer: reset"));
    }

    #[test]
    fn section_without_data_says_why() {
        let md = section(None, Some("HULL_BENCH_NET=0"));
        assert!(md.contains("not measured in this run: HULL_BENCH_NET=0"));
    }

    #[test]
    fn plots_are_svg() {
        let p = plots(&data(), true);
        assert_eq!(p.len(), 2);
        assert!(p
            .iter()
            .all(|(_, s)| s.starts_with("<svg") && s.contains("(lab)")));
    }
}
