//! Running `ctr` against the private containerd: every call bounded by a
//! timeout (its whole process group is killed then), stdout read as it comes
//! so the time to the first byte and a blast's throughput can be measured.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::probe_data::BLAST_MARKER;

/// Most stdout kept per call (a blast past its marker is counted, not kept).
const KEEP_BYTES: usize = 4 << 20;

/// What one `ctr` call did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CtrResult {
    pub args: Vec<String>,
    pub ok: bool,
    /// "exit 0", "exit 1", "timed out after 300 s", "spawn failed: ...".
    pub status: String,
    pub wall_s: f64,
    /// Seconds from spawning ctr to the first byte on its stdout.
    pub first_byte_s: Option<f64>,
    #[serde(skip)]
    pub stdout: String,
    pub stderr_tail: String,
    /// Bytes after the blast marker, and seconds from the marker to the last byte.
    pub blast_bytes: u64,
    pub blast_s: f64,
}

impl CtrResult {
    /// One line for the report: the status and the end of stderr.
    pub fn failure(&self) -> String {
        let err = self.stderr_tail.trim();
        if err.is_empty() {
            self.status.clone()
        } else {
            format!("{}: {}", self.status, err)
        }
    }
}

/// The stdout reader's findings.
#[derive(Debug, Default)]
struct Stdout {
    head: Vec<u8>,
    blast_bytes: u64,
    blast_s: f64,
}

fn read_stdout(mut r: impl Read, first: mpsc::Sender<Instant>) -> Stdout {
    let mut out = Stdout::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut marker_at: Option<Instant> = None;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        if out.head.is_empty() && marker_at.is_none() {
            let _ = first.send(now);
        }
        if let Some(at) = marker_at {
            out.blast_bytes += n as u64;
            out.blast_s = (now - at).as_secs_f64();
            continue;
        }
        out.head.extend_from_slice(&buf[..n]);
        if let Some(end) = marker_end(&out.head) {
            marker_at = Some(now);
            out.blast_bytes = (out.head.len() - end) as u64;
            out.head.truncate(end);
        } else if out.head.len() > KEEP_BYTES {
            out.head.truncate(KEEP_BYTES);
        }
    }
    out
}

/// Index just past the blast marker line, when `head` holds a complete one.
fn marker_end(head: &[u8]) -> Option<usize> {
    let m = BLAST_MARKER.as_bytes();
    let at = head.windows(m.len()).position(|w| w == m)?;
    let nl = head[at..].iter().position(|b| *b == b'\n')?;
    Some(at + nl + 1)
}

/// A running `ctr` call.
pub struct CtrChild {
    child: Option<Child>,
    args: Vec<String>,
    started: Instant,
    timeout: Duration,
    first: mpsc::Receiver<Instant>,
    first_seen: Option<Instant>,
    stdout: Option<JoinHandle<Stdout>>,
    stderr: Option<JoinHandle<String>>,
    spawn_error: Option<String>,
}

/// The private containerd's address and the bound on each call.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub address: String,
    pub timeout: Duration,
}

impl Ctr {
    /// Starts `ctr --address A <args>` in its own process group.
    pub fn spawn(&self, args: &[String]) -> CtrChild {
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut c = CtrChild {
            child: None,
            args: args.to_vec(),
            started,
            timeout: self.timeout,
            first: rx,
            first_seen: None,
            stdout: None,
            stderr: None,
            spawn_error: None,
        };
        match cmd.spawn() {
            Ok(mut child) => {
                let out = child.stdout.take().expect("piped stdout");
                let mut err = child.stderr.take().expect("piped stderr");
                c.stdout = Some(std::thread::spawn(move || read_stdout(out, tx)));
                c.stderr = Some(std::thread::spawn(move || {
                    let mut s = Vec::new();
                    let _ = err.read_to_end(&mut s);
                    String::from_utf8_lossy(&s).into_owned()
                }));
                c.child = Some(child);
            }
            Err(e) => c.spawn_error = Some(format!("spawn ctr failed: {e}")),
        }
        c
    }

    /// Runs `ctr <args>` to the end (or the timeout).
    pub fn run(&self, args: &[String]) -> CtrResult {
        self.spawn(args).finish(self.timeout)
    }
}

impl CtrChild {
    /// Waits for the first stdout byte: `Some(seconds since spawn)`, or `None`
    /// when ctr ended first or `within` passed.
    pub fn wait_first_byte(&mut self, within: Duration) -> Option<f64> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.first.recv_timeout(Duration::from_millis(200)) {
                Ok(t) => {
                    self.first_seen = Some(t);
                    return Some((t - self.started).as_secs_f64());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let exited = self
                        .child
                        .as_mut()
                        .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
                    if exited {
                        // A last look: the byte may have come just before the exit.
                        return self.first.try_recv().ok().map(|t| {
                            self.first_seen = Some(t);
                            (t - self.started).as_secs_f64()
                        });
                    }
                }
            }
        }
        None
    }

    fn kill_group(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling the process group ctr leads (we made it with process_group(0)).
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
        }
    }

    /// Waits for ctr to end, at most `within` more (then kills its group).
    pub fn finish(mut self, within: Duration) -> CtrResult {
        let mut r = CtrResult {
            args: self.args.clone(),
            ..Default::default()
        };
        if let Some(e) = self.spawn_error.take() {
            r.status = e;
            return r;
        }
        let deadline = Instant::now()
            + within
                .min(self.timeout.saturating_sub(self.started.elapsed()))
                .max(Duration::from_secs(1));
        let mut child = self.child.take().expect("spawned");
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break None,
            }
        };
        r.wall_s = self.started.elapsed().as_secs_f64();
        match status {
            Some(s) => {
                r.ok = s.success();
                r.status = match s.code() {
                    Some(c) => format!("exit {c}"),
                    None => format!("killed by {s}"),
                };
            }
            None => {
                self.child = Some(child);
                self.kill_group();
                let mut child = self.child.take().expect("just put back");
                let _ = child.wait();
                r.status = format!("timed out after {:.0} s (killed)", r.wall_s);
            }
        }
        let out = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        r.first_byte_s = self
            .first_seen
            .or_else(|| self.first.try_recv().ok())
            .map(|t| (t - self.started).as_secs_f64());
        r.stdout = String::from_utf8_lossy(&out.head).into_owned();
        r.blast_bytes = out.blast_bytes;
        r.blast_s = out.blast_s;
        r.stderr_tail = tail(&err, 400);
        r
    }
}

impl Drop for CtrChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: as in kill_group: our own child's process group.
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            }
            let _ = c.wait();
        }
    }
}

/// The last `max` characters of `s`, whole lines where possible, on one line.
pub fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    let start = s.char_indices().rev().nth(max).map_or(0, |(i, _)| i);
    s[start..].split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_only_when_its_line_is_complete() {
        assert_eq!(marker_end(b"{}\nHULL-BENCH-BLAST 10"), None);
        let head = b"{}\nHULL-BENCH-BLAST 10\nxxxx";
        assert_eq!(marker_end(head), Some(head.len() - 4));
    }

    #[test]
    fn reader_counts_blast_bytes_apart_from_the_head() {
        let data = b"{\"a\":1}\nHULL-BENCH-BLAST 6\nxxxxxx".to_vec();
        let (tx, rx) = mpsc::channel();
        let out = read_stdout(&data[..], tx);
        assert_eq!(out.head, b"{\"a\":1}\nHULL-BENCH-BLAST 6\n");
        assert_eq!(out.blast_bytes, 6);
        assert!(rx.try_recv().is_ok(), "first byte time sent");
    }

    #[test]
    fn tail_keeps_the_end_on_one_line() {
        assert_eq!(tail("a\nb\n  ctr: failed\n", 100), "a b ctr: failed");
        assert_eq!(tail("0123456789", 3), "6789");
    }

    #[test]
    fn a_missing_ctr_binary_is_reported_and_a_timeout_kills() {
        // Without ctr the spawn fails; with it, ctr keeps dialing the bogus
        // address for 10 s and the 1 s bound kills it.
        let ctr = Ctr {
            address: "/nonexistent/containerd.sock".into(),
            timeout: Duration::from_secs(1),
        };
        let started = Instant::now();
        let r = ctr.run(&["version".into()]);
        assert!(!r.ok);
        assert!(
            r.status.starts_with("spawn ctr failed")
                || r.status.starts_with("timed out")
                || r.status.starts_with("exit"),
            "{}",
            r.status
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
