//! Firecracker-style hybrid vsock as `hull-vmm` serves it: the host reaches guest
//! port P by connecting to the VMM's Unix socket and sending `CONNECT P\n`; the
//! guest reaches host port P by connecting to the Unix socket `<uds>_P`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the hybrid vsock handshake and listeners.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error("connect to guest port {port} through {uds}")]
    Connect {
        port: u32,
        uds: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port}: the VMM answered {answer:?} instead of `OK <n>`")]
    Refused { port: u32, answer: String },
    #[error("listen on {path} for the guest")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest did not connect to {path} within {secs} s")]
    NoConnection { path: PathBuf, secs: u64 },
}

/// Connects to guest `port` through the VMM's hybrid socket `uds`; the stream
/// carries the guest connection's bytes after the handshake.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    let err = |source| HybridError::Connect {
        port,
        uds: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(err)?;
    // Byte by byte: nothing past the answer line may be consumed from the stream.
    let mut answer = Vec::new();
    let mut reader = BufReader::with_capacity(1, &stream);
    reader.read_until(b'\n', &mut answer).map_err(err)?;
    let answer = String::from_utf8_lossy(&answer).trim_end().to_string();
    if !answer.starts_with("OK ") {
        return Err(HybridError::Refused { port, answer });
    }
    stream.set_read_timeout(None).map_err(err)?;
    Ok(stream)
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
        Ok(Self { listener, path })
    }

    /// Takes the guest's connection, waiting at most `timeout`.
    pub fn accept(&self, timeout: Duration) -> Result<UnixStream, HybridError> {
        let listen_err = |source| HybridError::Listen {
            path: self.path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(listen_err)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(listen_err)?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(listen_err(e)),
            }
            if Instant::now() >= deadline {
                return Err(HybridError::NoConnection {
                    path: self.path.clone(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
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
        assert!(matches!(err, HybridError::Refused { port: 7, .. }), "{err}");

        let port = PortListener::bind(&uds, 5000).unwrap();
        let path = dir.path().join("v.sock_5000");
        assert!(path.exists());
        let err = port.accept(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, HybridError::NoConnection { .. }), "{err}");
        let _guest = UnixStream::connect(&path).unwrap();
        port.accept(Duration::from_secs(5)).unwrap();
        drop(port);
        assert!(!path.exists());
    }
}
