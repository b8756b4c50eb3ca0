//! The ttrpc service: thin handlers that check, call `do_x()` and map the
//! error once.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc;
use hull_protocol::error::chain;
use ttrpc::{Code, TtrpcContext};

use crate::cgroup::CgroupError;
use crate::container::{self, ContainerError};
use crate::sandbox::{Sandbox, SandboxError};

/// How long PauseContainer/ResumeContainer wait for the kernel to finish.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Service {
    pub sandbox: Arc<Sandbox>,
}

fn status(code: Code, text: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, text))
}

/// The status code of a container error: the shim maps it back to the same
/// kind for containerd (see the shim's `backend::vm::agent::map`).
fn container_code(e: &ContainerError) -> Code {
    use ContainerError as E;
    match e {
        E::NotFound(_) | E::ProcessNotFound { .. } => Code::NOT_FOUND,
        E::Exists(_) => Code::ALREADY_EXISTS,
        E::InvalidId(_)
        | E::Spec(_)
        | E::Invalid(_)
        | E::Path(_)
        | E::Cgroup(CgroupError::BadKey(_)) => Code::INVALID_ARGUMENT,
        E::AlreadyStarted(_) | E::NoTerminal => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    }
}

fn container_err(e: ContainerError) -> ttrpc::Error {
    let code = container_code(&e);
    let text = chain(&e);
    tracing::warn!(error = %text, "request failed");
    status(code, text)
}

fn sandbox_err(e: SandboxError) -> ttrpc::Error {
    let code = match &e {
        SandboxError::InvalidId(_)
        | SandboxError::Network(crate::network::NetworkError::Invalid(_)) => Code::INVALID_ARGUMENT,
        SandboxError::Container(c) => container_code(c),
        _ => Code::INTERNAL,
    };
    let text = chain(&e);
    tracing::warn!(error = %text, "sandbox request failed");
    status(code, text)
}

impl Service {
    fn container(&self, id: &str) -> ttrpc::Result<Arc<container::Container>> {
        self.sandbox.get(id).map_err(container_err)
    }
}

impl agent_ttrpc::Agent for Service {
    fn version(&self, _: &TtrpcContext, req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        if !hull_protocol::compatible(&req.api_version) {
            let text = format!(
                "caller speaks {:?}, this agent speaks {}: upgrade one side",
                req.api_version,
                hull_protocol::API_VERSION
            );
            return Err(status(Code::FAILED_PRECONDITION, text));
        }
        let mut resp = VersionResponse::new();
        resp.api_version = hull_protocol::API_VERSION.into();
        resp.agent_version = env!("CARGO_PKG_VERSION").into();
        resp.uptime_secs = crate::init::uptime().unwrap_or(0.0);
        Ok(resp)
    }

    fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.create(&req).map_err(sandbox_err)?;
        Ok(Empty::new())
    }

    fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        self.sandbox.destroy().map_err(sandbox_err)?;
        let guest = self.sandbox.config.guest;
        // Answer first, then go: power off in the guest, exit on the host.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            if guest {
                crate::init::power_off();
            }
            std::process::exit(0);
        });
        Ok(Empty::new())
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pid = container::do_create(&self.sandbox, &req).map_err(container_err)?;
        tracing::info!(container = %req.container_id, pid, "created");
        let mut resp = CreateContainerResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        container::do_start(&c).map_err(container_err)?;
        Ok(Empty::new())
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let c = self.container(&req.container_id)?;
        let pid = container::do_exec(&c, &req).map_err(container_err)?;
        let mut resp = ExecProcessResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        container::do_signal(&c, &req.exec_id, req.signal, req.all).map_err(container_err)?;
        Ok(Empty::new())
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let c = self.container(&req.container_id)?;
        let exit = container::do_wait(&c, &req.exec_id).map_err(container_err)?;
        let mut resp = WaitProcessResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at_unix_nanos = exit
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(resp)
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        container::do_resize(&c, &req.exec_id, req.rows, req.cols).map_err(container_err)?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        container::do_close_stdin(&c, &req.exec_id).map_err(container_err)?;
        Ok(Empty::new())
    }

    fn list_pids(&self, _: &TtrpcContext, req: ListPidsRequest) -> ttrpc::Result<ListPidsResponse> {
        let c = self.container(&req.container_id)?;
        let mut resp = ListPidsResponse::new();
        resp.pids = c.cgroup.pids().map_err(|e| container_err(e.into()))?;
        Ok(resp)
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.container(&req.container_id)?.cgroup.stats())
    }

    fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        c.cgroup
            .set_frozen(true, FREEZE_TIMEOUT)
            .map_err(|e| container_err(e.into()))?;
        Ok(Empty::new())
    }

    fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        c.cgroup
            .set_frozen(false, FREEZE_TIMEOUT)
            .map_err(|e| container_err(e.into()))?;
        Ok(Empty::new())
    }

    fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let c = self.container(&req.container_id)?;
        container::do_update(&c, &req.oci_resources_json).map_err(container_err)?;
        Ok(Empty::new())
    }

    fn oom_event(&self, _: &TtrpcContext, req: OomEventRequest) -> ttrpc::Result<OomEventResponse> {
        let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms.into()));
        let mut resp = OomEventResponse::new();
        resp.container_id = self.sandbox.oom.next(timeout).unwrap_or_default();
        Ok(resp)
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandbox
            .remove(&req.container_id)
            .map_err(container_err)?;
        Ok(Empty::new())
    }

    fn guest_stats(
        &self,
        _: &TtrpcContext,
        _: GuestStatsRequest,
    ) -> ttrpc::Result<GuestStatsResponse> {
        crate::guest_stats::do_guest_stats().map_err(|e| {
            let text = chain(&e);
            tracing::warn!(error = %text, "guest stats failed");
            status(Code::INTERNAL, text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::ids::{validate_id, IdKind};

    fn code_of(e: ttrpc::Error) -> (Code, String) {
        match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other}"),
        }
    }

    #[test]
    fn ids_are_checked_by_the_shared_rule() {
        for (kind, id) in [(IdKind::Container, "a b"), (IdKind::Exec, "../x")] {
            let e: ContainerError = validate_id(kind, id).unwrap_err().into();
            let (code, msg) = code_of(container_err(e));
            assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
            assert!(msg.contains(&format!("{kind} id")), "{msg}");
        }
        let e: SandboxError = validate_id(IdKind::Sandbox, "").unwrap_err().into();
        assert_eq!(code_of(sandbox_err(e)).0, Code::INVALID_ARGUMENT);
    }

    #[test]
    fn error_kinds_become_their_status_codes() {
        let (code, msg) = code_of(container_err(ContainerError::NotFound("c9".into())));
        assert_eq!(code, Code::NOT_FOUND);
        assert!(msg.contains("c9"), "{msg}");
        let gone = ContainerError::ProcessNotFound {
            id: "c1".into(),
            exec: "e1".into(),
        };
        assert_eq!(code_of(container_err(gone)).0, Code::NOT_FOUND);
        assert_eq!(
            code_of(container_err(ContainerError::Exists("c1".into()))).0,
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(container_err(ContainerError::NoTerminal)).0,
            Code::FAILED_PRECONDITION
        );
        let bad_key = ContainerError::Cgroup(CgroupError::BadKey("../x".into()));
        assert_eq!(code_of(container_err(bad_key)).0, Code::INVALID_ARGUMENT);
        // A container error inside a sandbox error keeps its kind.
        let e = SandboxError::Container(ContainerError::NotFound("c2".into()));
        assert_eq!(code_of(sandbox_err(e)).0, Code::NOT_FOUND);
    }
}
