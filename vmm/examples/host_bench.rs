//! Host-side VMM cost, no Linux guest needed (runs on a PVM host too): for a 128 MiB guest
//! running the tiny PVH test image, the time and CPU from `hull-vmm` process start until the
//! guest's first output byte (i.e. past the first KVM_RUN and the first exit), and the VMM's
//! private resident memory beyond guest RAM.
//!
//! Run: `cargo run --release -p hull-vmm --example host_bench [RUNS]`

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU seconds used by every thread of `pid` (from schedstat, nanosecond resolution).
fn cpu_seconds(pid: u32) -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// (private KiB outside guest RAM, guest RAM resident KiB, total RSS KiB) of `pid`.
fn memory_kib(pid: u32) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut private, mut guest, mut rss) = (0, 0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or("");
        if !key.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            in_guest = line.contains("hull-guest-ram");
            continue;
        }
        let kib: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "Rss:" if in_guest => guest += kib,
            "Rss:" => rss += kib,
            "Private_Clean:" | "Private_Dirty:" if !in_guest => private += kib,
            _ => {}
        }
    }
    (private, guest, rss + guest)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let vmm = std::env::var("HULL_VMM").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("hull-vmm")
            .display()
            .to_string()
    });
    let image = std::env::temp_dir().join(format!("hull-bench-image-{}", std::process::id()));
    std::fs::write(&image, hull_vmm::test_image::pvh_halt_image()).unwrap();
    let (mut wall, mut cpu, mut private, mut guest, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = Command::new(&vmm)
            .args([
                "--allow-pvm",
                "--memory",
                "128",
                "--console",
                "stdout",
                "--kernel",
            ])
            .arg(&image)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run hull-vmm (build it with cargo build --release -p hull-vmm)");
        let mut byte = [0u8; 1];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut byte)
            .unwrap();
        wall.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(byte[0], hull_vmm::test_image::MARKER);
        let pid = child.id();
        cpu.push(cpu_seconds(pid) * 1000.0);
        let (p, g, r) = memory_kib(pid);
        private.push(p as f64);
        guest.push(g as f64);
        rss.push(r as f64);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        child.wait().unwrap();
    }
    let _ = std::fs::remove_file(&image);
    println!("hull-vmm host cost, 128 MiB guest, tiny PVH image, {runs} runs (medians)");
    println!(
        "  process start -> first guest output (after first KVM_RUN): {:.2} ms wall",
        median(&mut wall)
    );
    println!(
        "  CPU used by the VMM until then (all threads, schedstat):   {:.1} ms",
        median(&mut cpu)
    );
    println!(
        "  private RSS beyond guest RAM:                              {:.0} KiB",
        median(&mut private)
    );
    println!(
        "  guest RAM resident (touched by loading + guest):           {:.0} KiB",
        median(&mut guest)
    );
    println!(
        "  total RSS:                                                 {:.0} KiB",
        median(&mut rss)
    );
}
