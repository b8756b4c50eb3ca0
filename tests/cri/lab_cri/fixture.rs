//! One scenario's pod for one handler, set up as every lab_cri scenario needs it: a name, the
//! host cgroup kubelet makes (`cgroup_parent`), a CRI log directory, the sandbox config; then
//! started with one container, and torn down with a check that nothing of it is left.

use super::*;
use hull_tests::census;

/// A pod of a scenario for one handler; its id once RunPodSandbox answered.
pub(crate) struct PodFixture {
    pub(crate) handler: String,
    /// The pod's host cgroup: cgroupfs form (kubelet's `cgroup_parent`) and its directory.
    pub(crate) parent: String,
    pub(crate) cgroup_dir: PathBuf,
    /// The pod's CRI log directory.
    pub(crate) logs: PathBuf,
    pub(crate) config: PodSandboxConfig,
    pub(crate) id: Option<String>,
}

impl PodFixture {
    /// Makes the pod's host cgroup and log directory (under `base`) and its sandbox config
    /// (`share_pid`, `resources`: as [`pod_config`] takes them).
    pub(crate) fn new(
        base: &Path,
        handler: &str,
        name: &str,
        share_pid: bool,
        resources: Option<LinuxContainerResources>,
    ) -> Self {
        let parent = format!("/{CGROUP_ROOT}/{name}");
        let cgroup_dir = Path::new(CGROUP_FS).join(&parent[1..]);
        std::fs::create_dir_all(&cgroup_dir).unwrap();
        let logs = base.join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        let config = pod_config(name, &logs, &parent, share_pid, resources);
        Self {
            handler: handler.into(),
            parent,
            cgroup_dir,
            logs,
            config,
            id: None,
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer of `container` (the pod's id is kept
    /// at once, for the teardown); the pod, the container, the time taken.
    pub(crate) fn run(
        &mut self,
        cri: &mut Cri,
        container: &ContainerConfig,
    ) -> hull_cri_tests::Result<(String, String, Duration)> {
        let started = Instant::now();
        let pod = cri.run_pod(&self.config, &self.handler)?;
        self.id = Some(pod.clone());
        let id = cri.create_container(&pod, container, &self.config)?;
        cri.start_container(&id)?;
        Ok((pod, id, started.elapsed()))
    }

    /// [`Self::run`], its failure reported as `what`; a pod that failed to start is torn down
    /// at once (the scenario goes on to the next handler).
    pub(crate) fn start(
        &mut self,
        cri: &mut Cri,
        r: &mut Report,
        what: &str,
        container: &ContainerConfig,
    ) -> Option<(String, String, Duration)> {
        let started = self.run(cri, container);
        let started = r.result(&self.handler, what, started);
        if started.is_none() {
            self.teardown(cri, r);
        }
        started
    }

    /// StopPodSandbox + RemovePodSandbox, each checked (`note` follows the call's name in
    /// the report), if the pod was started.
    pub(crate) fn remove(&mut self, cri: &mut Cri, r: &mut Report, note: &str) {
        if let Some(pod) = self.id.take() {
            let handler = &self.handler;
            r.result(
                handler,
                &format!("StopPodSandbox{note}"),
                cri.stop_pod(&pod),
            );
            r.result(
                handler,
                &format!("RemovePodSandbox{note}"),
                cri.remove_pod(&pod),
            );
        }
    }

    /// Stops and removes the pod; checks nothing is left; removes its cgroup.
    pub(crate) fn teardown(&mut self, cri: &mut Cri, r: &mut Report) {
        self.remove(cri, r, "");
        let left = census::settled(Duration::from_secs(60), || leftovers(&self.cgroup_dir));
        r.check(
            &self.handler,
            left.is_empty(),
            format!("nothing left after RemovePodSandbox: {left:?}"),
        );
        let _ = std::fs::remove_dir(&self.cgroup_dir);
    }
}

/// Host processes of this binary's pods (their command line names [`BASE`] or [`RUN_DIR`])
/// whose argv0 ends in one of `names`: their pids.
pub(crate) fn pod_processes(names: &[&str]) -> Vec<i32> {
    hull_tests::procs::pod_processes(&[BASE, RUN_DIR], names)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// What a removed pod left: Hull processes, pod state, mounts, cgroups below its parent.
fn leftovers(cgroup_dir: &Path) -> Vec<String> {
    let mut left = census::leftovers(
        &[BASE, RUN_DIR],
        &Path::new(RUN_DIR).join("k8s.io"),
        RUN_DIR,
    );
    left.extend(
        std::fs::read_dir(cgroup_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| format!("cgroup {}", e.path().display())),
    );
    left
}
