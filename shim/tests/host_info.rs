//! The shim binary as containerd probes it: `-info` (containerd 2.x writes the
//! runtime options on stdin and decodes a `RuntimeInfo` from stdout) and `-v`.

use std::io::Write;
use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");

#[test]
fn info_probe_answers_a_runtime_info() {
    let mut child = Command::new(SHIM)
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // containerd sends the runtime options (a protobuf Any); Hull takes none.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\x0a\x03abc")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.name, "io.containerd.hull.v2");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.version.revision.is_empty());
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    assert_eq!(features["ociVersionMin"], "1.0.0");
}

#[test]
fn version_flags_print_name_version_and_commit() {
    for flag in ["-v", "-version", "--version"] {
        let out = Command::new(SHIM).arg(flag).output().unwrap();
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(
            line.starts_with(&format!(
                "containerd-shim-hull-v2 {} (commit ",
                env!("CARGO_PKG_VERSION")
            )),
            "{flag}: {line}"
        );
    }
}
