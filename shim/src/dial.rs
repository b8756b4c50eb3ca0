//! Dialing a port in the guest through hull-vmm's hybrid vsock socket
//! (`CONNECT <port>` → `OK <n>`): the shim reaches the agent this way, and so
//! do the node tools (hull-monitor asks the agent for the guest's figures).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guest::read_connect_answer;

/// Errors of dialing a guest port.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to guest port {port} through {uds}")]
    Connect {
        port: u32,
        uds: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port}: the VMM answered {answer:?} instead of `OK <n>`")]
    Refused { port: u32, answer: String },
}

/// Connects to guest `port` through the hybrid vsock socket `uds`; the
/// handshake's answer is awaited at most `timeout`, after which the stream
/// blocks again (the caller bounds its own calls).
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, DialError> {
    let err = |source| DialError::Connect {
        port,
        uds: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(err)?;
    let (answer, accepted) = read_connect_answer(&stream).map_err(err)?;
    if !accepted {
        return Err(DialError::Refused { port, answer });
    }
    stream.set_read_timeout(None).map_err(err)?;
    Ok(stream)
}
