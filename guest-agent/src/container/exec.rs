//! ExecProcess: a new process in a running container's namespaces and cgroup.

use oci_spec::runtime::Process as OciProcess;

use super::spawn::{await_exec, spawn};
use super::{Container, ContainerError};
use crate::setup::{SetupConfig, SetupKind};
use crate::stdio::dial_all;
use hull_protocol::agent::ExecProcessRequest;
use hull_protocol::ids::{validate_id, IdKind};

pub fn do_exec(container: &Container, req: &ExecProcessRequest) -> Result<u32, ContainerError> {
    validate_id(IdKind::Exec, &req.exec_id)?;
    if container
        .execs
        .lock()
        .expect("execs lock")
        .contains_key(&req.exec_id)
    {
        return Err(ContainerError::Exists(format!(
            "{}/{}",
            container.id, req.exec_id
        )));
    }
    let process: OciProcess =
        serde_json::from_slice(&req.oci_process_json).map_err(ContainerError::Spec)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::Invalid("process.args is empty".into()));
    }
    if crate::reaper::reaper().exited(container.init.pid).is_some() {
        return Err(ContainerError::Invalid(format!(
            "container {} is not running",
            container.id
        )));
    }
    let streams = dial_all(&req.stdio, process.terminal().unwrap_or(false))?;
    let config = SetupConfig {
        container_id: container.id.clone(),
        cgroup: container.cgroup.path.clone(),
        process,
        seccomp: container.seccomp.clone(),
        kind: SetupKind::Exec {
            init_pid: container.init.pid,
            kinds: container.namespaces.iter().fold(0, |acc, ns| acc | ns.kind),
        },
    };
    let (proc, chan) = spawn(&config, streams, Some(&container.init.pidfd))?;
    await_exec(&chan)?;
    let pid = proc.pid as u32;
    tracing::info!(container = %container.id, exec = %req.exec_id, pid, "exec started");
    container
        .execs
        .lock()
        .expect("execs lock")
        .insert(req.exec_id.clone(), proc);
    Ok(pid)
}
