//! The `-info` probe: containerd 2.x runs `containerd-shim-hull-v2 -info`, writes the
//! runtime options (a protobuf `Any`) on its stdin and reads a protobuf
//! `containerd.types.RuntimeInfo` from its stdout: the runtime's name, version and
//! features (`ctr plugins inspect-runtime` shows them).

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

/// The runtime name containerd knows Hull by.
pub const RUNTIME_NAME: &str = "io.containerd.hull.v2";
/// Type of the `features` field: the OCI runtime-spec `features.json` document, as JSON.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// Most option bytes read from stdin; Hull takes no runtime options.
const MAX_OPTIONS: u64 = 1 << 20;

/// What Hull says about itself.
pub fn runtime_info() -> RuntimeInfo {
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "annotations": {
            "io.hull.isolation": "microvm",
            "io.hull.vmm": "hull-vmm (KVM)",
        },
    });
    RuntimeInfo {
        name: RUNTIME_NAME.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("HULL_COMMIT").to_string(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features.to_string().into_bytes(),
            ..Default::default()
        }),
        annotations: [
            ("io.hull.isolation".to_string(), "microvm".to_string()),
            (
                "io.hull.commit".to_string(),
                env!("HULL_COMMIT").to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// Answers the probe: drains the options containerd sends (unless stdin is a
/// terminal, a person running `-info` by hand) and prints the answer.
pub fn run() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut options = Vec::new();
        stdin
            .lock()
            .take(MAX_OPTIONS)
            .read_to_end(&mut options)
            .context("read the runtime options on stdin")?;
    }
    let bytes = runtime_info()
        .write_to_bytes()
        .context("encode the runtime info")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .context("write the runtime info to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_with_name_version_and_features() {
        let bytes = runtime_info().write_to_bytes().unwrap();
        let back = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.name, "io.containerd.hull.v2");
        assert_eq!(back.version.version, env!("CARGO_PKG_VERSION"));
        assert!(!back.version.revision.is_empty());
        assert_eq!(back.features.type_url, FEATURES_TYPE_URL);
        let features: serde_json::Value = serde_json::from_slice(&back.features.value).unwrap();
        assert_eq!(features["ociVersionMin"], "1.0.0");
        assert_eq!(features["annotations"]["io.hull.isolation"], "microvm");
        assert_eq!(back.annotations["io.hull.isolation"], "microvm");
    }
}
