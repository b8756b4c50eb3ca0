//! `containerd-shim-hull-v2`: the containerd shim v2 of Hull. containerd runs it
//! with `start` (spawn or reuse the pod's shim), `delete` (clean up after a dead
//! shim), no action (serve the Task API), `-info` (describe the runtime, as
//! containerd 2.x asks) or `-v`/`-version`/`--version`.

mod backend;
mod shim;
mod task;

/// The configuration lives in the library, shared with Hull's tools.
use containerd_shim_hull_v2::config;

use anyhow::{bail, Context};

fn main() {
    if let Err(e) = run() {
        eprintln!("containerd-shim-hull-v2: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).context("parse arguments")?;
    if flags.version {
        println!(
            "containerd-shim-hull-v2 {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("HULL_COMMIT")
        );
        return Ok(());
    }
    if flags.info {
        return shim::info::run();
    }
    if flags.namespace.is_empty() {
        bail!("-namespace is required");
    }
    match flags.action.as_str() {
        "start" => shim::start::run(&flags),
        "delete" => shim::cleanup::run(&flags),
        "" => shim::serve::run(&flags),
        other => bail!("unknown action {other:?} (expected start, delete or none)"),
    }
}
