//! The shim process around the Task service: the `start` and `delete`
//! subcommands, the `-info` probe, serving ttrpc, and logging to containerd's log FIFO.

pub mod cleanup;
pub mod info;
mod logging;
pub(crate) use logging::enable_debug;
pub mod serve;
pub mod start;

use std::path::Path;

use crate::task::SANDBOX_ID_ANNOTATION;

/// Errors of the shim process's own plumbing.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ttrpc server")]
    Ttrpc(#[source] containerd_shim::protos::ttrpc::Error),
}

/// The pod a bundle's container belongs to: its CRI sandbox id, or its own id.
pub fn sandbox_id(bundle: &Path, container_id: &str) -> String {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.annotations().clone())
        .and_then(|mut a| a.remove(SANDBOX_ID_ANNOTATION))
        .unwrap_or_else(|| container_id.to_string())
}

/// The filesystem path of a `unix://` shim address.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Writes `address` in the current directory (the bundle), atomically.
pub fn write_address(address: &str) -> Result<(), ShimError> {
    let tmp = Path::new(".address.tmp");
    std::fs::write(tmp, address)
        .and_then(|()| std::fs::rename(tmp, "address"))
        .map_err(|source| ShimError::Io {
            context: "write the address file in the bundle".to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_id_comes_from_the_cri_annotation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sandbox_id(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod9"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_id(dir.path(), "c1"), "pod9");
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/ab"),
            "/run/containerd/s/ab"
        );
        assert_eq!(socket_path("/x"), "/x");
    }
}
