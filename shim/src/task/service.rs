//! The containerd Task ttrpc service: thin handlers that decode a request,
//! call the pod's bookkeeping, and map errors to ttrpc status codes once.

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::shim::{CheckpointTaskRequest, UpdateTaskRequest};
use containerd_shim::protos::ttrpc::{self, Code, TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{Task, TtrpcResult};
use oci_spec::runtime::LinuxResources;

use super::error::TaskError;
use super::pod::{CreateRequest, Pod};
use super::process::StdioPaths;
use super::rootfs::MountSpec;
use crate::backend::BackendError;

/// The task service containerd talks to.
pub struct Service {
    pub pod: Pod,
}

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// Maps a task error to the ttrpc status containerd expects, with its whole cause chain.
fn to_ttrpc(err: TaskError) -> ttrpc::Error {
    let code = match &err {
        TaskError::NotFound(_) => Code::NOT_FOUND,
        TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        TaskError::InvalidArgument(_) | TaskError::Config(_) => Code::INVALID_ARGUMENT,
        TaskError::Backend(BackendError::NotFound { .. } | BackendError::Missing(_)) => {
            Code::NOT_FOUND
        }
        TaskError::Backend(BackendError::Exists(_)) => Code::ALREADY_EXISTS,
        TaskError::Backend(BackendError::Precondition(_)) => Code::FAILED_PRECONDITION,
        TaskError::Backend(BackendError::Unsupported(_)) => Code::UNIMPLEMENTED,
        TaskError::Backend(BackendError::Invalid(_)) => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    };
    let msg = hull_protocol::error::chain(&err);
    tracing::warn!("request failed: {msg}");
    status(code, msg)
}

/// The type URL containerd's typeurl gives runtime-spec `LinuxResources`
/// (registered by containerd; the value is the JSON of the Go struct).
const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The OCI resources of a task Update.
fn linux_resources(any: Option<&Any>) -> Result<LinuxResources, TaskError> {
    let any = any.ok_or_else(|| {
        TaskError::InvalidArgument("update: the request carries no resources".into())
    })?;
    if any.type_url != LINUX_RESOURCES_TYPE_URL {
        return Err(TaskError::InvalidArgument(format!(
            "update: resources of type {:?}, Hull takes only {LINUX_RESOURCES_TYPE_URL:?} \
             (OCI LinuxResources as JSON)",
            any.type_url
        )));
    }
    serde_json::from_slice(&any.value).map_err(|e| {
        TaskError::InvalidArgument(format!(
            "update: resources are not OCI LinuxResources JSON: {e}"
        ))
    })
}

fn exec_id(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let create = CreateRequest {
            id: req.id,
            bundle: req.bundle,
            rootfs: req
                .rootfs
                .into_iter()
                .map(|m| MountSpec {
                    kind: m.type_,
                    source: m.source,
                    options: m.options,
                })
                .collect(),
            stdio: StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
            options: req.options.into_option(),
        };
        let pid = self.pod.create(create).map_err(to_ttrpc)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self
            .pod
            .start(&req.id, exec_id(&req.exec_id))
            .map_err(to_ttrpc)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let s = self
            .pod
            .state(&req.id, exec_id(&req.exec_id))
            .map_err(to_ttrpc)?;
        let (exit_status, exited_at) = s.exit.map_or((0, MessageField::none()), |e| {
            (e.code, MessageField::some(e.timestamp()))
        });
        Ok(StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: s.bundle,
            pid: s.pid,
            status: s.status.to_api().into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = self
            .pod
            .wait(&req.id, exec_id(&req.exec_id))
            .map_err(to_ttrpc)?;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.pod
            .kill(&req.id, exec_id(&req.exec_id), req.signal, req.all)
            .map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (pid, exit) = self
            .pod
            .delete(&req.id, exec_id(&req.exec_id))
            .map_err(to_ttrpc)?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec = req.spec.into_option().unwrap_or_default();
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        self.pod
            .exec(&req.id, &req.exec_id, stdio, &spec.value)
            .map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.pod
            .resize_pty(&req.id, exec_id(&req.exec_id), req.width, req.height)
            .map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.pod
                .close_stdin(&req.id, exec_id(&req.exec_id))
                .map_err(to_ttrpc)?;
        }
        Ok(Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.pod.pids(&req.id).map_err(to_ttrpc)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let s = self.pod.stats(&req.id).map_err(to_ttrpc)?;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: s.cpu_usage_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: s.memory_usage_bytes,
                usage_limit: s.memory_limit_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".to_string(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, format!("encode metrics: {e}")))?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.pod.set_paused(&req.id, true).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.pod.set_paused(&req.id, false).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.pod.init_pid(&req.id).map_err(to_ttrpc)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.pod.shutdown();
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by Hull",
        ))
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = linux_resources(req.resources.as_ref()).map_err(to_ttrpc)?;
        self.pod.update(&req.id, &resources).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: TaskError) -> Code {
        match to_ttrpc(err) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_the_codes_containerd_expects() {
        assert_eq!(code(TaskError::NotFound("c".into())), Code::NOT_FOUND);
        assert_eq!(
            code(TaskError::AlreadyExists("c".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code(TaskError::FailedPrecondition("x".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code(TaskError::Backend(BackendError::Unsupported("pty"))),
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            code(TaskError::Backend(BackendError::Agent("gone".into()))),
            Code::INTERNAL
        );
        // What the agent reported keeps its kind (see backend::vm::agent::map).
        for (err, want) in [
            (BackendError::Missing("c9".into()), Code::NOT_FOUND),
            (BackendError::Exists("c1".into()), Code::ALREADY_EXISTS),
            (
                BackendError::Precondition("t".into()),
                Code::FAILED_PRECONDITION,
            ),
            (BackendError::Invalid("a b".into()), Code::INVALID_ARGUMENT),
        ] {
            assert_eq!(code(TaskError::Backend(err)), want);
        }
    }

    #[test]
    fn update_resources_are_decoded_or_refused_clearly() {
        let any = |url: &str, value: &[u8]| Any {
            type_url: url.into(),
            value: value.to_vec(),
            ..Default::default()
        };
        let good = any(
            LINUX_RESOURCES_TYPE_URL,
            br#"{"memory":{"limit":268435456},"cpu":{"quota":50000,"period":100000}}"#,
        );
        let res = linux_resources(Some(&good)).unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(268_435_456));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        for (bad, says) in [
            (None, "carries no resources"),
            (
                Some(any(
                    "types.containerd.io/opencontainers/runtime-spec/1/Spec",
                    b"{}",
                )),
                "Hull takes only",
            ),
            (
                Some(any(LINUX_RESOURCES_TYPE_URL, b"\x0a\x02")),
                "not OCI LinuxResources JSON",
            ),
            (
                Some(any(
                    LINUX_RESOURCES_TYPE_URL,
                    br#"{"memory":{"limit":"big"}}"#,
                )),
                "not OCI LinuxResources JSON",
            ),
        ] {
            let err = linux_resources(bad.as_ref()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(code(err), Code::INVALID_ARGUMENT);
        }
    }

    #[test]
    fn the_cause_chain_reaches_the_message() {
        let err = TaskError::Rootfs(super::super::rootfs::RootfsError::Unmount {
            target: "/x".into(),
            source: nix::Error::EPERM,
        });
        let ttrpc::Error::RpcStatus(s) = to_ttrpc(err) else {
            panic!("not a status")
        };
        assert!(s.message.contains("unmount /x: EPERM"), "{}", s.message);
    }
}
