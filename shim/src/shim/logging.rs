//! Logs of the serving shim go to containerd's `log` FIFO in the bundle, through
//! `tracing`; every line carries the pod's sandbox id (one shim serves one pod).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

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

/// Turns the filter to debug, when `HULL_LOG` did not choose it (set by [`init`]).
static DEBUG_SWITCH: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Turns on debug logs of this shim from now on: the configuration's
/// `debug = true` (or an allowed `io.hull.debug` annotation), read at the
/// pod's first Create, after logging started. `HULL_LOG` still wins.
pub fn enable_debug() {
    if let Some(switch) = DEBUG_SWITCH.get() {
        switch();
    }
}

/// A switch that turns a reloadable filter to debug.
fn debug_switch<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> Box<dyn Fn() + Send + Sync> {
    Box::new(move || {
        let _ = handle.reload(EnvFilter::new("debug"));
    })
}

/// Sends `tracing` output to the `log` FIFO in the current directory, or to
/// stderr when there is none (a shim started by hand).
pub fn init(debug: bool, sandbox_id: &str) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let tag = format!("sandbox={sandbox_id} ");
    let out: Box<dyn Write + Send> = match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => Box::new(fifo),
        Err(_) => Box::new(std::io::stderr()),
    };
    let writer: &'static Tagged<Box<dyn Write + Send>> = Box::leak(Box::new(Tagged {
        tag,
        out: Mutex::new(out),
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || writer)
        .with_filter_reloading();
    if std::env::var_os("HULL_LOG").is_none() {
        let _ = DEBUG_SWITCH.set(debug_switch(builder.reload_handle()));
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_switch_lets_debug_lines_through() {
        let out: &'static Tagged<Vec<u8>> = Box::leak(Box::new(Tagged {
            tag: String::new(),
            out: Mutex::new(Vec::new()),
        }));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || out)
            .with_filter_reloading();
        let switch = debug_switch(builder.reload_handle());
        tracing::subscriber::with_default(builder.finish(), || {
            tracing::debug!("hidden before the switch");
            switch();
            tracing::debug!("shown after the switch");
        });
        let text = String::from_utf8(out.out.lock().unwrap().clone()).unwrap();
        assert!(text.contains("shown after the switch"), "{text}");
        assert!(!text.contains("hidden"), "{text}");
    }

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
