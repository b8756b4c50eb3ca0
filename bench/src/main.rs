//! `hull-bench`: the benchmark driver (see bench/README.md; `make bench` runs it).
//!
//! usage: hull-bench run --out DIR --checkout DIR --image-tar TAR [--work DIR]
//!                       [--shim-dir DIR --hull-vmm BIN --kernel VMLINUX --initrd IMG --virtiofsd BIN]
//!        hull-bench render DIR      re-render report.md, data.csv and the plots from DIR/data.json
//!                                   (and DIR/whole-command.txt, DIR/network.json,
//!                                   DIR/boot.json and their notes when there)
//!
//! Run counts come from HULL_BENCH_* variables (bench/README.md); HULL_BENCH_REQUIRE_HULL=1
//! makes a run without Hull figures exit 2; leftovers after the run exit 3.

mod driver;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn value(args: &[String], name: &str) -> Option<PathBuf> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let need = |n: &str| value(&args, n).with_context(|| format!("{n} is required"));
            let paths = driver::Paths {
                out: need("--out")?,
                checkout: need("--checkout")?,
                image_tar: need("--image-tar")?,
                work: value(&args, "--work").unwrap_or_else(|| PathBuf::from("/run/hull-bench")),
                shim_dir: value(&args, "--shim-dir"),
                kernel: value(&args, "--kernel"),
                initrd: value(&args, "--initrd"),
                hull_vmm: value(&args, "--hull-vmm"),
                virtiofsd: value(&args, "--virtiofsd"),
            };
            let data = driver::run(paths)?;
            let require = std::env::var("HULL_BENCH_REQUIRE_HULL").is_ok_and(|v| v == "1");
            let code = driver::exit_code(&data, require);
            match code {
                2 => eprintln!("hull-bench: HULL_BENCH_REQUIRE_HULL=1 and Hull produced no figures (see the report)"),
                3 => eprintln!("hull-bench: pod machinery was left running: {}", data.leftovers.join("; ")),
                _ => {}
            }
            std::process::exit(code);
        }
        Some("render") => {
            let dir = value(&args, "render").context("usage: hull-bench render DIR")?;
            let text = std::fs::read_to_string(dir.join("data.json")).with_context(|| format!("read {}/data.json", dir.display()))?;
            let mut data: hull_bench::model::RunData =
                serde_json::from_str(&text).context("parse data.json")?;
            if let Ok(w) = std::fs::read_to_string(dir.join("whole-command.txt")) {
                data.whole_command = Some(w);
            }
            if let Ok(net) = std::fs::read_to_string(dir.join("network.json")) {
                data.network = Some(serde_json::from_str(&net).context("parse network.json")?);
            }
            if let Ok(note) = std::fs::read_to_string(dir.join("network-note.txt")) {
                data.network_note = Some(note.trim().to_string());
            }
            if let Ok(boot) = std::fs::read_to_string(dir.join("boot.json")) {
                data.boot = Some(serde_json::from_str(&boot).context("parse boot.json")?);
            }
            if let Ok(note) = std::fs::read_to_string(dir.join("boot-note.txt")) {
                data.boot_note = Some(note.trim().to_string());
            }
            driver::write_results(&dir, &data)
        }
        _ => bail!("usage: hull-bench run --out DIR --checkout DIR --image-tar TAR [...] | hull-bench render DIR (see bench/README.md)"),
    }
}
