//! The shim's client of hull-vmm's control socket: one typed call that
//! returns the VM's figures (VMM RSS, CPU time, vCPU exits), for the pod's
//! teardown log line and for a metrics endpoint.
//!
//! Every pod VM serves the socket at `<run_dir>/<namespace>/<pod>/control.sock`
//! (`hull_protocol::vm::pod_files::CONTROL`); the messages are
//! [`hull_protocol::control`]. hull-vmm does not count per-device queue
//! figures yet, so [`VmStats`] has none.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hull_protocol::control::VmStats;
use hull_protocol::control::{Answer, Command, Request};

/// Errors of asking hull-vmm for its figures.
#[derive(Debug, thiserror::Error)]
pub enum VmmControlError {
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
    #[error("hull-vmm's answer is not valid JSON of the control protocol")]
    Parse(#[source] serde_json::Error),
    #[error("hull-vmm refused the request: {0}")]
    Refused(String),
}

/// Asks the hull-vmm serving `socket` for its figures; gives up after
/// `timeout` (for the connection and for the answer each). Safe to call from
/// any thread while the pod runs: the VMM answers from its event loop.
pub fn vm_stats(socket: &Path, timeout: Duration) -> Result<VmStats, VmmControlError> {
    let io = |source| VmmControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| VmmControlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    (&stream)
        .write_all(Request::new(Command::Stats).to_line().as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    // The answer is one short line; a VMM that sends more is cut off.
    let limit = u64::try_from(hull_protocol::control::MAX_LINE).unwrap_or(4096);
    BufReader::new(std::io::Read::take(&stream, limit))
        .read_line(&mut line)
        .map_err(io)?;
    let answer: Answer = serde_json::from_str(&line).map_err(VmmControlError::Parse)?;
    match answer {
        Answer {
            ok: true,
            stats: Some(stats),
            ..
        } => Ok(stats),
        Answer { error, .. } => Err(VmmControlError::Refused(
            error.unwrap_or_else(|| "an answer without figures".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::control::MemoryStats;
    use std::os::unix::net::UnixListener;

    /// A fake hull-vmm answering one request with `answer`.
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
        let path = dir.path().join("control.sock");
        let stats = VmStats {
            vcpus: 2,
            vcpu_exits: 42,
            memory: MemoryStats {
                guest_mib: 512,
                vmm_rss_kib: 9000,
            },
            ..VmStats::default()
        };
        let server = serve_once(&path, Answer::stats(stats).to_line() + "\n");
        assert_eq!(vm_stats(&path, Duration::from_secs(5)).unwrap(), stats);
        let request = server.join().unwrap();
        assert_eq!(Request::parse(request.trim()), Ok(Command::Stats));
    }

    #[test]
    fn refusals_silence_and_absence_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(matches!(
            vm_stats(&path, Duration::from_secs(1)),
            Err(VmmControlError::Connect { .. })
        ));
        let server = serve_once(&path, Answer::error("nope").to_line() + "\n");
        let err = vm_stats(&path, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let server = serve_once(&path, "garbage\n".into());
        assert!(matches!(
            vm_stats(&path, Duration::from_secs(5)),
            Err(VmmControlError::Parse(_))
        ));
        server.join().unwrap();
        // A VMM that never answers: the call ends at its deadline.
        std::fs::remove_file(&path).unwrap();
        let _listener = UnixListener::bind(&path).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            vm_stats(&path, Duration::from_millis(200)),
            Err(VmmControlError::Io { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
