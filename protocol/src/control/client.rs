//! The one client of hull-vmm's control socket, shared by the shim (the pod's
//! figures at teardown, container images into empty disk slots) and the
//! operator tools (hull-monitor, hull-check bundle): typed calls that return the
//! VM's figures ([`vm_stats`]) or fill a disk slot ([`attach_disk`]).
//!
//! Every pod VM serves the socket at `<run_dir>/<namespace>/<pod>/control.sock`
//! ([`crate::vm::pod_files::CONTROL`]); its answer carries the per-device
//! counters ([`super::DeviceStats`]) as well.

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Answer, Command, Request, VmStats};

/// Longest answer line read; a VMM that sends more is cut off (and the
/// truncated line fails to parse).
pub const MAX_ANSWER: u64 = 64 * 1024;
/// How long [`attach_disk`] waits for sending the request and for the answer, each.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

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
    match ask(socket, timeout, Command::Stats, None)? {
        Answer {
            ok: true,
            stats: Some(stats),
            ..
        } => Ok(stats),
        Answer { error, .. } => Err(ControlError::Refused {
            path: socket.to_path_buf(),
            reason: error.unwrap_or_else(|| "an answer without figures".into()),
        }),
    }
}

/// Fills the empty disk slot at position `index` of the VM's `disks` with
/// `file`, a read-only image (a regular file of at least one 512-byte sector):
/// its descriptor travels with the request, and the guest sees the disk's new
/// size at once. The caller keeps `file` (hull-vmm holds its own copy). Gives up
/// after [`ATTACH_TIMEOUT`].
pub fn attach_disk(socket: &Path, index: usize, file: &File) -> Result<(), ControlError> {
    let cmd = Command::AttachDisk { disk: index };
    match ask(socket, ATTACH_TIMEOUT, cmd, Some(file))? {
        Answer { ok: true, .. } => Ok(()),
        Answer { error, .. } => Err(ControlError::Refused {
            path: socket.to_path_buf(),
            reason: error.unwrap_or_else(|| "a failure without a reason".into()),
        }),
    }
}

/// Sends one request (with `file`'s descriptor as `SCM_RIGHTS` data on the
/// same `sendmsg` when given) and reads its answer.
fn ask(
    socket: &Path,
    timeout: Duration,
    cmd: Command,
    file: Option<&File>,
) -> Result<Answer, ControlError> {
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
    let line = Request::new(cmd).to_line();
    let sent = match file {
        None => 0,
        Some(f) => send_with_fd(&stream, line.as_bytes(), f).map_err(io)?,
    };
    // The descriptor went with the first byte; the rest, if any, follows plainly.
    (&stream).write_all(&line.as_bytes()[sent..]).map_err(io)?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ControlError::Parse {
        path: path(),
        source,
    })
}

/// One `sendmsg` of (a first part of) `bytes` carrying `file`'s descriptor;
/// how many bytes went.
fn send_with_fd(stream: &UnixStream, bytes: &[u8], file: &File) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [file.as_raw_fd()];
    loop {
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
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

    /// A fake hull-vmm that answers one attach-disk with `answer`: the request line and
    /// the descriptors that came with it.
    fn serve_attach(
        path: &Path,
        answer: Answer,
    ) -> std::thread::JoinHandle<(String, Vec<std::os::fd::OwnedFd>)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{FromRawFd, OwnedFd};
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .unwrap();
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors for this process.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            (&stream)
                .write_all((answer.to_line() + "\n").as_bytes())
                .unwrap();
            (line, fds)
        })
    }

    #[test]
    fn attach_disk_sends_the_descriptor_with_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let image = dir.path().join("image");
        std::fs::write(&image, b"image bytes").unwrap();
        let server = serve_attach(&path, Answer::ok());
        attach_disk(&path, 3, &File::open(&image).unwrap()).unwrap();
        let (line, fds) = server.join().unwrap();
        assert_eq!(
            Request::parse(line.trim()),
            Ok(Command::AttachDisk { disk: 3 })
        );
        assert_eq!(fds.len(), 1);
        let mut got = String::new();
        File::from(fds.into_iter().next().unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "image bytes");
        std::fs::remove_file(&path).unwrap();
        let server = serve_attach(&path, Answer::error("not an empty slot"));
        let err = attach_disk(&path, 0, &File::open(&image).unwrap()).unwrap_err();
        assert!(err.to_string().contains("not an empty slot"), "{err}");
        server.join().unwrap();
    }
}
