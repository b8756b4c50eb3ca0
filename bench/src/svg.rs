//! Hand-written SVG plots: start latency distribution, memory per pod, and
//! grouped bars (the pod network figures).

use crate::stats::summarize;

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 80.0;
const COLORS: &[&str] = &["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];

/// One runtime's series; `note` replaces the plot for it when there are no samples.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub samples: Vec<f64>,
    pub note: Option<String>,
}

/// One runtime's memory bar: overhead and guest RAM, MiB.
#[derive(Debug, Clone)]
pub struct Bar {
    pub name: String,
    pub overhead_mib: f64,
    pub guest_mib: f64,
    pub note: Option<String>,
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis top and tick step for values up to `max`.
pub fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn header(title: &str, out: &mut String) {
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        W / 2.0,
        escape(title)
    ));
}

/// Centred lines of small text from `y` down.
fn text_lines(out: &mut String, cx: f64, y: f64, fill: &str, lines: &[String]) {
    for (i, l) in lines.iter().enumerate() {
        out.push_str(&format!(
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{fill}\">{}</text>\n",
            y + 13.0 * i as f64,
            escape(l)
        ));
    }
}

/// Splits `text` into at most `max_lines` lines of about `width` characters, at spaces.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.chars().take(width).collect()),
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        lines[max_lines - 1].push_str("...");
    }
    lines
}

fn short(note: &str) -> String {
    let s: String = note.chars().take(110).collect();
    if note.chars().count() > 110 {
        format!("{s}...")
    } else {
        s
    }
}

/// The vertical value axis of a plot whose largest value is `max`: grid lines with their
/// values, and `unit` along the side. Returns where a value goes (its y).
fn value_axis(out: &mut String, max: f64, unit: &str) -> impl Fn(f64) -> f64 {
    let (top, step) = nice_axis(max);
    let plot_h = H - TOP - BOTTOM;
    let y = move |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        ));
        v += step;
    }
    out.push_str(&format!(
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>\n",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(unit)
    ));
    y
}

/// Start latency: every sample as a dot, the median as a bar, per runtime.
pub fn start_latency(title: &str, unit: &str, series: &[Series]) -> String {
    let mut out = String::new();
    header(title, &mut out);
    let max = series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .fold(0.0, f64::max);
    let y = value_axis(&mut out, max, unit);
    let col_w = (W - LEFT - RIGHT) / series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let cx = LEFT + col_w * (i as f64 + 0.5);
        let color = COLORS[i % COLORS.len()];
        out.push_str(&format!(
            "<text x=\"{cx:.1}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            H - BOTTOM + 20.0,
            escape(&s.name)
        ));
        match summarize(&s.samples) {
            Some(sum) => {
                for (k, val) in s.samples.iter().enumerate() {
                    let jitter = (k as f64 - (s.samples.len() as f64 - 1.0) / 2.0) * 6.0;
                    out.push_str(&format!(
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\" fill-opacity=\"0.7\"><title>{val:.3} {}</title></circle>\n",
                        cx + jitter,
                        y(*val),
                        escape(unit)
                    ));
                }
                out.push_str(&format!(
                    "<line class=\"median\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{m:.1}\" y2=\"{m:.1}\" stroke=\"black\" stroke-width=\"2\"/>\n",
                    cx - col_w * 0.3,
                    cx + col_w * 0.3,
                    m = y(sum.median)
                ));
                let lines = [
                    format!("median {:.2}", sum.median),
                    format!("p95 {:.2}, n={}", sum.p95, sum.n),
                ];
                text_lines(&mut out, cx, H - BOTTOM + 36.0, "black", &lines);
            }
            None => {
                let note = format!(
                    "no data: {}",
                    short(s.note.as_deref().unwrap_or("not measured"))
                );
                let width = ((col_w / 6.5) as usize).max(12);
                text_lines(
                    &mut out,
                    cx,
                    H - BOTTOM + 32.0,
                    "#b00",
                    &wrap(&note, width, 4),
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Memory per idle pod: stacked horizontal bars (overhead, guest RAM).
pub fn memory(title: &str, bars: &[Bar]) -> String {
    let mut out = String::new();
    header(title, &mut out);
    let max = bars
        .iter()
        .map(|b| b.overhead_mib + b.guest_mib)
        .fold(0.0, f64::max);
    let (top, step) = nice_axis(max);
    let left = 90.0;
    let plot_w = W - left - RIGHT - 10.0;
    let x = |v: f64| left + plot_w * v / top;
    let rows = bars.len().max(1) as f64;
    let row_h = (H - TOP - BOTTOM) / rows;
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        out.push_str(&format!(
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{v}</text>\n",
            H - BOTTOM,
            H - BOTTOM + 16.0,
            x = x(v)
        ));
        v += step;
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">MiB PSS per idle pod</text>\n",
        left + plot_w / 2.0,
        H - BOTTOM + 34.0
    ));
    for (i, b) in bars.iter().enumerate() {
        let y0 = TOP + row_h * i as f64 + row_h * 0.2;
        let h = row_h * 0.6;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"bold\">{}</text>\n",
            left - 8.0,
            y0 + h / 2.0 + 4.0,
            escape(&b.name)
        ));
        if let Some(note) = &b.note {
            let lines = wrap(&format!("no data: {}", short(note)), 80, 2);
            for (k, l) in lines.iter().enumerate() {
                out.push_str(&format!(
                    "<text x=\"{left}\" y=\"{:.1}\" font-size=\"11\" fill=\"#b00\">{}</text>\n",
                    y0 + h / 2.0 + 13.0 * k as f64,
                    escape(l)
                ));
            }
            continue;
        }
        let total = b.overhead_mib + b.guest_mib;
        out.push_str(&format!(
            "<rect class=\"overhead\" x=\"{left}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>overhead {:.1} MiB</title></rect>\n",
            x(b.overhead_mib) - left,
            COLORS[0],
            b.overhead_mib
        ));
        if b.guest_mib > 0.0 {
            out.push_str(&format!(
                "<rect class=\"guest\" x=\"{:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>guest RAM {:.1} MiB</title></rect>\n",
                x(b.overhead_mib),
                x(total) - x(b.overhead_mib),
                COLORS[1],
                b.guest_mib
            ));
        }
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{total:.1} MiB</text>\n",
            x(total) + 4.0,
            y0 + h / 2.0 + 4.0
        ));
    }
    out.push_str(&format!(
        "<rect x=\"{left}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">host processes (shim, VMM, virtiofsd, container)</text>\n\
         <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">guest RAM touched</text>\n",
        H - 22.0,
        COLORS[0],
        left + 14.0,
        H - 13.0,
        left + 330.0,
        H - 22.0,
        COLORS[1],
        left + 344.0,
        H - 13.0
    ));
    out.push_str("</svg>\n");
    out
}

/// Grouped vertical bars: one group per `groups` label, one bar per series
/// (a runtime) in each, its value printed on top; `None` leaves a gap marked "no data".
pub fn grouped_bars(
    title: &str,
    unit: &str,
    groups: &[&str],
    series: &[(String, Vec<Option<f64>>)],
) -> String {
    let mut out = String::new();
    header(title, &mut out);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(0.0, f64::max);
    let y = value_axis(&mut out, max, unit);
    let group_w = (W - LEFT - RIGHT) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.7 / series.len().max(1) as f64;
    for (g, label) in groups.iter().enumerate() {
        let gx = LEFT + group_w * g as f64 + group_w * 0.15;
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            LEFT + group_w * (g as f64 + 0.5),
            H - BOTTOM + 20.0,
            escape(label)
        ));
        for (i, (_, values)) in series.iter().enumerate() {
            let x = gx + bar_w * i as f64;
            let cx = x + bar_w / 2.0;
            match values.get(g).copied().flatten() {
                Some(val) => {
                    out.push_str(&format!(
                        "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{val:.1} {}</title></rect>\n",
                        y(val),
                        bar_w * 0.9,
                        y(0.0) - y(val),
                        COLORS[i % COLORS.len()],
                        escape(unit)
                    ));
                    text_lines(&mut out, cx, y(val) - 4.0, "black", &[format!("{val:.1}")]);
                }
                None => text_lines(&mut out, cx, y(0.0) - 4.0, "#b00", &["no data".into()]),
            }
        }
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let x = LEFT + 120.0 * i as f64;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            H - 40.0,
            COLORS[i % COLORS.len()],
            x + 14.0,
            H - 31.0,
            escape(name)
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces_and_caps_the_lines() {
        assert_eq!(wrap("aa bb cc", 5, 3), vec!["aa bb", "cc"]);
        assert_eq!(wrap("a b c d", 1, 2), vec!["a", "b..."]);
    }

    #[test]
    fn nice_axis_rounds_up() {
        assert_eq!(nice_axis(43.0), (50.0, 10.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
    }

    #[test]
    fn start_plot_has_a_dot_per_sample_a_median_and_a_note_for_missing_data() {
        let svg = start_latency(
            "start",
            "s",
            &[
                Series {
                    name: "runc".into(),
                    samples: vec![20.0, 25.0, 31.0],
                    note: None,
                },
                Series {
                    name: "hull".into(),
                    samples: vec![],
                    note: Some("ctr run failed: <EINVAL>".into()),
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("class=\"median\"").count(), 1);
        assert!(svg.contains("no data: ctr run failed:"));
        assert!(svg.contains("&lt;EINVAL&gt;"));
        assert!(svg.contains(">runc<") && svg.contains(">hull<"));
    }

    #[test]
    fn memory_plot_stacks_guest_ram_on_overhead() {
        let svg = memory(
            "memory",
            &[
                Bar {
                    name: "runc".into(),
                    overhead_mib: 6.0,
                    guest_mib: 0.0,
                    note: None,
                },
                Bar {
                    name: "hull".into(),
                    overhead_mib: 20.0,
                    guest_mib: 40.0,
                    note: None,
                },
                Bar {
                    name: "crun".into(),
                    overhead_mib: 0.0,
                    guest_mib: 0.0,
                    note: Some("not installed".into()),
                },
            ],
        );
        assert_eq!(svg.matches("class=\"overhead\"").count(), 2);
        assert_eq!(svg.matches("class=\"guest\"").count(), 1);
        assert!(svg.contains("60.0 MiB") && svg.contains("no data: not installed"));
    }

    #[test]
    fn grouped_bars_draw_a_bar_per_value_and_mark_gaps() {
        let svg = grouped_bars(
            "net",
            "Mbit/s",
            &["node to pod", "pod to node"],
            &[
                ("runc".into(), vec![Some(800.0), Some(700.0)]),
                ("hull".into(), vec![Some(200.0), None]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert!(svg.contains(">800.0<") && svg.contains("no data"));
        assert!(svg.contains(">runc<") && svg.contains(">node to pod<"));
    }
}
