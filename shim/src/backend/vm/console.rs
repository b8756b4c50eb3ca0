//! Guest-controlled output on the host (hull-vmm's console, the stderr of
//! hull-vmm and virtiofsd): read to EOF in bounded lines, whatever the bytes,
//! and logged under one per-pod rate limit, so a guest printing without end
//! keeps the shim's memory and log volume bounded.

use std::io::Read;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest line kept; longer ones are split into pieces of this size.
pub const MAX_LINE: usize = 2048;
/// Bytes read from the pipe at a time.
const READ_CHUNK: usize = 8192;
/// Lines a pod may log at once before the rate applies.
pub const LOG_BURST: u32 = 1000;
/// Lines per second a pod may log once the burst is spent.
pub const LOG_PER_SEC: u32 = 50;
/// At most one "lines dropped" summary per interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket of log lines, shared by a pod's output readers.
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    report_every: Duration,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    reported: Instant,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Log the line.
    pub pass: bool,
    /// Log a summary: this many lines were dropped since the last one.
    pub dropped: Option<u64>,
}

impl RateLimit {
    pub fn new(burst: u32, per_sec: u32, report_every: Duration, now: Instant) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            report_every,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                refilled: now,
                dropped: 0,
                reported: now,
            }),
        }
    }

    /// The pod's limit with the default burst and rate.
    pub fn for_pod() -> Arc<Self> {
        Arc::new(Self::new(
            LOG_BURST,
            LOG_PER_SEC,
            REPORT_INTERVAL,
            Instant::now(),
        ))
    }

    /// Takes a token for one line seen at `now`.
    pub fn take(&self, now: Instant) -> Verdict {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.refilled = now;
        let pass = b.tokens >= 1.0;
        if pass {
            b.tokens -= 1.0;
        } else {
            b.dropped += 1;
        }
        let due = now.saturating_duration_since(b.reported) >= self.report_every;
        let dropped = (due && b.dropped > 0).then(|| {
            b.reported = now;
            std::mem::take(&mut b.dropped)
        });
        Verdict { pass, dropped }
    }

    /// Lines dropped and not yet reported (a reader reports them at its EOF).
    pub fn take_dropped(&self) -> u64 {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut b.dropped)
    }
}

/// Calls `on_line` for every line of `reader` until EOF, without the newline
/// (and a trailing `\r`); a line longer than [`MAX_LINE`] arrives in pieces.
/// Memory stays at one read chunk plus one line, whatever the input.
pub fn read_lines(mut reader: impl Read, mut on_line: impl FnMut(&[u8])) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut emit = |line: &mut Vec<u8>| {
        let end = if line.last() == Some(&b'\r') {
            line.len() - 1
        } else {
            line.len()
        };
        on_line(&line[..end]);
        line.clear();
    };
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading guest output stopped: {e}");
                break;
            }
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let room = MAX_LINE - line.len();
            let take = rest.len().min(room);
            match rest[..take].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&rest[..i]);
                    emit(&mut line);
                    rest = &rest[i + 1..];
                }
                None => {
                    line.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if line.len() == MAX_LINE {
                        emit(&mut line);
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// A line as text for the log: lossy UTF-8, control characters (terminal
/// escapes included) shown as U+FFFD.
pub fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Copies a child's output into the shim log under the pod's rate limit; with
/// `ready`, signals the agent's ready marker once (whether or not the line was logged).
pub fn log_output(
    pipe: Option<impl Read + Send + 'static>,
    sandbox: &str,
    source: &'static str,
    limit: Arc<RateLimit>,
    ready: Option<mpsc::Sender<()>>,
) {
    let Some(pipe) = pipe else { return };
    let sandbox = sandbox.to_string();
    let marker = hull_protocol::READY_MARKER.as_bytes();
    std::thread::spawn(move || {
        let mut ready = ready;
        read_lines(pipe, |line| {
            if ready.is_some() && line.windows(marker.len()).any(|w| w == marker) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            let verdict = limit.take(Instant::now());
            if let Some(n) = verdict.dropped {
                tracing::warn!(sandbox = %sandbox, source, dropped = n,
                    "guest output over the rate limit ({LOG_PER_SEC} lines/s): {n} lines not logged");
            }
            if verdict.pass {
                tracing::info!(sandbox = %sandbox, source, "{}", printable(line));
            }
        });
        let n = limit.take_dropped();
        if n > 0 {
            tracing::warn!(sandbox = %sandbox, source, dropped = n,
                "guest output over the rate limit ({LOG_PER_SEC} lines/s): {n} lines not logged");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of `byte`, produced without holding them in memory.
    struct Flood {
        left: usize,
        byte: u8,
    }

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left);
            buf[..n].fill(self.byte);
            self.left -= n;
            Ok(n)
        }
    }

    fn lines_of(input: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read_lines(input, |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_split_on_newlines_and_at_the_cap() {
        assert_eq!(lines_of(b"a\nbc\r\n\nd"), [&b"a"[..], b"bc", b"", b"d"]);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let got = lines_of(&long);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 5]
        );
    }

    #[test]
    fn a_flood_without_newlines_is_read_to_the_end_in_bounded_lines() {
        const SIZE: usize = 64 << 20;
        let (mut lines, mut bytes, mut longest) = (0usize, 0usize, 0usize);
        read_lines(
            Flood {
                left: SIZE,
                byte: b'z',
            },
            |l| {
                lines += 1;
                bytes += l.len();
                longest = longest.max(l.len());
            },
        );
        assert_eq!(bytes, SIZE, "every byte read, none kept");
        assert_eq!(longest, MAX_LINE);
        assert_eq!(lines, SIZE / MAX_LINE);
    }

    #[test]
    fn invalid_utf8_does_not_end_the_reader() {
        let got = lines_of(b"\xff\xfe\x80 bad\nstill here\n\x1b[2Jescape\n");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(printable(&got[0]), "\u{FFFD}\u{FFFD}\u{FFFD} bad");
        assert_eq!(printable(&got[1]), "still here");
        assert_eq!(
            printable(&got[2]),
            "\u{FFFD}[2Jescape",
            "no terminal escapes"
        );
    }

    #[test]
    fn the_rate_limit_passes_a_burst_then_the_rate_and_reports_drops() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10, 5, Duration::from_secs(10), t0);
        let passed = (0..100).filter(|_| limit.take(t0).pass).count();
        assert_eq!(passed, 10, "the burst, then nothing at the same instant");
        // One second later: five more tokens; the first summary is not due yet.
        let t1 = t0 + Duration::from_secs(1);
        let v: Vec<Verdict> = (0..6).map(|_| limit.take(t1)).collect();
        assert_eq!(v.iter().filter(|v| v.pass).count(), 5);
        assert!(v.iter().all(|v| v.dropped.is_none()));
        // Ten seconds in: one summary with every drop so far, then none.
        let t10 = t0 + Duration::from_secs(10);
        let first = limit.take(t10);
        assert_eq!(first.dropped, Some(91));
        assert!(first.pass, "45 s of tokens, capped at the burst");
        assert_eq!(limit.take(t10).dropped, None);
        // The bucket never holds more than the burst.
        let later = t0 + Duration::from_secs(1000);
        let v: Vec<Verdict> = (0..100).map(|_| limit.take(later)).collect();
        assert_eq!(v.iter().filter(|v| v.pass).count(), 10);
        // The interval has passed: the first drop is reported at once, the rest at EOF.
        let reported: Vec<u64> = v.iter().filter_map(|v| v.dropped).collect();
        assert_eq!(reported, [1]);
        assert_eq!(limit.take_dropped(), 89);
        assert_eq!(limit.take_dropped(), 0);
    }
}
