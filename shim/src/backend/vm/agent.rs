//! The ttrpc connection to `hull-agent` over the hybrid vsock, the version
//! handshake, and how agent errors become backend errors.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use hull_protocol::agent::VersionRequest;
use hull_protocol::agent_ttrpc::AgentClient;
use ttrpc::context::{self, Context};
use ttrpc::Code;

use super::hybrid;
use crate::backend::BackendError;

/// A context for a call expected to answer within `timeout` (the config's
/// `agent_timeout_secs`).
pub fn prompt(timeout: Duration) -> Context {
    context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

/// A context for a call that blocks until something happens in the guest.
pub fn blocking() -> Context {
    context::with_timeout(0)
}

/// Whether a failed call never got an answer from the agent (a timeout or a
/// broken connection), as opposed to an error status the agent returned.
pub fn unanswered(err: &ttrpc::Error) -> bool {
    !matches!(err, ttrpc::Error::RpcStatus(_))
}

/// Connects to the agent's port and checks that it speaks our API version.
/// Returns the client and a duplicate of its socket, whose shutdown ends every
/// call in flight (how the shim gives up on a hung agent).
pub fn connect(uds: &Path, timeout: Duration) -> Result<(AgentClient, OwnedFd), BackendError> {
    let stream = hybrid::connect(uds, hull_protocol::AGENT_PORT, timeout)
        .map_err(|e| BackendError::Sandbox(Box::new(e)))?;
    let conn = OwnedFd::from(
        stream
            .try_clone()
            .map_err(|e| BackendError::Sandbox(Box::new(e)))?,
    );
    let client = hull_protocol::rpc::Client::new(stream, "agent")
        .map_err(|e| BackendError::Agent(format!("ttrpc client: {e}")))?;
    let client = AgentClient::new(client);
    let mut req = VersionRequest::new();
    req.api_version = hull_protocol::API_VERSION.into();
    let version = client
        .version(prompt(timeout), &req)
        .map_err(map("Version"))?;
    if !hull_protocol::compatible(&version.api_version) {
        return Err(BackendError::Agent(format!(
            "the guest agent speaks {} and this shim {}: install a matching initramfs",
            version.api_version,
            hull_protocol::API_VERSION
        )));
    }
    tracing::info!(
        agent = %version.agent_version,
        uptime_secs = version.uptime_secs,
        "guest agent connected"
    );
    Ok((client, conn))
}

/// Maps a failed agent call to a backend error, naming the call. The agent's
/// status code keeps its kind (NOT_FOUND stays not-found for containerd).
pub fn map(call: &'static str) -> impl Fn(ttrpc::Error) -> BackendError {
    move |err| match err {
        ttrpc::Error::RpcStatus(status) => {
            let msg = format!("{call}: {}", status.message);
            match status.code() {
                Code::NOT_FOUND => BackendError::Missing(msg),
                Code::ALREADY_EXISTS => BackendError::Exists(msg),
                Code::FAILED_PRECONDITION => BackendError::Precondition(msg),
                Code::INVALID_ARGUMENT => BackendError::Invalid(msg),
                Code::UNIMPLEMENTED => BackendError::Unsupported(call),
                _ => BackendError::Agent(msg),
            }
        }
        other => BackendError::Agent(format!("{call}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_statuses_map_to_backend_errors() {
        let status =
            |code, msg: &str| ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()));
        let e = map("Stats")(status(Code::INVALID_ARGUMENT, "bad id"));
        assert!(
            matches!(e, BackendError::Invalid(ref m) if m == "Stats: bad id"),
            "{e}"
        );
        let e = map("Stats")(status(Code::NOT_FOUND, "container c9 not found"));
        assert!(
            matches!(e, BackendError::Missing(ref m) if m == "Stats: container c9 not found"),
            "{e}"
        );
        let e = map("CreateContainer")(status(Code::ALREADY_EXISTS, "c1"));
        assert!(matches!(e, BackendError::Exists(_)), "{e}");
        let e = map("ResizePty")(status(Code::FAILED_PRECONDITION, "no terminal"));
        assert!(matches!(e, BackendError::Precondition(_)), "{e}");
        let e = map("Start")(status(Code::INTERNAL, "boom"));
        assert!(matches!(e, BackendError::Agent(_)), "{e}");
        let e = map("ResizePty")(status(Code::UNIMPLEMENTED, ""));
        assert!(matches!(e, BackendError::Unsupported("ResizePty")), "{e}");
        let closed = ttrpc::Error::Others("socket closed".into());
        assert!(unanswered(&closed));
        assert!(!unanswered(&status(Code::NOT_FOUND, "no such container")));
        let e = map("WaitProcess")(closed);
        assert!(matches!(e, BackendError::Agent(_)), "{e}");
    }

    /// Found by the `agent_replies` fuzz target: a reply frame claiming 4 GiB,
    /// then a hang-up. The call must end at once with an error that names the
    /// length (ttrpc's own client used to discard the body 4 KiB at a time).
    #[test]
    fn an_oversized_reply_then_a_hang_up_ends_the_call() {
        use hull_protocol::agent::StatsRequest;
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut header = [0u8; 10];
            theirs.read_exact(&mut header).unwrap();
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let mut body = vec![0u8; len as usize];
            theirs.read_exact(&mut body).unwrap();
            // Length u32::MAX, stream 1, a response, no flags; then the hang-up.
            theirs
                .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 2, 0])
                .unwrap();
        });
        let client = AgentClient::new(hull_protocol::rpc::Client::new(ours, "agent").unwrap());
        let started = std::time::Instant::now();
        // The client closes the connection and fails the call with the reason
        // ("a frame of 4294967295 bytes, over ttrpc's limit ..."), which names
        // the cause in the shim's error.
        let err = client
            .stats(blocking(), &StatsRequest::new())
            .map_err(map("Stats"))
            .expect_err("no reply came");
        assert!(err.to_string().contains("4294967295"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        agent.join().unwrap();
    }
}
