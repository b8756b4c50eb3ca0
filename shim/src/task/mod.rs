//! containerd bookkeeping for one pod: tasks, execs, their state machine,
//! events and exit waiting, independent of what runs the containers.

mod control;
mod error;
pub mod events;
mod image_disk;
mod pod;
mod process;
pub mod rootfs;
mod sandbox;
pub mod service;
pub mod share;
pub mod stdio;

pub use pod::{Pod, SANDBOX_ID_ANNOTATION};
pub use process::to_timestamp as timestamp;

#[cfg(test)]
mod tests {
    //! The bookkeeping driven through a scripted backend (host tier: rootfs binds need root).

    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Condvar, Mutex};

    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::ExitSignal;
    use oci_spec::runtime::LinuxResources;

    use super::error::TaskError;
    use super::events::{tests::Recorder, Events};
    use super::pod::CreateRequest;
    use super::process::{Status, StdioPaths};
    use super::Pod;
    use crate::backend::{
        Backend, BackendError, ContainerRequest, ContainerStats, ExecRequest, ProcessStreams,
        Result, SandboxRequest,
    };

    type Key = (String, Option<String>);

    /// Processes run until signalled; `wait` returns 128 + signal.
    #[derive(Default)]
    struct Scripted {
        state: Mutex<ScriptedState>,
        cv: Condvar,
    }

    #[derive(Default)]
    struct ScriptedState {
        next_pid: u32,
        exits: HashMap<Key, u32>,
        fail_create: bool,
        destroyed: bool,
        sandboxes: u32,
        /// Calls by this name block until `hang` is cleared, like a hung agent.
        hang: Vec<&'static str>,
        /// (container, memory limit) of each `update`.
        updates: Vec<(String, Option<i64>)>,
    }

    impl Scripted {
        fn maybe_hang(&self, call: &'static str) {
            let mut s = self.state.lock().unwrap();
            while s.hang.contains(&call) {
                s = self.cv.wait(s).unwrap();
            }
        }
    }

    fn key(c: &str, e: Option<&str>) -> Key {
        (c.to_string(), e.map(str::to_string))
    }

    impl Backend for Scripted {
        fn create_sandbox(&self, _: &SandboxRequest) -> Result<()> {
            self.state.lock().unwrap().sandboxes += 1;
            Ok(())
        }
        fn create_container(&self, _: &ContainerRequest<'_>) -> Result<ProcessStreams> {
            if self.state.lock().unwrap().fail_create {
                return Err(BackendError::Invalid("scripted failure".into()));
            }
            Ok(ProcessStreams {
                stdout: Some(Box::new(std::io::Cursor::new(b"hello\n".to_vec()))),
                ..Default::default()
            })
        }
        fn exec(&self, _: &ExecRequest<'_>) -> Result<ProcessStreams> {
            Ok(ProcessStreams::default())
        }
        fn start(&self, _: &str, _: Option<&str>) -> Result<u32> {
            let mut s = self.state.lock().unwrap();
            s.next_pid += 1;
            Ok(100 + s.next_pid)
        }
        fn wait(&self, c: &str, e: Option<&str>) -> Result<u32> {
            let mut s = self.state.lock().unwrap();
            loop {
                if let Some(code) = s.exits.get(&key(c, e)) {
                    return Ok(*code);
                }
                s = self.cv.wait(s).unwrap();
            }
        }
        fn signal(&self, c: &str, e: Option<&str>, signal: u32, _all: bool) -> Result<()> {
            self.state
                .lock()
                .unwrap()
                .exits
                .entry(key(c, e))
                .or_insert(128 + signal);
            self.cv.notify_all();
            Ok(())
        }
        fn resize_pty(&self, _: &str, _: Option<&str>, _: u32, _: u32) -> Result<()> {
            Ok(())
        }
        fn close_stdin(&self, _: &str, _: Option<&str>) -> Result<()> {
            Ok(())
        }
        fn pids(&self, _: &str) -> Result<Vec<u32>> {
            Ok(vec![101])
        }
        fn stats(&self, _: &str) -> Result<ContainerStats> {
            self.maybe_hang("stats");
            Ok(ContainerStats::default())
        }
        fn pause(&self, _: &str) -> Result<()> {
            self.maybe_hang("pause");
            Ok(())
        }
        fn resume(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn update(&self, c: &str, resources: &LinuxResources) -> Result<()> {
            let limit = resources.memory().as_ref().and_then(|m| m.limit());
            self.state
                .lock()
                .unwrap()
                .updates
                .push((c.to_string(), limit));
            Ok(())
        }
        fn remove_container(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn next_oom(&self) -> Option<String> {
            None
        }
        fn destroy_sandbox(&self) -> Result<()> {
            self.state.lock().unwrap().destroyed = true;
            Ok(())
        }
    }

    struct Fixture {
        tmp: tempfile::TempDir,
        pod: Pod,
        backend: Arc<Scripted>,
        events: Recorder,
    }

    impl Fixture {
        fn new() -> Self {
            assert!(
                nix::unistd::geteuid().is_root(),
                "host tier: needs root for rootfs binds"
            );
            let tmp = tempfile::tempdir().unwrap();
            let backend = Arc::new(Scripted::default());
            let events = Recorder::default();
            let (sender, _) = Events::start(events.clone());
            let b = backend.clone();
            let pod = Pod::new(
                "ns",
                sender,
                Box::new(move || Ok(b.clone() as Arc<dyn Backend>)),
                Arc::new(ExitSignal::default()),
            );
            Self {
                tmp,
                pod,
                backend,
                events,
            }
        }

        fn run_dir(&self) -> std::path::PathBuf {
            self.tmp.path().join("run")
        }

        /// A bundle with a spec, and runtime options pointing at a test config.
        fn request(&self, id: &str, pod: &str) -> CreateRequest {
            let bundle = self.tmp.path().join(id);
            std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
            std::fs::write(
                bundle.join("config.json"),
                format!(
                    r#"{{"ociVersion":"1.0.2","process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
                    "root":{{"path":"rootfs"}},"annotations":{{"io.kubernetes.cri.sandbox-id":"{pod}"}}}}"#
                ),
            )
            .unwrap();
            let config = self.tmp.path().join("hull.toml");
            std::fs::write(&config, format!("run_dir = {:?}\n", self.run_dir())).unwrap();
            let path = config.to_string_lossy().into_owned();
            let mut value = vec![0x12, u8::try_from(path.len()).unwrap()];
            value.extend_from_slice(path.as_bytes());
            CreateRequest {
                id: id.to_string(),
                bundle: bundle.to_string_lossy().into_owned(),
                rootfs: Vec::new(),
                stdio: StdioPaths {
                    stdout: format!("file://{}", bundle.join("out.log").display()),
                    ..Default::default()
                },
                options: Some(Any {
                    type_url: "runtimeoptions.v1.Options".into(),
                    value,
                    ..Default::default()
                }),
            }
        }

        fn topics(&self) -> Vec<&'static str> {
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.events.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn lifecycle_drains_output_and_publishes_events_in_order() {
        let f = Fixture::new();
        f.pod.create(f.request("c1", "pod")).unwrap();
        assert!(matches!(
            f.pod.create(f.request("c1", "pod")),
            Err(TaskError::AlreadyExists(_))
        ));
        assert_eq!(f.pod.state("c1", None).unwrap().status, Status::Created);
        assert!(Path::new(&f.run_dir().join("ns/pod/shared/c1")).is_dir());
        let pid = f.pod.start("c1", None).unwrap();
        assert!(matches!(
            f.pod.start("c1", None),
            Err(TaskError::FailedPrecondition(_))
        ));
        assert!(matches!(
            f.pod.delete("c1", None),
            Err(TaskError::FailedPrecondition(_))
        ));
        f.pod.kill("c1", None, 15, false).unwrap();
        let exit = f.pod.wait("c1", None).unwrap();
        assert_eq!(exit.code, 143);
        let out = f.tmp.path().join("c1/out.log");
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "hello\n",
            "drained before the exit"
        );
        assert_eq!(f.pod.state("c1", None).unwrap().status, Status::Stopped);
        assert!(matches!(
            f.pod.kill("c1", None, 9, false),
            Err(TaskError::NotFound(_))
        ));
        assert_eq!(f.pod.delete("c1", None).unwrap(), (pid, exit));
        assert!(matches!(
            f.pod.state("c1", None),
            Err(TaskError::NotFound(_))
        ));
        assert_eq!(
            f.topics(),
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ]
        );
        assert!(
            f.backend.state.lock().unwrap().destroyed,
            "last delete stops the sandbox"
        );
        assert_eq!(
            std::fs::read_dir(f.run_dir()).unwrap().count(),
            0,
            "pod dirs removed"
        );
    }

    #[test]
    fn bad_ids_fail_before_a_sandbox_boots() {
        let f = Fixture::new();
        for (id, pod) in [("a b", "pod"), ("c1", "bad pod"), ("-c", "pod")] {
            let err = f.pod.create(f.request(id, pod)).unwrap_err();
            assert!(
                matches!(err, TaskError::InvalidArgument(ref m) if m.contains("is not valid")),
                "{id}/{pod}: {err}"
            );
        }
        assert_eq!(f.backend.state.lock().unwrap().sandboxes, 0, "no VM booted");
        f.pod.create(f.request("c1", "pod")).unwrap();
        f.pod.start("c1", None).unwrap();
        let spec = br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
        let err = f
            .pod
            .exec("c1", "e 1", StdioPaths::default(), spec)
            .unwrap_err();
        assert!(
            matches!(err, TaskError::InvalidArgument(ref m) if m.contains("exec id")),
            "{err}"
        );
        assert_eq!(f.backend.state.lock().unwrap().sandboxes, 1);
        f.pod.kill("c1", None, 9, true).unwrap();
        f.pod.wait("c1", None).unwrap();
        f.pod.delete("c1", None).unwrap();
        f.pod.shutdown();
    }

    #[test]
    fn execs_pause_and_a_second_container_of_the_pod() {
        let f = Fixture::new();
        f.pod.create(f.request("c1", "pod")).unwrap();
        let spec = br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
        let exec = |id: &str| f.pod.exec("c1", id, StdioPaths::default(), spec);
        assert!(matches!(exec("e1"), Err(TaskError::FailedPrecondition(_))));
        f.pod.start("c1", None).unwrap();
        exec("e1").unwrap();
        assert!(matches!(exec("e1"), Err(TaskError::AlreadyExists(_))));
        f.pod.start("c1", Some("e1")).unwrap();
        f.pod.set_paused("c1", true).unwrap();
        assert!(matches!(
            f.pod.set_paused("c1", true),
            Err(TaskError::FailedPrecondition(_))
        ));
        f.pod.set_paused("c1", false).unwrap();
        assert!(matches!(
            f.pod.create(f.request("other", "another-pod")),
            Err(TaskError::InvalidArgument(_))
        ));
        f.pod.create(f.request("c2", "pod")).unwrap();
        f.pod.kill("c1", None, 9, true).unwrap();
        f.pod.wait("c1", None).unwrap();
        f.pod.delete("c1", None).unwrap();
        f.pod.shutdown();
        assert!(
            !f.backend.state.lock().unwrap().destroyed,
            "c2 keeps the pod alive"
        );
        f.pod.kill("c2", None, 15, false).unwrap();
        assert_eq!(
            f.pod.wait("c2", None).unwrap().code,
            143,
            "never started: killed"
        );
        assert_eq!(f.pod.delete("c2", None).unwrap().1.code, 143);
        assert_eq!(
            f.topics(),
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exec-added",
                "/tasks/exec-started",
                "/tasks/paused",
                "/tasks/resumed",
                "/tasks/create",
                "/tasks/exit",
                "/tasks/delete",
                "/tasks/exit",
                "/tasks/delete"
            ]
        );
        assert!(f.backend.state.lock().unwrap().destroyed);
    }

    #[test]
    fn state_kill_and_wait_answer_while_backend_calls_hang() {
        let f = Fixture::new();
        let shim = std::process::id();
        assert_eq!(f.pod.create(f.request("c1", "pod")).unwrap(), shim);
        assert_eq!(
            f.pod.start("c1", None).unwrap(),
            shim,
            "the task pid is the shim's"
        );
        assert_eq!(f.pod.state("c1", None).unwrap().pid, shim);
        assert_eq!(f.pod.init_pid("c1").unwrap(), shim);
        f.backend.state.lock().unwrap().hang.push("pause");
        let pause = {
            let pod = f.pod.clone();
            std::thread::spawn(move || pod.set_paused("c1", true))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        f.backend.state.lock().unwrap().hang.push("stats");
        let stats = {
            let pod = f.pod.clone();
            std::thread::spawn(move || pod.stats("c1"))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(f.pod.state("c1", None).unwrap().status, Status::Running);
        f.pod.kill("c1", None, 9, false).unwrap();
        assert_eq!(f.pod.wait("c1", None).unwrap().code, 137);
        assert_eq!(f.pod.state("c1", None).unwrap().status, Status::Stopped);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "State, Kill and Wait took {:?} behind two hung calls",
            started.elapsed()
        );
        assert!(
            !pause.is_finished() && !stats.is_finished(),
            "both still hang"
        );
        f.backend.state.lock().unwrap().hang.clear();
        f.backend.cv.notify_all();
        stats.join().unwrap().unwrap();
        pause.join().unwrap().unwrap();
        assert_eq!(
            f.pod.state("c1", None).unwrap().status,
            Status::Stopped,
            "a pause finishing after the exit does not revive the process"
        );
        assert_eq!(f.pod.delete("c1", None).unwrap().0, shim);
    }

    #[test]
    fn update_reaches_the_backend_until_the_container_finished() {
        let f = Fixture::new();
        let res: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":1048576}}"#).unwrap();
        assert!(matches!(
            f.pod.update("nope", &res),
            Err(TaskError::NotFound(_))
        ));
        f.pod.create(f.request("c1", "pod")).unwrap();
        f.pod.update("c1", &res).unwrap();
        f.pod.start("c1", None).unwrap();
        f.pod.update("c1", &res).unwrap();
        f.pod.kill("c1", None, 9, false).unwrap();
        f.pod.wait("c1", None).unwrap();
        let err = f.pod.update("c1", &res).unwrap_err();
        assert!(
            matches!(err, TaskError::NotFound(ref m) if m == "running container c1"),
            "{err}"
        );
        assert_eq!(
            f.backend.state.lock().unwrap().updates,
            [
                ("c1".to_string(), Some(1 << 20)),
                ("c1".to_string(), Some(1 << 20))
            ],
            "created and running: applied; finished: refused before the backend"
        );
        f.pod.delete("c1", None).unwrap();
    }

    #[test]
    fn a_failed_first_create_leaves_nothing() {
        let f = Fixture::new();
        f.backend.state.lock().unwrap().fail_create = true;
        assert!(matches!(
            f.pod.create(f.request("c1", "pod")),
            Err(TaskError::Backend(BackendError::Invalid(_)))
        ));
        assert!(f.backend.state.lock().unwrap().destroyed);
        assert_eq!(std::fs::read_dir(f.run_dir()).unwrap().count(), 0);
        assert!(f.topics().is_empty());
        f.backend.state.lock().unwrap().fail_create = false;
        f.pod.create(f.request("c3", "pod")).unwrap();
        let (_, exit) = f.pod.delete("c3", None).unwrap();
        assert_eq!(exit.code, 137, "deleted before it started: killed");
    }
}
