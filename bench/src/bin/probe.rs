//! `hull-bench-probe`: the static program the benchmark runs inside each container.
//!
//! usage: hull-bench-probe serve                      print "ready", then idle until killed
//!        hull-bench-probe all [--vol DIR] [--loop-ms N] [--seq-mib N] [--small N] [--blast-mib N]
//!                                                    cost figures + isolation probes as one
//!                                                    JSON line, then a stdout blast
//!        hull-bench-probe isolation [--privileged]   isolation probes only (no syscall scan)
//!        hull-bench-probe serve-net [--port N]       the pod network benchmark's TCP server
//!                                                    (discard, source, echo; see hull_bench::net)
//!        hull-bench-probe crash                      write 'c' to /proc/sysrq-trigger: panics
//!                                                    the kernel under the container (only ever
//!                                                    run by the driver for Hull, on request)

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hull_bench::inside::{inspect, syscalls, work};
use hull_bench::probe_data::ProbeOutput;

fn flag_value(args: &[String], name: &str) -> Result<Option<String>> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .cloned()
            .map(Some)
            .with_context(|| format!("{name} needs a value")),
        None => Ok(None),
    }
}

fn number(args: &[String], name: &str, default: u32) -> Result<u32> {
    flag_value(args, name)?
        .map(|v| {
            v.parse()
                .with_context(|| format!("{name} {v}: not a number"))
        })
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn print_json(out: &ProbeOutput) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(out)?)?;
    stdout.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            println!("ready");
            std::io::stdout().flush()?;
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
        Some("serve-net") => {
            let port = number(&args, "--port", hull_bench::net::PORT.into())?;
            let port = u16::try_from(port).with_context(|| format!("--port {port}"))?;
            hull_bench::net::serve(port).context("serve-net")
        }
        Some("all") => {
            let plan = work::Plan {
                loop_time: Duration::from_millis(number(&args, "--loop-ms", 1000)?.into()),
                seq_mib: number(&args, "--seq-mib", 32)?,
                small_files: number(&args, "--small", 300)?,
            };
            let vol = flag_value(&args, "--vol")?.map(PathBuf::from);
            let work = work::measure(&PathBuf::from("/tmp/hull-bench"), vol.as_deref(), &plan);
            let mut iso = inspect::inspect(false);
            iso.syscalls = Some(syscalls::scan(Duration::from_secs(2)).context("syscall scan")?);
            print_json(&ProbeOutput {
                work: Some(work),
                isolation: Some(iso),
            })?;
            work::blast(u64::from(number(&args, "--blast-mib", 32)?) << 20).context("stdout blast")
        }
        Some("isolation") => print_json(&ProbeOutput {
            work: None,
            isolation: Some(inspect::inspect(args.iter().any(|a| a == "--privileged"))),
        }),
        Some("crash") => {
            println!("crashing the kernel under this container through /proc/sysrq-trigger");
            std::io::stdout().flush()?;
            std::fs::write("/proc/sysrq-trigger", "c").context("write /proc/sysrq-trigger")?;
            bail!("the kernel did not crash")
        }
        _ => bail!(
            "usage: hull-bench-probe serve|serve-net|all|isolation|crash (see the source's header)"
        ),
    }
}
