//! The pod a shim serves: its containers and their lifecycle (create, start,
//! wait, delete, shutdown); the sandbox itself is in `sandbox.rs`.
//!
//! Two locks: the state lock guards the bookkeeping and is never held across
//! a backend call (a hung guest agent must not stall State, Kill or Wait); the
//! lifecycle lock serializes the operations that change which containers and
//! processes exist or run (create, start, exec, pause, delete, shutdown) and
//! is held across their backend calls.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::ExitSignal;
use hull_protocol::ids::{validate_id, IdKind};
use oci_spec::runtime::Spec;

use super::error::{Result, TaskError};
use super::events::Events;
use super::image_disk::{self, ImageCache};
use super::process::{task_pid, Exit, Process, Status, StdioPaths};
use super::rootfs::{bind_volumes, ContainerRootfs, MountSpec, VOLUMES_DIR};
use super::sandbox::{config_path_from_options, Sandbox};
use super::stdio::{self, BinaryLogger, StdioError, Target};
use crate::backend::vm::sizing;
use crate::backend::{self, Backend, ContainerRequest, ImageDisk, ProcessStreams, StdioWanted};
use crate::config::{Config, WritableLayer};

/// The annotation that names a container's pod (CRI); containers without it are their own pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Exit status of a process that was killed with SIGKILL (128 + 9).
const KILLED_STATUS: u32 = 137;

/// Makes the backend for a new sandbox.
pub type BackendFactory = Box<dyn Fn() -> backend::Result<Arc<dyn Backend>> + Send + Sync>;

/// One container: its rootfs, its init process and its execs.
pub(super) struct Container {
    pub bundle: String,
    pub rootfs: ContainerRootfs,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn process(&self, exec_id: Option<&str>) -> Result<&Process> {
        match exec_id {
            None => Ok(&self.init),
            Some(id) => self
                .execs
                .get(id)
                .ok_or_else(|| TaskError::NotFound(format!("exec {id}"))),
        }
    }

    pub fn process_mut(&mut self, exec_id: Option<&str>) -> Result<&mut Process> {
        match exec_id {
            None => Ok(&mut self.init),
            Some(id) => self
                .execs
                .get_mut(id)
                .ok_or_else(|| TaskError::NotFound(format!("exec {id}"))),
        }
    }
}

#[derive(Default)]
pub struct PodState {
    pub sandbox: Option<Sandbox>,
    pub containers: HashMap<String, Container>,
}

pub(super) struct Shared {
    pub namespace: String,
    pub events: Events,
    pub state: Mutex<PodState>,
    /// Serializes lifecycle operations (see the module comment).
    pub lifecycle: Mutex<()>,
    pub factory: BackendFactory,
    pub exit: Arc<ExitSignal>,
}

/// The pod's bookkeeping, shared by the ttrpc handlers and the exit waiters.
#[derive(Clone)]
pub struct Pod {
    pub(super) shared: Arc<Shared>,
}

/// What `Create` asks for, already decoded from the request.
#[derive(Debug, Default)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: String,
    pub rootfs: Vec<MountSpec>,
    pub stdio: StdioPaths,
    /// containerd's runtime options (`ConfigPath`).
    pub options: Option<Any>,
}

impl Pod {
    /// An empty pod; its sandbox starts with the first `Create`.
    pub fn new(
        namespace: &str,
        events: Events,
        factory: BackendFactory,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                events,
                state: Mutex::new(PodState::default()),
                lifecycle: Mutex::new(()),
                factory,
                exit,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PodState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lifecycle lock; take it before the state lock, never after.
    pub(super) fn ops(&self) -> MutexGuard<'_, ()> {
        self.shared
            .lifecycle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the sandbox, outside the state lock.
    fn stop_sandbox(&self) {
        let mut taken = PodState {
            sandbox: self.lock().sandbox.take(),
            containers: HashMap::new(),
        };
        if let Some(sandbox) = taken.sandbox.take() {
            sandbox.destroy();
        }
    }

    pub(super) fn events(&self) -> &Events {
        &self.shared.events
    }

    /// Creates a container (and the pod's sandbox, for the first one); returns its task pid.
    pub fn create(&self, req: CreateRequest) -> Result<u32> {
        let _ops = self.ops();
        // Before anything boots: a bad id fails here, not inside the guest.
        check_id(IdKind::Container, &req.id)?;
        if self.lock().containers.contains_key(&req.id) {
            return Err(TaskError::AlreadyExists(format!("container {}", req.id)));
        }
        let spec_path = Path::new(&req.bundle).join("config.json");
        let spec = Spec::load(&spec_path).map_err(|source| TaskError::Spec {
            path: spec_path.clone(),
            source,
        })?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let sandbox_id = annotations
            .get(SANDBOX_ID_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| req.id.clone());
        check_id(IdKind::Sandbox, &sandbox_id)?;
        let serving = self.lock().sandbox.as_ref().map(|s| s.id.clone());
        match serving {
            Some(serving) if serving != sandbox_id => {
                return Err(TaskError::InvalidArgument(format!(
                    "container {} belongs to pod {sandbox_id}, this shim serves pod {serving}",
                    req.id
                )))
            }
            Some(_) => {}
            None => {
                let mut config =
                    Config::load(config_path_from_options(req.options.as_ref()).as_deref())?
                        .with_annotations(&annotations)?;
                let size = sizing::pod_size(&config, &annotations)
                    .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
                (config.vcpus, config.memory_mib) = (size.vcpus, size.memory_mib);
                if config.debug {
                    crate::shim::enable_debug();
                    tracing::debug!(sandbox = %sandbox_id, "shim debug logging on");
                }
                // Booting takes long: outside the state lock, under the lifecycle lock.
                let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
                let network = crate::backend::vm::sandbox_network(&spec);
                let backend = (self.shared.factory)()?;
                let sandbox = Sandbox::start(
                    backend,
                    &self.shared.namespace,
                    &sandbox_id,
                    config,
                    cgroups_path,
                    network,
                    self.events(),
                )?;
                self.lock().sandbox = Some(sandbox);
            }
        }
        let result = self.create_container(&req, &spec);
        if result.is_err() && self.lock().containers.is_empty() {
            self.stop_sandbox();
        }
        result?;
        let pid = task_pid();
        tracing::info!(sandbox = %sandbox_id, container = %req.id, pid, "task created");
        let io = TaskIO {
            stdin: req.stdio.stdin.clone(),
            stdout: req.stdio.stdout.clone(),
            stderr: req.stdio.stderr.clone(),
            terminal: req.stdio.terminal,
            ..Default::default()
        };
        self.events().emit(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                io: MessageField::some(io),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    fn create_container(&self, req: &CreateRequest, spec: &Spec) -> Result<()> {
        let (backend, share_dir, writable_layer, image_cache) = {
            let state = self.lock();
            let sandbox = state.sandbox.as_ref().ok_or_else(|| {
                TaskError::FailedPrecondition("the pod's sandbox is gone".to_string())
            })?;
            let share_dir = sandbox.share_dir.clone();
            let cache = sandbox.image_cache.clone();
            (
                sandbox.backend.clone(),
                share_dir,
                sandbox.writable_layer,
                cache,
            )
        };
        let image_only = writable_layer == WritableLayer::Guest;
        let mut rootfs = ContainerRootfs::setup(
            &req.rootfs,
            Path::new(&req.bundle),
            &share_dir.join(&req.id),
            image_only,
        )?;
        // The sandbox has an image cache only with the writable layer in the guest.
        let image_disk = image_cache
            .as_ref()
            .and_then(|cache| image_disk(cache, &req.rootfs, Path::new(&req.bundle), &req.id));
        let volumes_dir = format!("{VOLUMES_DIR}/{}", req.id);
        let volumes = match rootfs.share_volumes(&bind_volumes(spec), &share_dir, &volumes_dir) {
            Ok(volumes) => volumes,
            Err(e) => {
                rootfs.teardown()?;
                return Err(e.into());
            }
        };
        let wanted = wanted(&req.stdio);
        let streams = match backend.create_container(&ContainerRequest {
            container_id: &req.id,
            spec,
            rootfs_in_share: &req.id,
            // A read-only root gets the layer too: the mount points its spec needs are
            // made there before the agent makes the root read-only (as runc does on the
            // snapshot).
            writable_layer_in_guest: image_only,
            image_disk,
            volumes: &volumes,
            stdio: wanted,
        }) {
            Ok(streams) => streams,
            Err(e) => {
                rootfs.teardown()?;
                return Err(e.into());
            }
        };
        let mut init = Process::new(req.stdio.clone());
        if let Err(e) = self.wire_stdio(&mut init, streams, &backend, &req.id, None) {
            let _ = backend.remove_container(&req.id);
            rootfs.teardown()?;
            return Err(e);
        }
        self.lock().containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                rootfs,
                init,
                execs: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Connects a process's streams to containerd's stdio.
    pub(super) fn wire_stdio(
        &self,
        process: &mut Process,
        streams: ProcessStreams,
        backend: &Arc<dyn Backend>,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<()> {
        let paths = process.stdio.clone();
        let stdout_target = Target::parse(&paths.stdout)?;
        let stderr_target = Target::parse(&paths.stderr)?;
        let stdin_target = Target::parse(&paths.stdin)?;
        let mut logger = None;
        if let Some(Target::Binary { path, args }) = &stdout_target {
            logger = Some(BinaryLogger::spawn(
                path,
                args,
                &self.shared.namespace,
                container_id,
            )?);
        }
        let mut outputs = Vec::new();
        for (stream, target, is_stderr) in [
            (streams.stdout, stdout_target, false),
            (streams.stderr, stderr_target, true),
        ] {
            let Some(src) = stream else { continue };
            let opener: stdio::Opener = match (target, logger.as_mut()) {
                (Some(Target::Binary { .. }), Some(l)) => {
                    let pipe = if is_stderr { &l.stderr } else { &l.stdout };
                    let file = pipe.try_clone().map_err(|source| StdioError::Io {
                        context: "duplicate logger pipe".to_string(),
                        source,
                    })?;
                    Box::new(move || Ok(Box::new(file) as Box<dyn std::io::Write + Send>))
                }
                (Some(t), _) => Box::new(move || stdio::open_output(&t)),
                (None, _) => Box::new(|| Ok(Box::new(std::io::sink()) as _)),
            };
            outputs.push(stdio::spawn_output(src, opener));
        }
        if let Some(stdin) = streams.stdin {
            process.stdin.set(stdin);
            if let Some(Target::Fifo(path) | Target::File(path)) = stdin_target {
                let backend = backend.clone();
                let (cid, eid) = (container_id.to_string(), exec_id.map(str::to_string));
                let terminal = paths.terminal;
                stdio::spawn_stdin(path, process.stdin.clone(), move || {
                    // A stream's end travels in order after its data (the
                    // half-close); only a pty needs telling.
                    if !terminal {
                        return;
                    }
                    if let Err(e) = backend.close_stdin(&cid, eid.as_deref()) {
                        tracing::debug!(container = %cid, "close stdin: {e}");
                    }
                });
            }
        }
        process.outputs = outputs;
        process.logger = logger.map(|l| l.child);
        Ok(())
    }

    /// Starts a created process and begins waiting for its exit; returns its task pid.
    pub fn start(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        let _ops = self.ops();
        let (backend, sandbox_id) = {
            let state = self.lock();
            let container = container(&state, container_id)?;
            if exec_id.is_some() && container.init.status != Status::Running {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {container_id} is not running"
                )));
            }
            if container.process(exec_id)?.status != Status::Created {
                return Err(TaskError::FailedPrecondition(format!(
                    "process {container_id}/{} was already started",
                    exec_id.unwrap_or("init")
                )));
            }
            (backend_of(&state)?, sandbox_id_of(&state))
        };
        let guest_pid = backend.start(container_id, exec_id)?;
        let (outputs, logger) = {
            let mut state = self.lock();
            let process = container_mut(&mut state, container_id)?.process_mut(exec_id)?;
            if process.status != Status::Created {
                // Killed while it started: its exit is already reported.
                drop(state);
                let _ = backend.signal(container_id, exec_id, libc::SIGKILL as u32, false);
                return Err(TaskError::FailedPrecondition(format!(
                    "process {container_id}/{} was killed while it started",
                    exec_id.unwrap_or("init")
                )));
            }
            process.guest_pid = guest_pid;
            process.status = Status::Running;
            (std::mem::take(&mut process.outputs), process.logger.take())
        };
        let pid = task_pid();
        match exec_id {
            None => self.events().emit(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: container_id.to_string(),
                    pid,
                    ..Default::default()
                },
            ),
            Some(exec_id) => self.events().emit(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                },
            ),
        }
        tracing::info!(sandbox = %sandbox_id, container = %container_id, exec = exec_id.unwrap_or(""), guest_pid, "started");
        self.spawn_waiter(backend, container_id, exec_id, pid, outputs, logger);
        Ok(pid)
    }

    /// Waits for the process in the backend, drains its output, then records and
    /// publishes the exit (before any slow teardown, which happens on Delete).
    fn spawn_waiter(
        &self,
        backend: Arc<dyn Backend>,
        container_id: &str,
        exec_id: Option<&str>,
        pid: u32,
        outputs: Vec<std::thread::JoinHandle<()>>,
        logger: Option<std::process::Child>,
    ) {
        let pod = self.clone();
        let (cid, eid) = (container_id.to_string(), exec_id.map(str::to_string));
        std::thread::spawn(move || {
            let code = backend.wait(&cid, eid.as_deref()).unwrap_or_else(|e| {
                tracing::error!(container = %cid, "wait failed, reporting exit 255: {e}");
                255
            });
            if eid.is_none() {
                // The init process took its container down: what remains dies with it,
                // as in a PID namespace.
                let _ = backend.signal(&cid, None, libc::SIGKILL as u32, true);
            }
            for relay in outputs {
                let _ = relay.join();
            }
            if let Some(mut logger) = logger {
                let _ = logger.wait();
            }
            let exit = Exit {
                code,
                at: SystemTime::now(),
            };
            let cell = {
                let mut state = pod.lock();
                let Some(process) = state
                    .containers
                    .get_mut(&cid)
                    .and_then(|c| c.process_mut(eid.as_deref()).ok())
                else {
                    return;
                };
                process.status = Status::Stopped;
                process.exit.clone()
            };
            tracing::info!(container = %cid, exec = eid.as_deref().unwrap_or(""), code, "exited");
            pod.events().emit(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: cid.clone(),
                    id: eid.unwrap_or_else(|| cid.clone()),
                    pid,
                    exit_status: code,
                    exited_at: MessageField::some(exit.timestamp()),
                    ..Default::default()
                },
            );
            cell.set(exit);
        });
    }

    /// Blocks until the process exits.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<Exit> {
        let cell = {
            let state = self.lock();
            container(&state, container_id)?
                .process(exec_id)?
                .exit
                .clone()
        };
        Ok(cell.wait())
    }

    /// Deletes an exec, or a container with its rootfs (and the sandbox with the
    /// last container). Returns (task pid, exit).
    pub fn delete(&self, container_id: &str, exec_id: Option<&str>) -> Result<(u32, Exit)> {
        let _ops = self.ops();
        let pid = task_pid();
        let (backend, exit) = {
            let mut state = self.lock();
            let backend = backend_of(&state)?;
            let container = container_mut(&mut state, container_id)?;
            let process = container.process_mut(exec_id)?;
            if matches!(process.status, Status::Running | Status::Paused) {
                return Err(TaskError::FailedPrecondition(format!(
                    "process {container_id}/{} is still running",
                    exec_id.unwrap_or("init")
                )));
            }
            // A process deleted before it ran counts as killed; its waiters are released.
            process.status = Status::Stopped;
            process.exit.set(Exit {
                code: KILLED_STATUS,
                at: SystemTime::now(),
            });
            let exit = process.exit.wait();
            if let Some(exec_id) = exec_id {
                container.execs.remove(exec_id);
                return Ok((pid, exit));
            }
            (backend, exit)
        };
        backend.remove_container(container_id)?;
        let bundle = {
            let mut state = self.lock();
            let container = container_mut(&mut state, container_id)?;
            for (_, exec) in container.execs.drain() {
                exec.exit.set(Exit {
                    code: KILLED_STATUS,
                    at: SystemTime::now(),
                });
            }
            // Host unmounts only; on failure the container stays for a retry.
            container.rootfs.teardown()?;
            let bundle = container.bundle.clone();
            state.containers.remove(container_id);
            bundle
        };
        tracing::info!(container = %container_id, bundle = %bundle, "deleted");
        self.events().emit(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: container_id.to_string(),
                id: container_id.to_string(),
                pid,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.timestamp()),
                ..Default::default()
            },
        );
        if self.lock().containers.is_empty() {
            self.stop_sandbox();
        }
        Ok((pid, exit))
    }

    /// Stops the shim once the pod has no container left; a no-op otherwise.
    pub fn shutdown(&self) {
        let _ops = self.ops();
        if !self.lock().containers.is_empty() {
            return;
        }
        self.stop_sandbox();
        self.shared.exit.signal();
    }
}

pub(super) fn wanted(paths: &StdioPaths) -> StdioWanted {
    StdioWanted {
        stdin: !paths.stdin.is_empty(),
        stdout: !paths.stdout.is_empty(),
        stderr: !paths.stderr.is_empty() && !paths.terminal,
        terminal: paths.terminal,
    }
}

pub(super) fn backend_of(state: &PodState) -> Result<Arc<dyn Backend>> {
    state
        .sandbox
        .as_ref()
        .map(|s| s.backend.clone())
        .ok_or_else(|| TaskError::NotFound("sandbox".to_string()))
}

pub(super) fn sandbox_id_of(state: &PodState) -> String {
    state
        .sandbox
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default()
}

/// Checks an id by the rule host and guest share (`hull_protocol::ids`).
pub(super) fn check_id(kind: IdKind, id: &str) -> Result<()> {
    validate_id(kind, id).map_err(|e| TaskError::InvalidArgument(e.to_string()))
}

pub(super) fn container<'a>(state: &'a PodState, id: &str) -> Result<&'a Container> {
    state
        .containers
        .get(id)
        .ok_or_else(|| TaskError::NotFound(format!("container {id}")))
}

pub(super) fn container_mut<'a>(state: &'a mut PodState, id: &str) -> Result<&'a mut Container> {
    state
        .containers
        .get_mut(id)
        .ok_or_else(|| TaskError::NotFound(format!("container {id}")))
}

/// The container's image as a disk from the cache (made now from the image mounted at
/// `<bundle>/rootfs` if the cache does not hold it); `None`, with a warning when making it
/// failed, leaves the image to the share.
fn image_disk(
    cache: &ImageCache,
    mounts: &[MountSpec],
    bundle: &Path,
    id: &str,
) -> Option<ImageDisk> {
    let key = image_disk::key(mounts)?;
    let started = std::time::Instant::now();
    match image_disk::ensure(cache, &key, &bundle.join("rootfs")) {
        Ok(path) => {
            tracing::debug!(container = %id, disk = %path.display(),
                ms = started.elapsed().as_millis() as u64, "image disk ready");
            Some(ImageDisk { key, path })
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %hull_protocol::error::chain(&e),
                "image disk not made; the image is read through the share");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_merges_stderr() {
        let w = wanted(&StdioPaths {
            stdin: "i".into(),
            stdout: "o".into(),
            stderr: "e".into(),
            terminal: true,
        });
        assert!(w.stdin && w.stdout && !w.stderr && w.terminal);
    }
}
