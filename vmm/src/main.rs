//! `hull-vmm` command line: parse, build, run, exit with a documented status.

use hull_protocol::error::chain;
use hull_vmm::builder;
use hull_vmm::config::{self, Command};
use hull_vmm::exit::EXIT_USAGE;

/// The filter of `"debug": true`: everything at debug level but the vsock
/// device's per-packet lines, which would spend the pod's log budget in the
/// shim (`HULL_LOG=debug` shows them too).
const DEBUG_FILTER: &str = "debug,hull_vmm::devices::virtio::vsock=info";

/// Logs on stderr: `HULL_LOG` if set, else [`DEBUG_FILTER`] with `"debug": true`
/// in the VM config, else warn.
fn init_logs(debug: bool) {
    let level = if debug { DEBUG_FILTER } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!(
            "hull-vmm {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("HULL_COMMIT")
        );
        return;
    }
    let cfg = match config::parse_args(&args) {
        Ok(Command::Help) => {
            print!("{}", config::help());
            return;
        }
        Ok(Command::Run(cfg)) => cfg,
        Err(e) => {
            eprintln!("hull-vmm: {}", chain(&e));
            std::process::exit(EXIT_USAGE);
        }
    };
    init_logs(cfg.debug);
    tracing::debug!(config = ?cfg, "hull-vmm debug logging on");
    // A jailed VMM gets a PID namespace of its own first: it must fork before KVM is opened.
    if cfg.jail.is_some() {
        if let Err(e) = hull_vmm::jail::enter_pid_namespace() {
            eprintln!("hull-vmm: {}", chain(&e));
            std::process::exit(hull_vmm::exit::EXIT_VMM_ERROR);
        }
    }
    let vmm = match builder::build(&cfg) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("hull-vmm: {}", chain(&e));
            std::process::exit(e.exit_code());
        }
    };
    // no_new_privs, rlimits and the jail (the VM is built: every file is open) before the
    // seccomp filters, which `run_with` installs.
    if let Err(e) = hull_vmm::jail::confine(&cfg) {
        eprintln!("hull-vmm: {}", chain(&e));
        std::process::exit(hull_vmm::exit::EXIT_VMM_ERROR);
    }
    let reason = vmm.run_with(true);
    if let hull_vmm::exit::ExitReason::GuestCrash(ref why)
    | hull_vmm::exit::ExitReason::VmmError(ref why) = reason
    {
        eprintln!("hull-vmm: {why}");
    }
    let code = reason.code();
    std::process::exit(code);
}
