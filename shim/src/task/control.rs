//! Operations on existing processes: exec, kill, state, pids, stats,
//! pause/resume, pty resize and stdin close. None calls the backend under the
//! pod's state lock, so State and Kill answer while a guest agent call hangs.

use containerd_shim::protos::events::task::{TaskExecAdded, TaskExit, TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use oci_spec::runtime::{LinuxResources, Process as OciProcess};

use hull_protocol::ids::IdKind;

use super::error::{Result, TaskError};
use super::pod::{backend_of, check_id, container, container_mut, sandbox_id_of, wanted, Pod};
use super::process::{task_pid, Exit, Process, Status, StdioPaths};
use crate::backend::{ContainerStats, ExecRequest};

/// How long `CloseIO` lets the stdin relay forward what the FIFO still holds.
const STDIN_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A snapshot of one process for `State`.
#[derive(Debug, Clone)]
pub struct ProcessState {
    pub bundle: String,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}

impl Pod {
    /// Adds an exec process to a running container; it waits for `start`.
    pub fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        process_json: &[u8],
    ) -> Result<()> {
        check_id(IdKind::Exec, exec_id)?;
        let process: OciProcess = serde_json::from_slice(process_json)
            .map_err(|e| TaskError::InvalidArgument(format!("exec process spec: {e}")))?;
        let _ops = self.ops();
        let (backend, sandbox_id) = {
            let state = self.lock();
            let container = container(&state, container_id)?;
            if container.execs.contains_key(exec_id) {
                return Err(TaskError::AlreadyExists(format!("exec {exec_id}")));
            }
            if container.init.status != Status::Running {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {container_id} is not running"
                )));
            }
            (backend_of(&state)?, sandbox_id_of(&state))
        };
        let streams = backend.exec(&ExecRequest {
            container_id,
            exec_id,
            process: &process,
            stdio: wanted(&stdio),
        })?;
        let mut proc = Process::new(stdio);
        self.wire_stdio(&mut proc, streams, &backend, container_id, Some(exec_id))?;
        // Containers leave only under the lifecycle lock, which this holds.
        container_mut(&mut self.lock(), container_id)?
            .execs
            .insert(exec_id.to_string(), proc);
        tracing::info!(sandbox = %sandbox_id, container = %container_id, exec = %exec_id, "exec added");
        self.events().emit(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Signals a process (or with `all`, every process of the container). A process
    /// that never started just ends with 128 + signal, as a created runc container does.
    pub fn kill(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let backend = {
            let mut state = self.lock();
            let backend = backend_of(&state)?;
            let process = container_mut(&mut state, container_id)?.process_mut(exec_id)?;
            tracing::info!(container = %container_id, exec = exec_id.unwrap_or(""), signal, all, "kill");
            match process.status {
                Status::Stopped => {
                    return Err(TaskError::NotFound(format!(
                        "process {container_id}/{} already finished",
                        exec_id.unwrap_or("init")
                    )))
                }
                Status::Created => {
                    process.status = Status::Stopped;
                    let exit = Exit {
                        code: 128 + signal,
                        at: std::time::SystemTime::now(),
                    };
                    let cell = process.exit.clone();
                    self.events().emit(
                        topics::TASK_EXIT_EVENT_TOPIC,
                        TaskExit {
                            container_id: container_id.to_string(),
                            id: exec_id.unwrap_or(container_id).to_string(),
                            pid: task_pid(),
                            exit_status: exit.code,
                            exited_at: MessageField::some(exit.timestamp()),
                            ..Default::default()
                        },
                    );
                    cell.set(exit);
                    return Ok(());
                }
                Status::Running | Status::Paused => backend,
            }
        };
        // Outside the lock: a hung agent delays this Kill (until the backend
        // gives up on it), never State or another Kill.
        Ok(backend.signal(container_id, exec_id, signal, all)?)
    }

    /// The state of a process.
    pub fn state(&self, container_id: &str, exec_id: Option<&str>) -> Result<ProcessState> {
        let state = self.lock();
        let container = container(&state, container_id)?;
        let p = container.process(exec_id)?;
        Ok(ProcessState {
            bundle: container.bundle.clone(),
            pid: task_pid(),
            status: p.status,
            stdio: p.stdio.clone(),
            exit: p.exit.get(),
        })
    }

    /// The task pid of a container's init process (see [`task_pid`]).
    pub fn init_pid(&self, container_id: &str) -> Result<u32> {
        container(&self.lock(), container_id)?;
        Ok(task_pid())
    }

    /// The backend of a container's pod, checked to exist, for a call made
    /// after the lock is released.
    fn backend_for(
        &self,
        container_id: &str,
    ) -> Result<std::sync::Arc<dyn crate::backend::Backend>> {
        let state = self.lock();
        container(&state, container_id)?;
        backend_of(&state)
    }

    /// Pids of the container's processes (in the guest).
    pub fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        Ok(self.backend_for(container_id)?.pids(container_id)?)
    }

    /// Resource usage of the container.
    pub fn stats(&self, container_id: &str) -> Result<ContainerStats> {
        Ok(self.backend_for(container_id)?.stats(container_id)?)
    }

    /// Freezes (`pause = true`) or thaws the container.
    pub fn set_paused(&self, container_id: &str, pause: bool) -> Result<()> {
        let (from, to) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        let _ops = self.ops();
        let backend = {
            let state = self.lock();
            let status = container(&state, container_id)?.init.status;
            if status != from {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {container_id} is {status:?}, not {from:?}"
                )));
            }
            backend_of(&state)?
        };
        if pause {
            backend.pause(container_id)?;
        } else {
            backend.resume(container_id)?;
        }
        {
            let mut state = self.lock();
            let init = &mut container_mut(&mut state, container_id)?.init;
            // It may have exited meanwhile; an exit is never undone.
            if init.status == from {
                init.status = to;
            }
        }
        tracing::info!(container = %container_id, paused = pause, "pause state changed");
        let id = container_id.to_string();
        if pause {
            self.events().emit(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: id,
                    ..Default::default()
                },
            );
        } else {
            self.events().emit(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: id,
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Applies new resource limits to a created, running or paused container
    /// (task Update); a finished one is NOT_FOUND, which containerd's CRI
    /// plugin takes for "the task exited already".
    pub fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        let backend = {
            let state = self.lock();
            if container(&state, container_id)?.init.status == Status::Stopped {
                // "running container <id> not found"
                return Err(TaskError::NotFound(format!(
                    "running container {container_id}"
                )));
            }
            backend_of(&state)?
        };
        backend.update(container_id, resources)?;
        tracing::info!(container = %container_id, "resources updated");
        Ok(())
    }

    /// Resizes a process's terminal.
    pub fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        cols: u32,
        rows: u32,
    ) -> Result<()> {
        let backend = {
            let state = self.lock();
            let p = container(&state, container_id)?.process(exec_id)?;
            if !p.stdio.terminal {
                return Err(TaskError::FailedPrecondition(format!(
                    "process {container_id}/{} has no terminal",
                    exec_id.unwrap_or("init")
                )));
            }
            backend_of(&state)?
        };
        Ok(backend.resize_pty(container_id, exec_id, cols, rows)?)
    }

    /// Closes a process's stdin (`CloseIO`) once what containerd wrote has
    /// been forwarded; a pty also hears the end from the backend.
    pub fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<()> {
        let (stdin, terminal, backend) = {
            let state = self.lock();
            let backend = backend_of(&state)?;
            let p = container(&state, container_id)?.process(exec_id)?;
            (p.stdin.clone(), p.stdio.terminal, backend)
        };
        // Outside the pod lock: draining can take a moment.
        if stdin.close_after_drain(STDIN_DRAIN_LIMIT).is_some() && terminal {
            backend.close_stdin(container_id, exec_id)?;
        }
        Ok(())
    }
}
