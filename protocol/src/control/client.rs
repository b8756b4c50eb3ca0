//! The one client of hull-vmm's control socket, shared by the shim (the pod's
//! figures at teardown) and the operator tools (hull-monitor, hull-check
//! bundle): one typed call that returns the VM's figures.
//!
//! Every pod VM serves the socket at `<run_dir>/<namespace>/<pod>/control.sock`
//! ([`crate::vm::pod_files::CONTROL`]); its answer carries the per-device
//! counters ([`super::DeviceStats`]) as well.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Answer, Command, Request, VmStats};

/// Longest answer line read; a VMM that sends more is cut off (and the
/// truncated line fails to parse).
pub const MAX_ANSWER: u64 = 64 * 1024;

/// Errors of asking hull-vmm for its figures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach hull-vmm's control socket {path} (is the pod's VM running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hull-vmm's control socket {path} did not answer")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hull-vmm's answer on {path} is not valid JSON of the control protocol")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("hull-vmm on {path} refused the request: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// Asks the hull-vmm serving `socket` for its figures; gives up after
/// `timeout` (for sending the request and for the answer each). Safe to call
/// from any thread while the pod runs: the VMM answers from its event loop.
pub fn vm_stats(socket: &Path, timeout: Duration) -> Result<VmStats, ControlError> {
    let path = || socket.to_path_buf();
    let io = |source| ControlError::Io {
        path: path(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: path(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    (&stream)
        .write_all(Request::new(Command::Stats).to_line().as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_ANSWER))
        .read_line(&mut line)
        .map_err(io)?;
    let answer: Answer = serde_json::from_str(&line).map_err(|source| ControlError::Parse {
        path: path(),
        source,
    })?;
    match answer {
        Answer {
            ok: true,
            stats: Some(stats),
            ..
        } => Ok(stats),
        Answer { error, .. } => Err(ControlError::Refused {
            path: path(),
            reason: error.unwrap_or_else(|| "an answer without figures".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::MemoryStats;
    use std::os::unix::net::UnixListener;

    /// A fake hull-vmm answering one request with `answer`; returns the request line.
    fn serve_once(path: &Path, answer: String) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(answer.as_bytes()).unwrap();
            line
        })
    }

    #[test]
    fn figures_arrive_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::vm::pod_files::CONTROL);
        let stats = VmStats {
            vcpus: 2,
            vcpu_exits: 42,
            memory: MemoryStats {
                guest_mib: 512,
                vmm_rss_kib: 9000,
            },
            ..VmStats::default()
        };
        let server = serve_once(&path, Answer::stats(stats.clone()).to_line() + "\n");
        assert_eq!(vm_stats(&path, Duration::from_secs(5)).unwrap(), stats);
        let request = server.join().unwrap();
        assert_eq!(Request::parse(request.trim()), Ok(Command::Stats));
    }

    #[test]
    fn refusals_junk_and_absence_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let err = vm_stats(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ControlError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("control.sock"), "{err}");
        let server = serve_once(&path, Answer::error("nope").to_line() + "\n");
        let err = vm_stats(&path, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ControlError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        // An ok answer without figures is no answer to `stats`.
        let server = serve_once(&path, Answer::ok().to_line() + "\n");
        let err = vm_stats(&path, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("without figures"), "{err}");
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let server = serve_once(&path, "garbage\n".into());
        assert!(matches!(
            vm_stats(&path, Duration::from_secs(5)),
            Err(ControlError::Parse { .. })
        ));
        server.join().unwrap();
    }

    #[test]
    fn an_oversized_answer_is_cut_off_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let huge = format!(
            "{{\"v\":1,\"ok\":true,\"error\":\"{}\"}}\n",
            "x".repeat(1 << 20)
        );
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            // The client stops reading at MAX_ANSWER and hangs up: a write error here is expected.
            let _ = (&stream).write_all(huge.as_bytes());
        });
        assert!(matches!(
            vm_stats(&path, Duration::from_secs(5)),
            Err(ControlError::Parse { .. })
        ));
        server.join().unwrap();
    }

    #[test]
    fn a_silent_vmm_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            vm_stats(&path, Duration::from_millis(200)),
            Err(ControlError::Io { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
