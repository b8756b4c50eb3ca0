//! Logs: `tracing` lines on stderr (the serial console in the guest) and,
//! when the kernel command line has `hull.log_port=PORT`, on a vsock stream
//! the agent dials to that host port.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Kernel command-line key naming the host vsock port for the log stream.
pub const LOG_PORT_KEY: &str = "hull.log_port=";

/// The default log level: `debug` when the kernel command line carries
/// [`hull_protocol::vm::DEBUG_CMDLINE_WORD`] (the shim's `debug = true`), else `info`.
pub fn level(cmdline: &str) -> &'static str {
    if hull_protocol::vm::cmdline_wants_debug(cmdline) {
        "debug"
    } else {
        "info"
    }
}

/// Writes every log line to stderr and, if connected, to the vsock stream.
#[derive(Clone, Default)]
pub struct Sink {
    stream: Option<Arc<Mutex<std::fs::File>>>,
}

impl Sink {
    /// Dials the log port if the kernel command line names one.
    pub fn from_cmdline(cmdline: &str) -> (Sink, Option<String>) {
        let Some(port) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(LOG_PORT_KEY))
        else {
            return (Sink::default(), None);
        };
        match port
            .parse()
            .map_err(|_| nix::Error::EINVAL)
            .and_then(crate::stdio::dial_vsock)
        {
            Ok(fd) => (
                Sink {
                    stream: Some(Arc::new(Mutex::new(fd.into()))),
                },
                None,
            ),
            Err(e) => (
                Sink::default(),
                Some(format!("log stream to vsock port {port}: {e}")),
            ),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(stream) = &self.stream {
            // A host that stopped reading must not stop the agent: drop the line.
            let _ = stream.lock().map(|mut s| s.write_all(buf));
        }
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_word_sets_the_level() {
        let cmdline = hull_protocol::vm::guest_cmdline(true);
        assert_eq!(level(&cmdline), "debug");
        assert_eq!(level(&hull_protocol::vm::guest_cmdline(false)), "info");
        assert_eq!(level(""), "info");
    }

    #[test]
    fn no_port_no_stream() {
        let (sink, err) = Sink::from_cmdline("console=ttyS0 quiet");
        assert!(sink.stream.is_none() && err.is_none());
        let (sink, err) = Sink::from_cmdline("hull.log_port=notanumber");
        assert!(sink.stream.is_none());
        assert!(err.unwrap().contains("notanumber"));
    }
}
