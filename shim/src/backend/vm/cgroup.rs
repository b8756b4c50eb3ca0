//! Host accounting: hull-vmm and virtiofsd go into the pod's host cgroup (the
//! sandbox spec's `linux.cgroupsPath`, which kubelet's cgroup parent holds),
//! so guest RAM and VMM overhead count against the pod, as runc's processes
//! would. Both cgroupfs (`/kubepods/pod…/<id>`) and systemd
//! (`kubepods-pod….slice:cri-containerd:<id>`) forms; cgroup v2, and the
//! memory, cpu, cpuacct and pids hierarchies of v1.

use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies Hull places the VM in (cpuset needs its masks set first: left out).
const V1_HIERARCHIES: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// The v2 controllers enabled down to the pod's cgroup, as runc does.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Errors of placing the VM in the pod's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "linux.cgroupsPath {0:?} is neither an absolute cgroupfs path without `..` nor a \
         systemd `slice:prefix:name`"
    )]
    BadPath(String),
    #[error("cannot make the pod's cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move process {pid} into the pod's cgroup {path}")]
    Move {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup path, relative to a hierarchy's root, of a spec's `cgroupsPath`.
pub fn relative_path(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadPath(cgroups_path.to_string());
    if let Some(rest) = cgroups_path.strip_prefix('/') {
        let clean = rest
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
        return if clean {
            Ok(PathBuf::from(rest))
        } else {
            Err(bad())
        };
    }
    // systemd: "<slice>:<prefix>:<name>", the unit being <prefix>-<name>.scope.
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(bad());
    };
    let valid = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !valid(name) || (!prefix.is_empty() && !valid(prefix)) {
        return Err(bad());
    }
    let mut path = PathBuf::new();
    if !slice.is_empty() && slice != "-.slice" {
        let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
        if !valid(stem) || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
            return Err(bad());
        }
        // "a-b-c.slice" lives in "a.slice/a-b.slice/a-b-c.slice".
        let mut so_far = String::new();
        for word in stem.split('-') {
            if !so_far.is_empty() {
                so_far.push('-');
            }
            so_far.push_str(word);
            path.push(format!("{so_far}.slice"));
        }
    }
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// The pod's cgroup directories (one on v2, one per hierarchy on v1) and
/// those of them this shim made (removed again by [`PodCgroup::remove`]).
#[derive(Debug, Default)]
pub struct PodCgroup {
    dirs: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl PodCgroup {
    /// Makes the pod's cgroup from `cgroups_path` under the host's cgroup
    /// mounts; nothing (no placement) without a path.
    pub fn create(cgroups_path: Option<&Path>) -> Result<Self, CgroupError> {
        let Some(path) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(Self::default());
        };
        let text = path
            .to_str()
            .ok_or_else(|| CgroupError::BadPath(path.display().to_string()))?;
        Self::create_under(Path::new(CGROUP_ROOT), &relative_path(text)?)
    }

    fn create_under(root: &Path, relative: &Path) -> Result<Self, CgroupError> {
        let mut cgroup = Self::default();
        let unified = root.join("cgroup.controllers").exists();
        let roots: Vec<PathBuf> = if unified {
            vec![root.to_path_buf()]
        } else {
            let mut seen = Vec::new();
            for h in V1_HIERARCHIES {
                // On v1 `cpu` and `cpuacct` are often one hierarchy, linked twice.
                if let Ok(real) = root.join(h).canonicalize() {
                    if real.join("cgroup.procs").exists() && !seen.contains(&real) {
                        seen.push(real);
                    }
                }
            }
            seen
        };
        for hroot in roots {
            let mut dir = hroot.clone();
            for part in relative.components() {
                if unified {
                    enable_controllers(&dir);
                }
                dir.push(part);
                // Pods start in parallel: a parent another pod's shim makes at the same
                // moment is there, not ours (EEXIST). One it removes at that moment
                // (ENOENT below it) is made again: a few tries.
                let mut tries = 0;
                loop {
                    match std::fs::create_dir(&dir) {
                        Ok(()) => cgroup.created.push(dir.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::NotFound
                                && tries < 3
                                && dir.parent().is_some_and(|p| p != hroot) =>
                        {
                            tries += 1;
                            let _ = std::fs::create_dir_all(dir.parent().unwrap_or(&hroot));
                            continue;
                        }
                        Err(source) => {
                            cgroup.remove();
                            return Err(CgroupError::Create { path: dir, source });
                        }
                    }
                    break;
                }
            }
            cgroup.dirs.push(dir);
        }
        Ok(cgroup)
    }

    /// Moves process `pid` into the pod's cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Move {
                pid,
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The pod's cgroup directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the directories this shim made, deepest first, once empty. A parent that
    /// another pod still uses (EBUSY, ENOTEMPTY) stays, as runc leaves a parent: only the
    /// pod's own leaf is its state.
    pub fn remove(&mut self) {
        let leaves = self.dirs.clone();
        for dir in self.created.drain(..).rev() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e)
                    if !leaves.contains(&dir)
                        && matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) =>
                {
                    tracing::debug!(cgroup = %dir.display(), "a parent cgroup still in use stays");
                }
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), "cannot remove the pod's cgroup: {e}");
                }
            }
        }
    }
}

/// Enables the controllers Hull's accounting needs for the children of `dir`
/// (cgroup v2); a controller the host does not have is left out.
fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        if available.split_whitespace().any(|a| a == c) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_relative_to_the_root() {
        assert_eq!(
            relative_path("/kubepods/burstable/pod1/abc").unwrap(),
            PathBuf::from("kubepods/burstable/pod1/abc")
        );
        for bad in [
            "/",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
            "relative/path",
            "a:b",
            "a:b:c:d",
        ] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn systemd_paths_expand_their_slices() {
        assert_eq!(
            relative_path("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            relative_path(":cri-containerd:abc").unwrap(),
            PathBuf::from("cri-containerd-abc.scope")
        );
        assert_eq!(
            relative_path("-.slice::x.slice").unwrap(),
            PathBuf::from("x.slice")
        );
        for bad in [
            "kubepods.slice:cri:a/b",
            "kube/pods.slice:cri:a",
            "kubepods--x.slice:cri:a",
            "kubepods:cri:a",
            "kubepods.slice:cri:..",
        ] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_hierarchies_are_made_once_and_removed_deepest_first() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu,cpuacct", "pids"] {
            std::fs::create_dir(root.path().join(h)).unwrap();
            std::fs::write(root.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpuacct")).unwrap();
        std::fs::create_dir_all(root.path().join("memory/kubepods")).unwrap();
        let mut cg = PodCgroup::create_under(root.path(), Path::new("kubepods/pod1")).unwrap();
        assert_eq!(cg.dirs().len(), 3, "{:?}", cg.dirs());
        assert!(root.path().join("memory/kubepods/pod1").is_dir());
        assert!(root.path().join("cpu,cpuacct/kubepods/pod1").is_dir());
        // Created: memory's leaf only, cpu's and pids' parent and leaf.
        assert_eq!(cg.created.len(), 5, "{:?}", cg.created);
        cg.remove();
        assert!(
            root.path().join("memory/kubepods").is_dir(),
            "not ours: stays"
        );
        assert!(!root.path().join("memory/kubepods/pod1").exists());
        assert!(!root.path().join("pids/kubepods").exists());
    }

    #[test]
    fn parents_made_by_a_parallel_pod_are_shared_and_stay_while_in_use() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = root.path().join("pids");
        std::fs::create_dir(&hierarchy).unwrap();
        std::fs::write(hierarchy.join("cgroup.procs"), "").unwrap();
        let mut a = PodCgroup::create_under(root.path(), Path::new("default/a")).unwrap();
        let mut b = PodCgroup::create_under(root.path(), Path::new("default/b")).unwrap();
        assert_eq!(a.created.len(), 2, "{:?}", a.created);
        assert_eq!(b.created, vec![hierarchy.join("default/b")]);
        // A leaves first: its leaf goes, the parent B still uses stays.
        a.remove();
        assert!(!hierarchy.join("default/a").exists());
        assert!(hierarchy.join("default/b").is_dir());
        b.remove();
        assert!(!hierarchy.join("default/b").exists());
        // A parent removed under a starting pod is made again.
        std::fs::remove_dir(hierarchy.join("default")).unwrap();
        let c = PodCgroup::create_under(root.path(), Path::new("default/c")).unwrap();
        assert!(c.dirs()[0].is_dir());
    }

    #[test]
    fn no_path_places_nothing() {
        let cg = PodCgroup::create(None).unwrap();
        assert!(cg.dirs().is_empty());
        cg.add(1).unwrap();
    }
}
