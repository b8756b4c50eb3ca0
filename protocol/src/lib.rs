//! The contract between the host side of Hull (shim, VMM) and the guest agent.
//!
//! Both sides depend on this crate and nothing else of each other. The agent
//! API itself lives in `proto/agent.proto` (package `hull.agent.v1`) and is
//! compiled to ttrpc code at build time: see [`agent`] (messages) and
//! [`agent_ttrpc`] (client, server trait and service registration); the
//! client runs on [`rpc::Client`], a ttrpc client that does not poll. The VM
//! configuration the shim hands to hull-vmm is [`vm`], hull-vmm's control
//! socket protocol [`control`], the id rule [`ids`], and the one error-chain
//! formatter [`error::chain`].

pub mod control;
pub mod error;
pub mod ids;
pub mod rpc;
pub mod vm;

/// vsock port on which the guest agent serves its ttrpc API.
pub const AGENT_PORT: u32 = 1024;

/// Line the agent prints on the guest console once it is ready to serve.
/// Tests and boot benchmarks wait for it.
pub const READY_MARKER: &str = "HULL_AGENT_READY";

/// Version of the agent API package (`hull.agent.v1`).
pub const API_VERSION: &str = "hull.agent.v1";

/// Where the agent bind-mounts the pod's network namespace (the one holding
/// the pod's interfaces) when CreateSandbox gives it a network.
pub const GUEST_POD_NETNS: &str = "/run/hull/netns/pod";

/// vsock CID of the host, which the agent dials for stdio streams.
pub const HOST_CID: u32 = 2;

/// Length of the per-stream secret (`StreamEndpoint.token`) that the agent
/// writes first on every stdio stream it dials.
pub const STREAM_TOKEN_LEN: usize = 16;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/gen/mod.rs"));
}

pub use generated::{agent, agent_ttrpc};

/// Major version of an API version string such as `hull.agent.v1` (`Some(1)`).
pub fn api_major(version: &str) -> Option<u32> {
    version.strip_prefix("hull.agent.v")?.parse().ok()
}

/// Whether a peer speaking `theirs` can talk to this side: same major version.
pub fn compatible(theirs: &str) -> bool {
    matches!((api_major(theirs), api_major(API_VERSION)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    #[test]
    fn api_version_parses_and_matches() {
        assert_eq!(api_major(API_VERSION), Some(1));
        assert!(compatible("hull.agent.v1"));
        assert!(!compatible("hull.agent.v2"));
        assert!(!compatible("garbage"));
    }

    #[test]
    fn messages_round_trip() {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec_json = br#"{"ociVersion":"1.0.2"}"#.to_vec();
        let mut ep = agent::StreamEndpoint::new();
        ep.set_vsock_port(5000);
        req.stdio.mut_or_insert_default().stdout = Some(ep).into();
        let bytes = req.write_to_bytes().unwrap();
        let back = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.stdio.stdout.vsock_port(), 5000);
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        assert!(agent::StatsResponse::parse_from_bytes(&[0xff, 0xff, 0xff]).is_err());
    }
}
