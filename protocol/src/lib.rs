//! The contract between the host side of Hull (shim, VMM) and the guest agent.
//!
//! Both sides depend on this crate and nothing else of each other.

/// vsock port on which the guest agent serves its ttrpc API.
pub const AGENT_PORT: u32 = 1024;

/// Line the agent prints on the guest console once it is ready to serve.
/// Tests and boot benchmarks wait for it.
pub const READY_MARKER: &str = "HULL_AGENT_READY";

/// Version of the agent API package (`hull.agent.v1`).
pub const API_VERSION: &str = "hull.agent.v1";
