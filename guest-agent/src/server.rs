//! The ttrpc server on vsock (guest) or a Unix socket (host tests).
//!
//! Only the host may call the API: every accepted vsock connection whose peer
//! CID is not the host's (2) is closed before ttrpc reads a byte from it. The
//! guest kernel has no vsock loopback and hull-vmm forwards only guest-to-host
//! packets, so a container cannot reach this port at all; this check is the
//! last line should either of those ever change.

use std::os::fd::RawFd;
use std::sync::Arc;

use hull_protocol::agent_ttrpc;
use nix::sys::socket::{getpeername, AddressFamily, SockaddrLike, SockaddrStorage};
use ttrpc::{AcceptHook, ConnectionData, HookError, HookOutput};

use crate::rpc::Service;
use crate::sandbox::Sandbox;

/// Worker threads per connection: blocking calls (WaitProcess, OomEvent)
/// each hold one.
const MAX_THREADS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad listen address {0:?}: use unix:/path or vsock:PORT")]
    Address(String),
    #[error("ttrpc server on {addr}")]
    Ttrpc {
        addr: String,
        #[source]
        source: ttrpc::Error,
    },
}

/// Turns `unix:/path` or `vsock:PORT` into ttrpc's address form.
pub fn ttrpc_address(listen: &str) -> Result<String, ServerError> {
    if let Some(path) = listen.strip_prefix("unix:") {
        if path.starts_with('/') {
            let _ = std::fs::remove_file(path);
            return Ok(format!("unix://{path}"));
        }
    }
    if let Some(port) = listen.strip_prefix("vsock:") {
        if let Ok(port) = port.parse::<u32>() {
            return Ok(format!("vsock://-1:{port}"));
        }
    }
    Err(ServerError::Address(listen.into()))
}

/// Binds and starts serving in the background; the returned server must live.
pub fn start(listen: &str, sandbox: Arc<Sandbox>) -> Result<ttrpc::Server, ServerError> {
    let addr = ttrpc_address(listen)?;
    let err = |source| ServerError::Ttrpc {
        addr: addr.clone(),
        source,
    };
    let service = agent_ttrpc::create_agent(Arc::new(Service { sandbox }));
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(err)?
        .register_service(service)
        .set_accept_hook(HostOnly)
        .set_thread_count_max(MAX_THREADS);
    server.start().map_err(err)?;
    tracing::info!(%addr, "serving");
    Ok(server)
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Vsock {
        cid: u32,
    },
    /// Host tests: the socket file's permissions guard it.
    Unix,
    Other(Option<AddressFamily>),
}

/// The API serves the host and nothing else.
fn admit(peer: Peer) -> Result<(), String> {
    match peer {
        Peer::Vsock { cid } if cid == hull_protocol::HOST_CID => Ok(()),
        Peer::Vsock { cid } => Err(format!(
            "vsock peer CID {cid} is not the host (CID {})",
            hull_protocol::HOST_CID
        )),
        Peer::Unix => Ok(()),
        Peer::Other(family) => Err(format!("peer of address family {family:?}")),
    }
}

fn peer_of(fd: RawFd) -> Result<Peer, HookError> {
    let addr =
        getpeername::<SockaddrStorage>(fd).map_err(|e| HookError::Io(std::io::Error::from(e)))?;
    Ok(match (addr.family(), addr.as_vsock_addr()) {
        (_, Some(vsock)) => Peer::Vsock { cid: vsock.cid() },
        (Some(AddressFamily::Unix), _) => Peer::Unix,
        (family, _) => Peer::Other(family),
    })
}

/// ttrpc's per-connection hook, run on the listener thread before the
/// connection is served; a refusal makes ttrpc close the connection.
#[derive(Debug)]
struct HostOnly;

impl AcceptHook for HostOnly {
    fn on_accept(&self, fd: RawFd) -> Result<HookOutput, HookError> {
        let peer = peer_of(fd)?;
        if let Err(why) = admit(peer) {
            tracing::warn!(?peer, "refused an API connection: {why}");
            return Err(HookError::Rejected(why));
        }
        Ok(HookOutput {
            data: ConnectionData::default(),
            payload_transform: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_is_admitted() {
        assert!(admit(Peer::Vsock { cid: 2 }).is_ok());
        for cid in [0, 1, 3, 4, u32::MAX] {
            let err = admit(Peer::Vsock { cid }).unwrap_err();
            assert!(err.contains(&format!("CID {cid}")), "{err}");
        }
        assert!(admit(Peer::Unix).is_ok());
        assert!(admit(Peer::Other(Some(AddressFamily::Inet))).is_err());
        assert!(admit(Peer::Other(None)).is_err());
    }

    #[test]
    fn a_unix_peer_is_recognised() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(peer_of(a.as_raw_fd()).unwrap(), Peer::Unix);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(ttrpc_address("vsock:1024").unwrap(), "vsock://-1:1024");
        assert_eq!(
            ttrpc_address("unix:/nonexistent/hull.sock").unwrap(),
            "unix:///nonexistent/hull.sock"
        );
        assert!(ttrpc_address("tcp:1").is_err());
        assert!(ttrpc_address("unix:relative").is_err());
    }
}
