//! `containerd-shim-hull-v2`: the containerd shim v2 of Hull. containerd runs it
//! with `start` (spawn or reuse the pod's shim), `delete` (clean up after a dead
//! shim), or no action (serve the Task API).

mod backend;
mod config;
mod shim;
mod task;

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
        println!("containerd-shim-hull-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
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
