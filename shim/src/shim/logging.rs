//! Logs of the serving shim go to containerd's `log` FIFO in the bundle, through
//! `tracing`; every line carries the pod's sandbox id (one shim serves one pod).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Prefixes each formatted event (one `write` per event) with the sandbox id.
struct Tagged<W> {
    tag: String,
    out: Mutex<W>,
}

impl<W: Write> Write for &Tagged<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(self.tag.as_bytes())?;
        out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// Sends `tracing` output to the `log` FIFO in the current directory, or to
/// stderr when there is none (a shim started by hand).
pub fn init(debug: bool, sandbox_id: &str) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let tag = format!("sandbox={sandbox_id} ");
    let out: Box<dyn Write + Send> = match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => Box::new(fifo),
        Err(_) => Box::new(std::io::stderr()),
    };
    let writer: &'static Tagged<Box<dyn Write + Send>> = Box::leak(Box::new(Tagged {
        tag,
        out: Mutex::new(out),
    }));
    builder.with_writer(move || writer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_tagged() {
        let tagged = Tagged {
            tag: "sandbox=p1 ".to_string(),
            out: Mutex::new(Vec::new()),
        };
        (&tagged).write_all(b"one\n").unwrap();
        (&tagged).write_all(b"two\n").unwrap();
        let out = tagged.out.into_inner().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "sandbox=p1 one\nsandbox=p1 two\n"
        );
    }
}
