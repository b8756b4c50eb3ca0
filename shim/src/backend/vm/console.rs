//! Guest-controlled output on the host (hull-vmm's console, the stderr of
//! hull-vmm and virtiofsd): read to EOF in bounded lines, whatever the bytes,
//! and logged under one per-pod rate limit, so a guest printing without end
//! keeps the shim's memory and log volume bounded.

use std::io::Read;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_hull_v2::guest::lines::{is_ready_marker, printable, read_lines};

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
    std::thread::spawn(move || {
        let mut ready = ready;
        read_lines(pipe, |line| {
            if ready.is_some() && is_ready_marker(line) {
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
