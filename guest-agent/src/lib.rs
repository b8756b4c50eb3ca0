//! `hull-agent`: the guest's `/init`, and the container engine inside it.
//!
//! Usage:
//!   hull-agent [--listen unix:/path | vsock:PORT] [--containers-root DIR]
//!              [--cgroup-root DIR] [--state-dir DIR]
//!   hull-agent --version
//!
//! As PID 1 it mounts the guest's filesystems, starts serving on vsock port
//! 1024 and prints the ready marker
//! (`HULL_AGENT_READY uptime=<secs> init_start=<secs> listen=<addr>`, both
//! times from /proc/uptime); with `hull.selftest=ready` on the kernel command
//! line it then powers off at once (printing `error="..."` instead of
//! `listen=` if the server could not start). As a normal process (host tests) it serves on the given
//! socket and leaves guest-wide settings (hostname, mounts) alone.
//!
//! Kernel command-line words read as PID 1: `hull.selftest=ready` (see above)
//! and `hull.log_port=PORT` (also send logs on a vsock stream to that host port),
//! `hull.containers_root=DIR` (rootfs paths must lie under DIR instead of
//! /run/hull/shared).
//! `hull.debug=1` (`hull_protocol::vm::DEBUG_CMDLINE_WORD`, set by the shim
//! for `debug = true`) turns on debug logs.
//! `HULL_AGENT_LOG` sets the log filter (default `info`, `debug` with `hull.debug=1`).
//!
//! The binary (`main.rs`) only calls [`main`]; the library exists so the fuzz
//! targets in `guest-agent/fuzz/` reach [`checks`], the agent's own checks and
//! translations of a request made before any system call.

mod cgroup;
mod channel;
pub mod checks;
mod container;
mod guest_stats;
mod init;
mod logging;
mod netlink;
mod network;
mod oom;
mod paths;
mod pidfd;
mod reaper;
mod rpc;
mod sandbox;
mod server;
mod setup;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::sandbox::{Config, Sandbox};

/// Kernel command-line key overriding the guest's containers root.
const CONTAINERS_ROOT_KEY: &str = "hull.containers_root=";

struct Args {
    listen: String,
    config: Config,
}

/// As PID 1 the arguments come from the kernel (stray command-line words), so
/// they are ignored; `hull.containers_root=DIR` on the command line moves the
/// containers root (guest tests with a rootfs inside the initramfs).
fn guest_args(cmdline: &str) -> Args {
    let mut args = default_args(true);
    if let Some(dir) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(CONTAINERS_ROOT_KEY))
    {
        args.config.containers_root = dir.into();
    }
    args
}

fn default_args(guest: bool) -> Args {
    Args {
        listen: format!("vsock:{}", hull_protocol::AGENT_PORT),
        config: Config {
            containers_root: PathBuf::from(sandbox::SHARED_DIR),
            cgroup_root: PathBuf::from("/sys/fs/cgroup/hull"),
            state_dir: PathBuf::from("/run/hull"),
            guest,
        },
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = default_args(false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--containers-root" => args.config.containers_root = value()?.into(),
            "--cgroup-root" => args.config.cgroup_root = value()?.into(),
            "--state-dir" => args.config.state_dir = value()?.into(),
            other => bail!("unknown argument {other:?}; see the usage in the source header"),
        }
    }
    Ok(args)
}

fn run() -> anyhow::Result<()> {
    let pid1 = std::process::id() == 1;
    if pid1 {
        init::leave_initramfs().context("move the root off the initramfs")?;
        init::mount_all().context("mount the guest filesystems")?;
    }
    let started = init::uptime();
    init::ensure_stdio();
    let cmdline = if pid1 {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    };
    let (sink, log_error) = logging::Sink::from_cmdline(&cmdline);
    tracing_subscriber::fmt()
        .with_writer(sink)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_AGENT_LOG")
                .unwrap_or_else(|_| logging::level(&cmdline).into()),
        )
        .init();
    if let Some(e) = log_error {
        tracing::warn!(error = %e, "logging to the console only");
    }
    tracing::debug!(cmdline = %cmdline.trim(), "hull-agent debug logging on");
    let args = if pid1 {
        guest_args(&cmdline)
    } else {
        parse_args()?
    };
    if !pid1 {
        reaper::become_subreaper().context("become a child subreaper")?;
    }
    if !init::is_cgroup2(std::path::Path::new("/sys/fs/cgroup")) {
        tracing::warn!("/sys/fs/cgroup is not cgroup v2: container limits will fail");
    }
    reaper::reaper();
    let sandbox = Arc::new(Sandbox::new(args.config).context("prepare the sandbox")?);
    let selftest = pid1 && init::cmdline_has(init::SELFTEST_READY);
    let (_server, status) = match server::start(&args.listen, sandbox) {
        Ok(server) => (Some(server), format!("listen={}", args.listen)),
        // The boot self-test still reports (and powers off) without a server.
        Err(e) if selftest => (None, format!("error=\"{:#}\"", anyhow::Error::from(e))),
        Err(e) => return Err(e).context("start the API server"),
    };
    init::print_ready(started, &status);
    if selftest {
        init::power_off();
    }
    loop {
        std::thread::park();
    }
}

/// The agent's entry point: the setup helper (`__setup`), `--version`, or the agent.
pub fn main() {
    if std::env::args().nth(1).as_deref() == Some(setup::SETUP_ARG) {
        setup::main();
    }
    if std::process::id() != 1 && std::env::args().nth(1).as_deref() == Some("--version") {
        println!(
            "hull-agent {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("HULL_COMMIT")
        );
        return;
    }
    if let Err(e) = run() {
        eprintln!("hull-agent: {e:#}");
        if std::process::id() == 1 {
            init::power_off();
        }
        std::process::exit(1);
    }
}
