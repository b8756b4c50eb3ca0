//! `hull-check`: can this node run Hull? (the node check), and `hull-check bundle`:
//! a diagnostics archive for a bug report. See `--help`.

use std::path::PathBuf;

use anyhow::Context;
use containerd_shim_hull_v2::config::Config;
use hull_tools::args::{self, ArgsError};
use hull_tools::{bundle, check};

const HELP: &str = "\
hull-check: can this node run Hull pods?

usage:
  hull-check [--config PATH] [--containerd-config PATH]
      one line per check: `ok ...`, `warn ... : what to do`, `FAIL ... : what to do`;
      exit status 1 if any check failed, 0 otherwise
  hull-check bundle [--pod ID] [--log FILE] [--out FILE.tar.gz] [--config PATH]
                    [--containerd-config PATH]
      collect a diagnostics archive for one pod (or the node): config, versions,
      the node check, the pod's state directory listing, its host processes and
      VMM figures, its lines from containerd's log (journalctl -u containerd, or
      FILE); no environment values, no container data
  hull-check --version

--config defaults to $HULL_CONFIG, then /etc/hull/config.toml (as the shim);
--containerd-config to /etc/containerd/config.toml.
";

#[derive(Default)]
struct Args {
    bundle: bool,
    host: check::Host,
    opts: bundle::Options,
}

fn parse(args: &[String]) -> Result<Option<Args>, ArgsError> {
    let mut out = Args::default();
    let run = args::parse("hull-check", HELP, args, |arg, rest| {
        match arg {
            "bundle" if !out.bundle => out.bundle = true,
            "--config" => out.host.hull_config = Some(PathBuf::from(rest.value()?)),
            "--containerd-config" => out.host.containerd_config = PathBuf::from(rest.value()?),
            "--pod" if out.bundle => out.opts.pod = Some(rest.value()?.clone()),
            "--log" if out.bundle => out.opts.log = Some(PathBuf::from(rest.value()?)),
            "--out" if out.bundle => out.opts.out = PathBuf::from(rest.value()?),
            _ => return Err(rest.unknown()),
        }
        Ok(())
    })?;
    Ok(run.then_some(out))
}

/// `--version` lines of Hull's binaries, containerd and virtiofsd.
fn versions(config: &Config) -> String {
    let mut out = format!("{}\n", hull_tools::version_line("hull-check"));
    let mut programs: Vec<PathBuf> = vec![config.hull_vmm.clone(), config.virtiofsd.clone()];
    programs.extend(check::which("containerd-shim-hull-v2"));
    programs.extend(check::which("containerd"));
    for program in programs {
        let line = check::first_line(&program, &["--version"]).unwrap_or_else(|e| e);
        out.push_str(&format!("{}: {line}\n", program.display()));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.push_str(&format!("host kernel: {}\n", kernel.trim()));
    out
}

fn run() -> anyhow::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(args) = parse(&args)? else {
        return Ok(0);
    };
    let findings = check::run(&args.host);
    let report: String = findings.iter().map(|f| format!("{f}\n")).collect();
    if !args.bundle {
        print!("{report}");
        return Ok(i32::from(check::failed(&findings)));
    }
    let config_path = check::hull_config_path(args.host.hull_config.as_deref());
    let config = Config::load(args.host.hull_config.as_deref())
        .with_context(|| format!("load {}", config_path.display()))?;
    let mut opts = args.opts;
    if opts.out.as_os_str().is_empty() {
        let name = opts.pod.as_deref().unwrap_or("node");
        opts.out = PathBuf::from(format!("hull-bundle-{name}.tar.gz"));
    }
    let node = bundle::Node {
        config_path,
        run_dir: config.run_dir.clone(),
        check: report,
        versions: versions(&config),
    };
    let pods = bundle::create(&opts, &node)?;
    println!(
        "wrote {} ({} pod{})",
        opts.out.display(),
        pods.len(),
        if pods.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull-check: {e:#}");
            std::process::exit(2);
        }
    }
}
