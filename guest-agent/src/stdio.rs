//! Stdio streams: the agent dials each one (host vsock port in the guest,
//! Unix socket in host tests) and hands it to the process as is; with a pty
//! it relays between the pty master and the one stream instead.
//!
//! When the host gave a token, it is the first thing written on the stream,
//! before the process gets it: the host hands the stream to containerd only
//! to the connection that presents it (another process of the guest can dial
//! the same host port, but does not know the token).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hull_protocol::agent::{stream_endpoint::Endpoint, Stdio, StreamEndpoint};
use nix::sys::socket::{
    connect, shutdown, socket, AddressFamily, Shutdown, SockFlag, SockType, VsockAddr,
};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot dial stdio endpoint {endpoint}")]
    Dial {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot duplicate a stdio descriptor")]
    Dup(#[source] std::io::Error),
    #[error("stream token of {0} bytes for stdio endpoint {1}: the host must send exactly {len} or none", len = hull_protocol::STREAM_TOKEN_LEN)]
    TokenLength(usize, String),
    #[error("cannot send the token on stdio endpoint {endpoint}")]
    Token {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
}

/// The dialed streams of one process; `None` means /dev/null.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Dials the streams the host asked for (only stdin, both ways, with a terminal).
pub fn dial_all(stdio: &Stdio, terminal: bool) -> Result<Streams, StdioError> {
    let one = |ep: &protobuf::MessageField<StreamEndpoint>| match ep.as_ref() {
        Some(ep) => dial(ep),
        None => Ok(None),
    };
    if terminal {
        return Ok(Streams {
            stdin: one(&stdio.stdin)?,
            ..Default::default()
        });
    }
    Ok(Streams {
        stdin: one(&stdio.stdin)?,
        stdout: one(&stdio.stdout)?,
        stderr: one(&stdio.stderr)?,
    })
}

fn dial(ep: &StreamEndpoint) -> Result<Option<OwnedFd>, StdioError> {
    let token = ep.token.as_slice();
    if !token.is_empty() && token.len() != hull_protocol::STREAM_TOKEN_LEN {
        return Err(StdioError::TokenLength(token.len(), describe(ep)));
    }
    let Some(fd) = connect_endpoint(ep)? else {
        return Ok(None);
    };
    if !token.is_empty() {
        File::from(fd.try_clone().map_err(StdioError::Dup)?)
            .write_all(token)
            .map_err(|source| StdioError::Token {
                endpoint: describe(ep),
                source,
            })?;
    }
    Ok(Some(fd))
}

fn describe(ep: &StreamEndpoint) -> String {
    match &ep.endpoint {
        Some(Endpoint::UnixPath(path)) => format!("unix:{path}"),
        Some(Endpoint::VsockPort(port)) => format!("vsock:{port}"),
        Some(_) | None => "(none)".into(),
    }
}

fn connect_endpoint(ep: &StreamEndpoint) -> Result<Option<OwnedFd>, StdioError> {
    match &ep.endpoint {
        None => Ok(None),
        Some(Endpoint::UnixPath(path)) => UnixStream::connect(path)
            .map(|s| Some(s.into()))
            .map_err(|source| StdioError::Dial {
                endpoint: format!("unix:{path}"),
                source,
            }),
        Some(Endpoint::VsockPort(port)) => {
            dial_vsock(*port).map(Some).map_err(|e| StdioError::Dial {
                endpoint: format!("vsock:{port}"),
                source: e.into(),
            })
        }
        Some(_) => Ok(None),
    }
}

/// How long a dial to the host may wait for the host's answer. The kernel's
/// default is 2 s: with ten VMs booting at once on a loaded host, hull-vmm
/// answered later than that and a container's stdio failed with "timed out".
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (linux/vm_sockets.h; the `timeval` form,
/// which is the only one on 64-bit), at level `AF_VSOCK`.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// Connects to `port` on the host (CID 2) over vsock.
pub(crate) fn dial_vsock(port: u32) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let timeout = libc::timeval {
        tv_sec: DIAL_TIMEOUT.as_secs() as _,
        tv_usec: 0,
    };
    // SAFETY: `fd` is an open socket; the option value points at a live
    // `timeval` whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    nix::errno::Errno::result(rc)?;
    connect(
        fd.as_raw_fd(),
        &VsockAddr::new(hull_protocol::HOST_CID, port),
    )?;
    Ok(fd)
}

/// Set once the pty output has been relayed to its end.
#[derive(Default)]
pub struct Drained {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Drained {
    fn set(&self) {
        *self.done.lock().expect("drained lock") = true;
        self.cv.notify_all();
    }

    /// Waits for the relay to finish, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let done = self.done.lock().expect("drained lock");
        let _ = self.cv.wait_timeout_while(done, timeout, |d| !*d);
    }
}

/// Relays host input to the pty master and pty output to the host; the
/// returned flag is set when the output side reached its end (all slaves closed).
pub fn relay_pty(
    id: &str,
    master: &OwnedFd,
    stream: Option<OwnedFd>,
) -> Result<Arc<Drained>, StdioError> {
    let drained = Arc::new(Drained::default());
    let Some(stream) = stream else {
        drained.set();
        return Ok(drained);
    };
    let dup = |fd: &OwnedFd| fd.try_clone().map(File::from).map_err(StdioError::Dup);
    let (mut master_in, mut master_out) = (dup(master)?, dup(master)?);
    let (mut stream_in, mut stream_out) = (dup(&stream)?, File::from(stream));
    let id_in = id.to_owned();
    std::thread::spawn(move || {
        if let Err(e) = std::io::copy(&mut stream_in, &mut master_in) {
            tracing::debug!(container = %id_in, error = %e, "pty input relay ended");
        }
    });
    let id_out = id.to_owned();
    let flag = drained.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // EIO once every slave is closed: the normal end of a pty.
            let n = match master_out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Err(e) = stream_out.write_all(&buf[..n]) {
                tracing::debug!(container = %id_out, error = %e, "pty output relay ended");
                break;
            }
        }
        let _ = shutdown(stream_out.as_raw_fd(), Shutdown::Write);
        flag.set();
    });
    Ok(drained)
}

/// Makes the process read end-of-file on its stdin stream.
pub fn close_read(fd: &OwnedFd) -> nix::Result<()> {
    shutdown(fd.as_raw_fd(), Shutdown::Read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fresh socket path (no tempfile crate in the agent).
    fn socket_path(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("hull-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn unix_endpoint(path: &std::path::Path, token: &[u8]) -> StreamEndpoint {
        let mut ep = StreamEndpoint::new();
        ep.set_unix_path(path.to_str().unwrap().into());
        ep.token = token.to_vec();
        ep
    }

    #[test]
    fn the_token_comes_before_the_process_bytes() {
        let path = socket_path("token-first");
        let listener = UnixListener::bind(&path).unwrap();
        let token = [7u8; hull_protocol::STREAM_TOKEN_LEN];
        let fd = dial(&unix_endpoint(&path, &token)).unwrap().unwrap();
        File::from(fd).write_all(b"hello").unwrap();
        let mut got = Vec::new();
        listener.accept().unwrap().0.read_to_end(&mut got).unwrap();
        assert_eq!(&got[..token.len()], &token);
        assert_eq!(&got[token.len()..], b"hello");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_token_sends_nothing_and_a_bad_length_is_refused() {
        let path = socket_path("no-token");
        let listener = UnixListener::bind(&path).unwrap();
        drop(dial(&unix_endpoint(&path, b"")).unwrap().unwrap());
        let mut got = Vec::new();
        listener.accept().unwrap().0.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
        let err = dial(&unix_endpoint(&path, b"short")).err().unwrap();
        assert!(matches!(err, StdioError::TokenLength(5, _)), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
