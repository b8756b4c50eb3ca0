//! `start`: find or spawn the shim that serves this container's pod, write
//! `<bundle>/address`, and print only that address.

use std::io::Write;
use std::os::unix::net::UnixStream;

use anyhow::Context;
use containerd_shim::{Flags, StartOpts};

use super::{sandbox_id, socket_path, write_address};

/// Runs the `start` subcommand (the current directory is the bundle).
pub fn run(flags: &Flags) -> anyhow::Result<()> {
    let bundle = std::env::current_dir().context("current directory")?;
    let grouping = sandbox_id(&bundle, &flags.id);
    let opts = StartOpts {
        id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        address: flags.address.clone(),
        publish_binary: flags.publish_binary.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = opts.socket_address(&grouping);
    // A container of a pod that already has a shim reuses it.
    if UnixStream::connect(socket_path(&address)).is_err() {
        let (_pid, spawned) =
            containerd_shim::spawn(opts, &grouping, Vec::new()).context("spawn the shim server")?;
        anyhow::ensure!(
            spawned == address,
            "shim address mismatch: {spawned} != {address}"
        );
    }
    write_address(&address)?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .context("print the address")?;
    Ok(())
}
