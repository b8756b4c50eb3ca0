//! The product backend: the pod's microVM (`hull-vmm` with the share served by
//! `virtiofsd`) and `hull-agent` inside it, driven over ttrpc on hybrid vsock.

mod agent;
mod hybrid;
mod launch;
mod streams;

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use oci_spec::runtime::Spec;

use super::{
    host_pids, Backend, BackendError, ContainerRequest, ContainerStats, ExecRequest,
    ProcessStreams, Result, SandboxRequest, SharedVolume, StdioWanted,
};
use launch::Sockets;

/// Where the agent mounts the share in the guest.
const GUEST_SHARE: &str = "/run/hull/shared";
/// How long virtiofsd may take to create its socket.
const FS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to boot to the agent's ready marker (the lab is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the guest may take to power off after DestroySandbox.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// How long one OomEvent call blocks before the watcher checks for shutdown.
const OOM_POLL_MS: u32 = 2000;
/// Exit status reported for processes whose VM died under them (128 + SIGKILL).
const VM_GONE_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// The running sandbox.
struct Vm {
    sandbox_id: String,
    state_dir: std::path::PathBuf,
    sockets: Sockets,
    client: AgentClient,
    ports: streams::Ports,
    /// hull-vmm, then virtiofsd.
    children: Mutex<Vec<Child>>,
}

/// Runs a pod in a microVM.
#[derive(Default)]
pub struct VmBackend {
    vm: OnceLock<Vm>,
    stopped: AtomicBool,
    /// Guest pids from CreateContainer / ExecProcess, by (container, exec id or "").
    pids: Mutex<HashMap<(String, String), u32>>,
}

fn sandbox_err(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::Sandbox(Box::new(e))
}

fn exec_key(exec_id: Option<&str>) -> String {
    exec_id.unwrap_or_default().to_string()
}

impl VmBackend {
    fn vm(&self) -> Result<&Vm> {
        match self.vm.get() {
            Some(vm) if !self.stopped.load(Ordering::SeqCst) => Ok(vm),
            _ => Err(BackendError::Agent("the pod's VM is not running".into())),
        }
    }

    /// Whether hull-vmm has exited (or the sandbox was destroyed).
    fn vm_gone(&self) -> bool {
        let Some(vm) = self.vm.get() else { return true };
        let mut children = vm.children.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.load(Ordering::SeqCst)
            || children
                .first_mut()
                .is_none_or(|vmm| !matches!(vmm.try_wait(), Ok(None)))
    }

    /// Whether hull-vmm is gone or goes within `grace`: its connection closes
    /// just before the exited process can be reaped.
    fn vm_gone_within(&self, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        loop {
            if self.vm_gone() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Binds the stdio listeners, makes the agent call (which returns the guest
    /// pid), takes the streams.
    fn with_stdio(
        &self,
        key: (String, String),
        wanted: StdioWanted,
        call: impl FnOnce(&AgentClient, Stdio) -> Result<u32>,
    ) -> Result<ProcessStreams> {
        let vm = self.vm()?;
        let (pending, stdio) =
            streams::prepare(&vm.sockets.vsock, &vm.ports, wanted).map_err(sandbox_err)?;
        let pid = call(&vm.client, stdio)?;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, pid);
        pending.accept(wanted).map_err(sandbox_err)
    }
}

/// The spec the guest gets: bind mounts of host volumes point into the share.
fn guest_spec(spec: &Spec, volumes: &[SharedVolume]) -> Result<Vec<u8>> {
    let mut spec = spec.clone();
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                if let Some(v) = volumes.iter().find(|v| v.destination == *m.destination()) {
                    m.set_source(Some(Path::new(GUEST_SHARE).join(&v.path_in_share)));
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    serde_json::to_vec(&spec).map_err(|e| BackendError::Invalid(format!("OCI spec: {e}")))
}

impl Backend for VmBackend {
    fn create_sandbox(&self, req: &SandboxRequest) -> Result<()> {
        let sockets = Sockets::in_dir(&req.state_dir);
        sockets.remove();
        let mut virtiofsd =
            launch::start_virtiofsd(req, &sockets, FS_TIMEOUT).map_err(sandbox_err)?;
        let mut vmm = match launch::start_vmm(req, &sockets, BOOT_TIMEOUT) {
            Ok(vmm) => vmm,
            Err(e) => {
                launch::stop(&mut virtiofsd, Duration::ZERO);
                sockets.remove();
                host_pids::clear(&req.state_dir);
                return Err(sandbox_err(e));
            }
        };
        let booted = agent::connect(&sockets.vsock).and_then(|client| {
            let mut create = CreateSandboxRequest::new();
            create.sandbox_id = req.sandbox_id.clone();
            create.shared_fs_tag = launch::SHARE_TAG.into();
            client
                .create_sandbox(agent::prompt(), &create)
                .map_err(agent::map("CreateSandbox"))?;
            Ok(client)
        });
        let client = match booted {
            Ok(client) => client,
            Err(e) => {
                launch::stop(&mut vmm, Duration::ZERO);
                launch::stop(&mut virtiofsd, Duration::ZERO);
                sockets.remove();
                host_pids::clear(&req.state_dir);
                return Err(e);
            }
        };
        tracing::info!(sandbox = %req.sandbox_id, vmm = vmm.id(), virtiofsd = virtiofsd.id(), "VM up");
        let vm = Vm {
            sandbox_id: req.sandbox_id.clone(),
            state_dir: req.state_dir.clone(),
            sockets,
            client,
            ports: streams::Ports::default(),
            children: Mutex::new(vec![vmm, virtiofsd]),
        };
        self.vm
            .set(vm)
            .map_err(|_| BackendError::Invalid("the pod's sandbox exists already".into()))
    }

    fn create_container(&self, req: &ContainerRequest<'_>) -> Result<ProcessStreams> {
        let spec = guest_spec(req.spec, req.volumes)?;
        let key = (req.container_id.to_string(), String::new());
        self.with_stdio(key, req.stdio, |client, stdio| {
            let mut create = CreateContainerRequest::new();
            create.container_id = req.container_id.into();
            create.oci_spec_json = spec;
            create.rootfs = format!("{GUEST_SHARE}/{}", req.rootfs_in_share);
            create.stdio = Some(stdio).into();
            client
                .create_container(agent::prompt(), &create)
                .map(|r| r.pid)
                .map_err(agent::map("CreateContainer"))
        })
    }

    fn exec(&self, req: &ExecRequest<'_>) -> Result<ProcessStreams> {
        let process = serde_json::to_vec(req.process)
            .map_err(|e| BackendError::Invalid(format!("OCI process: {e}")))?;
        let key = (req.container_id.to_string(), req.exec_id.to_string());
        self.with_stdio(key, req.stdio, |client, stdio| {
            let mut exec = ExecProcessRequest::new();
            exec.container_id = req.container_id.into();
            exec.exec_id = req.exec_id.into();
            exec.oci_process_json = process;
            exec.stdio = Some(stdio).into();
            client
                .exec_process(agent::prompt(), &exec)
                .map(|r| r.pid)
                .map_err(agent::map("ExecProcess"))
        })
    }

    fn start(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        let vm = self.vm()?;
        let key = (container_id.to_string(), exec_key(exec_id));
        let pid = self
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
            .ok_or_else(|| BackendError::NotFound {
                container_id: key.0.clone(),
                exec_id: key.1.clone(),
            })?;
        // The agent runs an exec from ExecProcess on; only an init process waits.
        if exec_id.is_none() {
            let mut start = StartContainerRequest::new();
            start.container_id = container_id.into();
            vm.client
                .start_container(agent::prompt(), &start)
                .map_err(agent::map("StartContainer"))?;
        }
        Ok(pid)
    }

    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        let vm = self.vm()?;
        let mut wait = WaitProcessRequest::new();
        wait.container_id = container_id.into();
        wait.exec_id = exec_key(exec_id);
        match vm.client.wait_process(agent::blocking(), &wait) {
            Ok(r) => Ok(r.exit_status),
            Err(e) if self.vm_gone_within(Duration::from_secs(2)) => {
                tracing::warn!(sandbox = %vm.sandbox_id, container = container_id,
                    "the VM is gone, the process died with it: {e}");
                Ok(VM_GONE_STATUS)
            }
            Err(e) => Err(agent::map("WaitProcess")(e)),
        }
    }

    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let vm = self.vm()?;
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_key(exec_id);
        req.signal = signal;
        req.all = all;
        vm.client
            .signal_process(agent::prompt(), &req)
            .map(drop)
            .map_err(agent::map("SignalProcess"))
    }

    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        cols: u32,
        rows: u32,
    ) -> Result<()> {
        let vm = self.vm()?;
        let mut req = ResizePtyRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_key(exec_id);
        req.cols = cols;
        req.rows = rows;
        vm.client
            .resize_pty(agent::prompt(), &req)
            .map(drop)
            .map_err(agent::map("ResizePty"))
    }

    fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<()> {
        let vm = self.vm()?;
        let mut req = CloseStdinRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_key(exec_id);
        vm.client
            .close_stdin(agent::prompt(), &req)
            .map(drop)
            .map_err(agent::map("CloseStdin"))
    }

    fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        let vm = self.vm()?;
        let mut req = ListPidsRequest::new();
        req.container_id = container_id.into();
        vm.client
            .list_pids(agent::prompt(), &req)
            .map(|r| r.pids)
            .map_err(agent::map("ListPids"))
    }

    fn stats(&self, container_id: &str) -> Result<ContainerStats> {
        let vm = self.vm()?;
        let mut req = StatsRequest::new();
        req.container_id = container_id.into();
        let st = vm
            .client
            .stats(agent::prompt(), &req)
            .map_err(agent::map("Stats"))?;
        Ok(ContainerStats {
            pids: st.pids.current,
            cpu_usage_usec: st.cpu.usage_usec,
            memory_usage_bytes: st.memory.usage,
            memory_limit_bytes: st.memory.usage_limit,
        })
    }

    fn pause(&self, container_id: &str) -> Result<()> {
        let vm = self.vm()?;
        let mut req = PauseContainerRequest::new();
        req.container_id = container_id.into();
        vm.client
            .pause_container(agent::prompt(), &req)
            .map(|_| ())
            .map_err(agent::map("PauseContainer"))
    }

    fn resume(&self, container_id: &str) -> Result<()> {
        let vm = self.vm()?;
        let mut req = ResumeContainerRequest::new();
        req.container_id = container_id.into();
        vm.client
            .resume_container(agent::prompt(), &req)
            .map(|_| ())
            .map_err(agent::map("ResumeContainer"))
    }

    fn remove_container(&self, container_id: &str) -> Result<()> {
        let vm = self.vm()?;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(c, _), _| c != container_id);
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.into();
        match vm.client.remove_container(agent::prompt(), &req) {
            Ok(_) => Ok(()),
            // A dead VM took the container with it: nothing is left to remove.
            Err(e) if self.vm_gone_within(Duration::from_secs(2)) => {
                tracing::info!(sandbox = %vm.sandbox_id, container = %container_id,
                    "the VM is gone, so is the container: {e}");
                Ok(())
            }
            Err(e) => Err(agent::map("RemoveContainer")(e)),
        }
    }

    fn next_oom(&self) -> Option<String> {
        let mut req = OomEventRequest::new();
        req.timeout_ms = OOM_POLL_MS;
        loop {
            let vm = self.vm().ok()?;
            match vm.client.oom_event(agent::prompt(), &req) {
                Ok(r) if !r.container_id.is_empty() => return Some(r.container_id),
                Ok(_) => {}
                Err(_) if self.vm_gone() => return None,
                Err(e) => {
                    tracing::warn!(sandbox = %vm.sandbox_id, "OomEvent: {e}");
                    std::thread::sleep(Duration::from_millis(u64::from(OOM_POLL_MS)));
                }
            }
        }
    }

    fn destroy_sandbox(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        let _ = vm
            .client
            .destroy_sandbox(agent::prompt(), &DestroySandboxRequest::new());
        let mut children = vm.children.lock().unwrap_or_else(|e| e.into_inner());
        let mut grace = POWEROFF_GRACE;
        for child in children.iter_mut() {
            launch::stop(child, grace);
            // virtiofsd ends once the VMM hung up; it gets a short grace only.
            grace = Duration::from_secs(2);
        }
        vm.sockets.remove();
        host_pids::clear(&vm.state_dir);
        tracing::info!(sandbox = %vm.sandbox_id, "VM stopped");
        Ok(())
    }
}

impl Drop for VmBackend {
    fn drop(&mut self) {
        let _ = self.destroy_sandbox();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, SpecBuilder};

    #[test]
    fn volumes_are_bound_from_the_guest_share() {
        let mounts = vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source("/srv/data")
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .unwrap(),
        ];
        let spec = SpecBuilder::default().mounts(mounts).build().unwrap();
        let volumes = [SharedVolume {
            destination: "/data".into(),
            path_in_share: ".volumes/c1/0".into(),
            readonly: true,
        }];
        let json: serde_json::Value =
            serde_json::from_slice(&guest_spec(&spec, &volumes).unwrap()).unwrap();
        let mounts = json["mounts"].as_array().unwrap();
        assert_eq!(mounts[0]["source"], "proc");
        assert_eq!(mounts[1]["source"], "/run/hull/shared/.volumes/c1/0");
    }

    #[test]
    fn calls_before_the_sandbox_are_refused() {
        let backend = VmBackend::default();
        assert!(backend.pids("c1").is_err());
        assert!(backend.next_oom().is_none());
        backend.destroy_sandbox().unwrap();
    }
}
