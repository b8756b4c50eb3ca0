//! Logs of the serving shim go to containerd's `log` FIFO in the bundle, through `tracing`.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` output to the `log` FIFO in the current directory, or to
/// stderr when there is none (a shim started by hand).
pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => builder.with_writer(Mutex::new(fifo)).init(),
        Err(_) => builder.with_writer(std::io::stderr).init(),
    }
}
