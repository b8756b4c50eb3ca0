//! What a lab test's pods left on the host: Hull's processes, pod state files, mounts; and
//! the wait for teardown to finish before that is asserted empty.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::procs::pod_processes;

/// The host processes a Hull pod runs (argv0 endings).
pub const MACHINERY: [&str; 3] = ["hull-vmm", "virtiofsd", "containerd-shim-hull-v2"];

/// What is left of a test's pods: [`MACHINERY`] processes whose command line names one of
/// `markers`, entries of `state_dir`, mounts whose line names `mount_marker`; one line each.
pub fn leftovers(markers: &[&str], state_dir: &Path, mount_marker: &str) -> Vec<String> {
    let mut left: Vec<String> = pod_processes(markers, &MACHINERY)
        .into_iter()
        .map(|(pid, name)| format!("process {pid} {name}"))
        .collect();
    left.extend(
        std::fs::read_dir(state_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("file {}", e.path().display())),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(mount_marker))
            .map(|l| format!("mount {l}")),
    );
    left
}

/// Takes `census` every 500 ms until it is empty or `within` has passed; the last one.
pub fn settled(within: Duration, mut census: impl FnMut() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut left = census();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        left = census();
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_lists_state_files_and_settles_when_they_go() {
        let dir = std::env::temp_dir().join(format!("hull-census-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pod")).unwrap();
        let marker = "/no/such/hull/marker";
        let left = leftovers(&[marker], &dir, marker);
        assert_eq!(left, [format!("file {}", dir.join("pod").display())]);
        let mut calls = 0;
        let last = settled(Duration::from_secs(5), || {
            calls += 1;
            if calls == 2 {
                std::fs::remove_dir(dir.join("pod")).unwrap();
            }
            leftovers(&[marker], &dir, marker)
        });
        assert!(last.is_empty(), "{last:?}");
        assert_eq!(calls, 2, "settled once the state file went");
        let stuck = settled(Duration::from_millis(100), || vec!["x".into()]);
        assert_eq!(stuck, ["x"]);
        std::fs::remove_dir(&dir).unwrap();
    }
}
