//! The ttrpc server on vsock (guest) or a Unix socket (host tests).

use std::sync::Arc;

use hull_protocol::agent_ttrpc;

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
        .set_thread_count_max(MAX_THREADS);
    server.start().map_err(err)?;
    tracing::info!(%addr, "serving");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

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
