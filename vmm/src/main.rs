//! `hull-vmm` command line: parse, build, run, exit with a documented status.

use hull_vmm::builder;
use hull_vmm::config::{self, Command};
use hull_vmm::exit::EXIT_USAGE;

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn main() {
    init_logs();
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
            print!("{}", config::HELP);
            return;
        }
        Ok(Command::Run(cfg)) => cfg,
        Err(e) => {
            eprintln!("hull-vmm: {}", error_chain(&e));
            std::process::exit(EXIT_USAGE);
        }
    };
    let vmm = match builder::build(&cfg) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("hull-vmm: {}", error_chain(&e));
            std::process::exit(e.exit_code());
        }
    };
    let reason = vmm.run_with(true);
    if let hull_vmm::exit::ExitReason::GuestCrash(ref why)
    | hull_vmm::exit::ExitReason::VmmError(ref why) = reason
    {
        eprintln!("hull-vmm: {why}");
    }
    let code = reason.code();
    std::process::exit(code);
}
