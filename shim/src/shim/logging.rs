//! Logs of the serving shim go to containerd's `log` FIFO in the bundle, through
//! `tracing`, in containerd's own logfmt (`time="…" level=info msg="…" key=value`,
//! as logrus writes it), so Hull's lines read like every other runtime's in
//! containerd's log. Every line carries the pod's sandbox id (one shim serves one
//! pod); fields of the event (`container=`, `source=` of guest console, hull-vmm
//! and virtiofsd lines, ...) follow.

use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

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
    let out: Box<dyn Write + Send> = match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => Box::new(fifo),
        Err(_) => Box::new(std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(Logfmt {
            sandbox: sandbox_id.to_string(),
        })
        .with_writer(Mutex::new(out))
        .with_filter_reloading();
    if std::env::var_os("HULL_LOG").is_none() {
        let _ = DEBUG_SWITCH.set(debug_switch(builder.reload_handle()));
    }
    builder.init();
}

/// Formats each event as one logfmt line.
struct Logfmt {
    sandbox: String,
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        writer.write_str(&line(
            SystemTime::now(),
            *event.metadata().level(),
            &self.sandbox,
            &fields,
        ))
    }
}

/// The message and the other fields of one event, in order.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// logrus's level names (containerd writes `warning`, not `warn`).
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One line: `time=… level=… msg=… sandbox=… <fields>\n`; the event's own
/// `sandbox` field, if any, stands instead of the shim's.
fn line(now: SystemTime, level: Level, sandbox: &str, fields: &Fields) -> String {
    let mut out = String::with_capacity(96 + fields.message.len());
    pair(&mut out, "time", &rfc3339(now));
    out.push(' ');
    pair(&mut out, "level", level_name(level));
    out.push(' ');
    pair(&mut out, "msg", &fields.message);
    if !fields.others.iter().any(|(k, _)| *k == "sandbox") {
        out.push(' ');
        pair(&mut out, "sandbox", sandbox);
    }
    for (key, value) in &fields.others {
        out.push(' ');
        pair(&mut out, key, value);
    }
    out.push('\n');
    out
}

/// `key=value`, the value quoted as logrus does: bare when it holds only
/// `[A-Za-z0-9-._/@^+]`, else in double quotes with Go's escapes.
fn pair(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push('=');
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// UTC time as RFC 3339 with nanoseconds (`2026-11-30T05:25:58.123456789Z`).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// The Gregorian date of a day count since 1970-01-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each year;
    // eras of 400 years have 146 097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fields(message: &str, others: &[(&'static str, &str)]) -> Fields {
        Fields {
            message: message.to_string(),
            others: others.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn the_debug_switch_lets_debug_lines_through() {
        let out = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .event_format(Logfmt {
                sandbox: "p1".into(),
            })
            .with_writer(move || Capture(sink.clone()))
            .with_filter_reloading();
        let switch = debug_switch(builder.reload_handle());
        tracing::subscriber::with_default(builder.finish(), || {
            tracing::debug!("hidden before the switch");
            switch();
            tracing::debug!("shown after the switch");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("level=debug msg=\"shown after the switch\""),
            "{text}"
        );
        assert!(!text.contains("hidden"), "{text}");
    }

    #[test]
    fn a_line_reads_like_containerds() {
        let f = fields("pod started", &[("container", "c1")]);
        assert_eq!(
            line(at(1_795_931_158, 123_456_789), Level::INFO, "p1", &f),
            "time=\"2026-11-29T05:45:58.123456789Z\" level=info msg=\"pod started\" \
             sandbox=p1 container=c1\n"
        );
    }

    #[test]
    fn levels_use_logrus_names() {
        let f = fields("x", &[]);
        let level = |l| {
            let text = line(at(0, 0), l, "p", &f);
            text.split(' ').nth(1).unwrap().to_string()
        };
        assert_eq!(level(Level::ERROR), "level=error");
        assert_eq!(level(Level::WARN), "level=warning");
        assert_eq!(level(Level::INFO), "level=info");
        assert_eq!(level(Level::DEBUG), "level=debug");
        assert_eq!(level(Level::TRACE), "level=trace");
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        let mut out = String::new();
        for (k, v) in [
            ("a", "plain-1.2_x/y@z^+"),
            ("b", ""),
            ("c", "two words"),
            ("d", "say \"hi\""),
            ("e", "line1\nline2\r\ttab"),
            ("f", "back\\slash"),
            ("g", "esc\u{1b}[31m"),
            ("h", "k=v"),
            ("i", "nel\u{85}"),
        ] {
            pair(&mut out, k, v);
            out.push(' ');
        }
        assert_eq!(
            out,
            "a=plain-1.2_x/y@z^+ b=\"\" c=\"two words\" d=\"say \\\"hi\\\"\" \
             e=\"line1\\nline2\\r\\ttab\" f=\"back\\\\slash\" g=\"esc\\x1b[31m\" h=\"k=v\" \
             i=\"nel\\u0085\" "
        );
    }

    #[test]
    fn a_guest_line_cannot_forge_a_second_line_or_field() {
        let f = fields(
            "hello\ntime=x level=error msg=forged",
            &[("sandbox", "p1"), ("source", "guest console")],
        );
        let text = line(at(0, 0), Level::INFO, "p1", &f);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with(
            "msg=\"hello\\ntime=x level=error msg=forged\" sandbox=p1 source=\"guest console\"\n"
        ));
        assert_eq!(text.matches("sandbox=").count(), 1, "{text}");
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(at(951_782_400, 5)),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339(at(1_798_761_599, 0)),
            "2026-12-31T23:59:59.000000000Z"
        );
        assert_eq!(
            rfc3339(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn events_from_tracing_are_formatted() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Logfmt {
                sandbox: "pod7".to_string(),
            })
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(container = "c 1", code = 3, "disk {} full", "/dev/vda");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("time=\""), "{text}");
        assert!(
            text.ends_with(
                " level=warning msg=\"disk /dev/vda full\" sandbox=pod7 container=\"c 1\" code=3\n"
            ),
            "{text}"
        );
    }

    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
