//! UpdateContainer: new resource limits for an existing container's cgroup
//! (CRI UpdateContainerResources), written as CreateContainer writes them.

use oci_spec::runtime::LinuxResources;

use super::{Container, ContainerError};
use crate::cgroup::Cgroup;

pub fn do_update(container: &Container, resources_json: &[u8]) -> Result<(), ContainerError> {
    let written = update_cgroup(&container.cgroup, resources_json)?;
    tracing::info!(container = %container.id, files = ?written, "resources updated");
    Ok(())
}

/// Parses the OCI `LinuxResources` JSON and writes what it sets; what it
/// leaves out stays as it is. Returns the files written.
fn update_cgroup(cgroup: &Cgroup, resources_json: &[u8]) -> Result<Vec<String>, ContainerError> {
    let res: LinuxResources = serde_json::from_slice(resources_json).map_err(|e| {
        ContainerError::Invalid(format!("resources are not OCI LinuxResources JSON: {e}"))
    })?;
    Ok(cgroup.apply(&res)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in cgroup: plain files in a temp dir with a fresh cgroup's values.
    fn fake_cgroup() -> (tempfile::TempDir, Cgroup) {
        let dir = tempfile::tempdir().unwrap();
        for (file, value) in [
            ("memory.max", "268435456"),
            ("memory.low", "0"),
            ("cpu.max", "50000 100000"),
            ("cpu.weight", "100"),
            ("pids.max", "max"),
        ] {
            std::fs::write(dir.path().join(file), value).unwrap();
        }
        let cgroup = Cgroup {
            path: dir.path().into(),
        };
        (dir, cgroup)
    }

    fn file(cgroup: &Cgroup, name: &str) -> String {
        std::fs::read_to_string(cgroup.path.join(name)).unwrap()
    }

    #[test]
    fn only_what_the_request_sets_is_written() {
        let (_dir, cgroup) = fake_cgroup();
        let written = update_cgroup(&cgroup, br#"{"memory":{"limit":134217728}}"#).unwrap();
        assert_eq!(written, ["memory.max"]);
        assert_eq!(file(&cgroup, "memory.max"), "134217728");
        assert_eq!(file(&cgroup, "cpu.max"), "50000 100000");
        assert_eq!(file(&cgroup, "cpu.weight"), "100");
        assert_eq!(file(&cgroup, "pids.max"), "max");

        let all = br#"{"memory":{"limit":201326592,"reservation":67108864},
            "cpu":{"shares":2048,"quota":30000,"period":100000,"cpus":"0","mems":"0"},
            "pids":{"limit":64}}"#;
        update_cgroup(&cgroup, all).unwrap();
        assert_eq!(file(&cgroup, "memory.max"), "201326592");
        assert_eq!(file(&cgroup, "memory.low"), "67108864");
        assert_eq!(file(&cgroup, "cpu.max"), "30000 100000");
        assert_eq!(file(&cgroup, "cpu.weight"), "79");
        assert_eq!(file(&cgroup, "cpuset.cpus"), "0");
        assert_eq!(file(&cgroup, "cpuset.mems"), "0");
        assert_eq!(file(&cgroup, "pids.max"), "64");
    }

    #[test]
    fn a_lone_cpu_period_keeps_the_quota_in_force() {
        let (_dir, cgroup) = fake_cgroup();
        update_cgroup(&cgroup, br#"{"cpu":{"period":200000}}"#).unwrap();
        assert_eq!(file(&cgroup, "cpu.max"), "50000 200000");
        // A lone quota is written alone: the kernel keeps the period.
        update_cgroup(&cgroup, br#"{"cpu":{"quota":-1}}"#).unwrap();
        assert_eq!(file(&cgroup, "cpu.max"), "max");
    }

    #[test]
    fn zero_means_not_set_and_minus_one_unlimited() {
        let (_dir, cgroup) = fake_cgroup();
        let zeros = br#"{"memory":{"limit":0},"cpu":{"shares":0,"quota":0,"period":0},
            "pids":{"limit":0}}"#;
        assert!(update_cgroup(&cgroup, zeros).unwrap().is_empty());
        assert_eq!(file(&cgroup, "memory.max"), "268435456");
        update_cgroup(&cgroup, br#"{"memory":{"limit":-1},"pids":{"limit":-1}}"#).unwrap();
        assert_eq!(file(&cgroup, "memory.max"), "max");
        assert_eq!(file(&cgroup, "pids.max"), "max");
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let (_dir, cgroup) = fake_cgroup();
        for bad in [&b"not json"[..], br#"{"memory":{"limit":"lots"}}"#] {
            let err = update_cgroup(&cgroup, bad).unwrap_err();
            assert!(matches!(err, ContainerError::Invalid(_)), "{err}");
            assert!(err.to_string().contains("LinuxResources"), "{err}");
        }
        let escape = br#"{"memory":{"limit":1048576},"unified":{"../x":"1"}}"#;
        let err = update_cgroup(&cgroup, escape).unwrap_err();
        assert!(
            matches!(
                err,
                ContainerError::Cgroup(crate::cgroup::CgroupError::BadKey(_))
            ),
            "{err}"
        );
        assert_eq!(file(&cgroup, "memory.max"), "268435456");
    }

    #[test]
    fn a_missing_cgroup_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = Cgroup {
            path: dir.path().join("gone"),
        };
        let err = update_cgroup(&cgroup, br#"{"pids":{"limit":5}}"#).unwrap_err();
        let text = hull_protocol::error::chain(&err);
        assert!(text.contains("pids.max"), "{text}");
    }
}
