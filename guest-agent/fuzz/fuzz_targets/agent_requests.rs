//! Fuzzes the agent's decoding of every ttrpc request (the first byte picks
//! the type, the rest is its protobuf) and the checks each handler makes on
//! the decoded fields before any syscall: ids, the rootfs path, the OCI spec
//! or process inside, the pod network.
#![no_main]

use std::path::Path;

use hull_agent::checks::{check_lexical, check_network};
use hull_protocol::agent::*;
use hull_protocol::ids::{validate_id, IdKind};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn ids(container: &str, exec: &str) {
    let _ = validate_id(IdKind::Container, container);
    if !exec.is_empty() {
        let _ = validate_id(IdKind::Exec, exec);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, msg)) = data.split_first() else {
        return;
    };
    match kind % 15 {
        0 => {
            if let Ok(r) = CreateSandboxRequest::parse_from_bytes(msg) {
                let _ = validate_id(IdKind::Sandbox, &r.sandbox_id);
                if let Some(net) = r.network.as_ref() {
                    let _ = check_network(net);
                }
            }
        }
        1 => {
            if let Ok(r) = CreateContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
                let _ = check_lexical(Path::new(&r.rootfs));
                hull_agent_fuzz::spec_json(&r.oci_spec_json);
            }
        }
        2 => {
            if let Ok(r) = ExecProcessRequest::parse_from_bytes(msg) {
                ids(&r.container_id, &r.exec_id);
                hull_agent_fuzz::process_json(&r.oci_process_json);
            }
        }
        3 => {
            if let Ok(r) = SignalProcessRequest::parse_from_bytes(msg) {
                ids(&r.container_id, &r.exec_id);
            }
        }
        4 => {
            if let Ok(r) = WaitProcessRequest::parse_from_bytes(msg) {
                ids(&r.container_id, &r.exec_id);
            }
        }
        5 => {
            if let Ok(r) = ResizePtyRequest::parse_from_bytes(msg) {
                ids(&r.container_id, &r.exec_id);
            }
        }
        6 => {
            if let Ok(r) = CloseStdinRequest::parse_from_bytes(msg) {
                ids(&r.container_id, &r.exec_id);
            }
        }
        7 => {
            if let Ok(r) = StartContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        8 => {
            if let Ok(r) = ListPidsRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        9 => {
            if let Ok(r) = StatsRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        10 => {
            if let Ok(r) = PauseContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        11 => {
            if let Ok(r) = ResumeContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        12 => {
            if let Ok(r) = RemoveContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
            }
        }
        14 => {
            if let Ok(r) = UpdateContainerRequest::parse_from_bytes(msg) {
                ids(&r.container_id, "");
                hull_agent_fuzz::resources_json(&r.oci_resources_json);
            }
        }
        _ => {
            let _ = VersionRequest::parse_from_bytes(msg)
                .map(|r| hull_protocol::compatible(&r.api_version));
            let _ = OomEventRequest::parse_from_bytes(msg);
            let _ = DestroySandboxRequest::parse_from_bytes(msg);
        }
    }
});
