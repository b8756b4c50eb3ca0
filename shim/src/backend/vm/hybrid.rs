//! Firecracker-style hybrid vsock as `hull-vmm` serves it: the host reaches guest
//! port P by connecting to the VMM's Unix socket and sending `CONNECT P\n`; the
//! guest reaches host port P by connecting to the Unix socket `<uds>_P`.
//!
//! Any process of the guest can dial a host port, so a listener hands out
//! only the connection that first presents the secret token the shim gave the
//! agent; the others are closed unread past the token's length.

use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the hybrid vsock handshake and listeners.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error(transparent)]
    Dial(#[from] containerd_shim_hull_v2::dial::DialError),
    #[error("listen on {path} for the guest")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest did not connect to {path} with the stream's token within {secs} s ({refused} other connections refused)")]
    NoConnection {
        path: PathBuf,
        secs: u64,
        refused: usize,
    },
    #[error("cannot read random bytes for a stream token from /dev/urandom")]
    Random(#[source] std::io::Error),
}

/// Connections that have not yet shown a token, kept at once; past this the
/// longest waiting one is dropped (the agent writes its token right after
/// connecting, so the real stream never waits long).
const MAX_CANDIDATES: usize = 64;
/// How long one connection may take to present its token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between polls of the listener and the candidates.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A connection that has not shown its whole token yet.
struct Candidate {
    stream: UnixStream,
    got: Vec<u8>,
    since: Instant,
}

/// What reading a candidate's next bytes tells.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The whole token, and it is right.
    Match,
    /// Not yet all of it.
    Waiting,
    /// Wrong bytes, end of stream, an error or too slow: close it.
    Refuse(&'static str),
}

impl Candidate {
    fn new(stream: UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            got: Vec::new(),
            since: Instant::now(),
        })
    }

    /// Reads at most the token's remaining length, never past it.
    fn poll(&mut self, token: &[u8], now: Instant) -> Verdict {
        let mut buf = [0u8; 64];
        while self.got.len() < token.len() {
            let want = (token.len() - self.got.len()).min(buf.len());
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => return Verdict::Refuse("closed before its token"),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if now.duration_since(self.since) >= TOKEN_TIMEOUT {
                        return Verdict::Refuse("no token in time");
                    }
                    return Verdict::Waiting;
                }
                Err(_) => return Verdict::Refuse("read error"),
            }
        }
        if same_bytes(&self.got, token) {
            Verdict::Match
        } else {
            Verdict::Refuse("wrong token")
        }
    }
}

/// Compares without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh secret of `STREAM_TOKEN_LEN` bytes from the kernel's random pool.
pub fn new_token() -> Result<Vec<u8>, HybridError> {
    let mut token = vec![0u8; hull_protocol::STREAM_TOKEN_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut token))
        .map_err(HybridError::Random)?;
    Ok(token)
}

/// Connects to guest `port` through the VMM's hybrid socket `uds`; the stream
/// carries the guest connection's bytes after the handshake.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    Ok(containerd_shim_hull_v2::dial::connect(uds, port, timeout)?)
}

/// The host end of one guest-to-host port: a Unix listener at `<uds>_P`, its
/// path removed when dropped.
pub struct PortListener {
    listener: UnixListener,
    path: PathBuf,
}

impl PortListener {
    /// Listens for the guest's connections to host `port`.
    pub fn bind(uds: &Path, port: u32) -> Result<Self, HybridError> {
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| HybridError::Listen {
            path: path.clone(),
            source,
        })?;
        // Group-writable: a jailed hull-vmm (another uid, the pod directory's group) must
        // connect to it; the pod directory keeps everyone else out.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(
            |source| HybridError::Listen {
                path: path.clone(),
                source,
            },
        )?;
        Ok(Self { listener, path })
    }

    /// Takes the first connection that presents `token` (its bytes consumed,
    /// nothing after them), waiting at most `timeout`; every other connection
    /// is closed. Pending connections are read side by side, so a silent one
    /// cannot hold the real stream back.
    pub fn accept(&self, token: &[u8], timeout: Duration) -> Result<UnixStream, HybridError> {
        let listen_err = |source| HybridError::Listen {
            path: self.path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(listen_err)?;
        let deadline = Instant::now() + timeout;
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut refused = 0usize;
        loop {
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        if candidates.len() >= MAX_CANDIDATES {
                            candidates.remove(0);
                            refused += 1;
                        }
                        match Candidate::new(stream) {
                            Ok(c) => candidates.push(c),
                            Err(_) => refused += 1,
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(listen_err(e)),
                }
            }
            let now = Instant::now();
            let mut i = 0;
            while i < candidates.len() {
                match candidates[i].poll(token, now) {
                    Verdict::Match => {
                        let stream = candidates.swap_remove(i).stream;
                        stream.set_nonblocking(false).map_err(listen_err)?;
                        if refused > 0 {
                            tracing::warn!(path = %self.path.display(), refused, "stream connections without the token refused");
                        }
                        return Ok(stream);
                    }
                    Verdict::Waiting => i += 1,
                    Verdict::Refuse(why) => {
                        tracing::warn!(path = %self.path.display(), why, "refused a stream connection");
                        candidates.swap_remove(i);
                        refused += 1;
                    }
                }
            }
            if now >= deadline {
                return Err(HybridError::NoConnection {
                    path: self.path.clone(),
                    secs: timeout.as_secs(),
                    refused: refused + candidates.len(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for PortListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::io::Write;

    #[test]
    fn connect_sends_the_port_and_leaves_guest_bytes_unread() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let vmm = UnixListener::bind(&uds).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = vmm.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nguest").unwrap();
        });
        let mut s = connect(&uds, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"guest");
        server.join().unwrap();
    }

    #[test]
    fn a_refusal_and_a_missing_guest_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let vmm = UnixListener::bind(&uds).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = vmm.accept().unwrap();
            s.write_all(b"NO\n").unwrap();
        });
        let err = connect(&uds, 7, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(
                err,
                HybridError::Dial(containerd_shim_hull_v2::dial::DialError::Refused {
                    port: 7,
                    ..
                })
            ),
            "{err}"
        );

        let port = PortListener::bind(&uds, 5000).unwrap();
        let path = dir.path().join("v.sock_5000");
        assert!(path.exists());
        let token = new_token().unwrap();
        let err = port.accept(&token, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, HybridError::NoConnection { .. }), "{err}");
        let mut guest = UnixStream::connect(&path).unwrap();
        guest.write_all(&token).unwrap();
        port.accept(&token, Duration::from_secs(5)).unwrap();
        drop(port);
        assert!(!path.exists());
    }

    #[test]
    fn tokens_are_fresh() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), hull_protocol::STREAM_TOKEN_LEN);
        assert_ne!(a, b);
    }

    /// Impostors dial first: one silent, one with a wrong token, one that
    /// hangs up; the agent's connection still gets the stream, with its
    /// bytes after the token intact, and the impostors get nothing.
    #[test]
    fn impostors_do_not_get_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let port = PortListener::bind(&uds, 10_000).unwrap();
        let path = dir.path().join("v.sock_10000");
        let token = new_token().unwrap();
        let mut silent = UnixStream::connect(&path).unwrap();
        let mut wrong = UnixStream::connect(&path).unwrap();
        let mut bad = token.clone();
        bad[0] ^= 1;
        wrong.write_all(&bad).unwrap();
        wrong.write_all(b"keys").unwrap();
        drop(UnixStream::connect(&path).unwrap());
        let mut real = UnixStream::connect(&path).unwrap();
        real.write_all(&token).unwrap();
        real.write_all(b"output").unwrap();
        let started = Instant::now();
        let mut host = port.accept(&token, Duration::from_secs(30)).unwrap();
        assert!(
            started.elapsed() < TOKEN_TIMEOUT,
            "the silent impostor held the stream back for {:?}",
            started.elapsed()
        );
        let mut got = [0u8; 6];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"output");
        host.write_all(b"secret keystrokes").unwrap();
        drop(host);
        drop(port);
        for impostor in [&mut silent, &mut wrong] {
            impostor
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut seen = Vec::new();
            // Closed by the host: end of stream or a reset, never data.
            let _ = impostor.read_to_end(&mut seen);
            assert!(seen.is_empty(), "an impostor read {seen:?}");
        }
    }

    #[test]
    fn a_wrong_token_alone_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let port = PortListener::bind(&uds, 10_001).unwrap();
        let token = new_token().unwrap();
        let mut wrong = UnixStream::connect(dir.path().join("v.sock_10001")).unwrap();
        wrong
            .write_all(&[0u8; hull_protocol::STREAM_TOKEN_LEN])
            .unwrap();
        let err = port.accept(&token, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(err, HybridError::NoConnection { refused: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn byte_comparison() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"ab", b"abc"));
    }
}
