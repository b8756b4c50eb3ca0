//! The product backend: the pod's microVM (`hull-vmm` with the share served by
//! `virtiofsd`) and `hull-agent` inside it, driven over ttrpc on hybrid vsock.

mod agent;
mod cgroup;
mod console;
mod hybrid;
mod images;
mod launch;
mod netlink;
pub mod network;
pub mod sizing;
mod spec;
mod streams;
mod supervise;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use containerd_shim_hull_v2::guest::oom;
use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use hull_protocol::vm::GUEST_SHARE_DIR as GUEST_SHARE;
use oci_spec::runtime::LinuxResources;

use super::{
    host_pids, Backend, BackendError, ContainerRequest, ContainerStats, ExecRequest,
    ProcessStreams, Result, SandboxRequest, StdioWanted,
};
use launch::Sockets;
use network::PodNetwork;
use spec::{guest_spec, sandbox_netns, PodNamespaces};
pub use spec::{sandbox_network, SandboxNetwork};

/// How long virtiofsd may take to create its socket at least; longer when
/// `agent_timeout_secs` is (10 pods starting at once in the nested lab took
/// more than 60 s; a virtiofsd that exits is noticed at once either way).
const FS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to boot to the agent's ready marker (the lab is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the guest may take to power off after DestroySandbox.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// How long hull-vmm's control socket may take to answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the OOM watcher waits after a failed OomEvent before it calls again.
const OOM_RETRY: Duration = Duration::from_secs(2);
/// Exit status reported for processes whose VM died under them (128 + SIGKILL).
const VM_GONE_STATUS: u32 = 128 + libc::SIGKILL as u32;

/// The running sandbox.
struct Vm {
    sandbox_id: String,
    state_dir: std::path::PathBuf,
    sockets: Sockets,
    client: AgentClient,
    /// A duplicate of the client's socket: shut down to end every call in flight.
    conn: OwnedFd,
    /// How long a prompt agent call may take (`agent_timeout_secs`).
    timeout: Duration,
    /// The guest's memory, in MiB.
    memory_mib: u32,
    ports: streams::Ports,
    /// hull-vmm, then virtiofsd.
    children: Mutex<Vec<Child>>,
    /// The pod's host cgroup holding them, removed after them.
    cgroup: Mutex<cgroup::PodCgroup>,
    /// Which image fills which of the VM's image slots.
    images: Mutex<images::ImageSlots>,
}

impl Vm {
    fn prompt(&self) -> ttrpc::context::Context {
        agent::prompt(self.timeout)
    }
}

/// Runs a pod in a microVM.
#[derive(Default)]
pub struct VmBackend {
    vm: OnceLock<Vm>,
    stopped: AtomicBool,
    /// Set once the agent stopped answering and the VM was killed for it.
    unresponsive: AtomicBool,
    /// Guest pids from CreateContainer / ExecProcess, by (container, exec id or "").
    pids: Mutex<HashMap<(String, String), u32>>,
    /// The pod's first container (the CRI sandbox container), whose init's
    /// namespaces the pod's other containers may join.
    sandbox_container: Mutex<Option<String>>,
    /// The host network namespace the CRI sandbox container's spec named.
    sandbox_netns: Mutex<Option<std::path::PathBuf>>,
    /// Which OOM events reach containerd.
    oom: Mutex<oom::Filter>,
    /// Set once virtiofsd died under the running VM and the VM was killed for it.
    fs_died: Arc<AtomicBool>,
    /// The watch on virtiofsd, stopped before any deliberate teardown.
    fs_watch: Mutex<Option<supervise::Watch>>,
    /// The taps and tc filters in the pod's CNI network namespace.
    network: Mutex<Option<PodNetwork>>,
}

fn sandbox_err(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::Sandbox(Box::new(e))
}

fn exec_key(exec_id: Option<&str>) -> String {
    exec_id.unwrap_or_default().to_string()
}

impl VmBackend {
    fn vm(&self) -> Result<&Vm> {
        if self.unresponsive.load(Ordering::SeqCst) {
            return Err(BackendError::Agent(
                "the pod's VM was stopped because its agent did not answer".into(),
            ));
        }
        if self.fs_died.load(Ordering::SeqCst) {
            return Err(BackendError::Agent(
                "the pod's VM was stopped because virtiofsd, which serves its share, exited; \
                 delete the pod's tasks"
                    .into(),
            ));
        }
        match self.vm.get() {
            Some(vm) if !self.stopped.load(Ordering::SeqCst) => Ok(vm),
            _ => Err(BackendError::Agent("the pod's VM is not running".into())),
        }
    }

    /// Whether hull-vmm has exited (or the sandbox was destroyed or killed).
    fn vm_gone(&self) -> bool {
        let Some(vm) = self.vm.get() else { return true };
        if self.stopped.load(Ordering::SeqCst) || self.vm_killed() {
            return true;
        }
        let mut children = vm.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .first_mut()
            .is_none_or(|vmm| !matches!(vmm.try_wait(), Ok(None)))
    }

    /// Whether the shim killed the VM: its agent stopped answering or its
    /// virtiofsd died. Every process of the pod died with it.
    fn vm_killed(&self) -> bool {
        self.unresponsive.load(Ordering::SeqCst) || self.fs_died.load(Ordering::SeqCst)
    }

    /// Watches virtiofsd: if it dies while the VM runs, the VM is killed
    /// (hull-vmm through its pidfd) and every call in flight ends.
    fn supervise_virtiofsd(
        &self,
        sandbox_id: &str,
        vmm: &Child,
        virtiofsd: &Child,
        conn: &OwnedFd,
    ) -> std::result::Result<supervise::Watch, supervise::SuperviseError> {
        let vmm_fd = supervise::pidfd("hull-vmm", vmm.id())?;
        let fs_fd = supervise::pidfd("virtiofsd", virtiofsd.id())?;
        let conn = conn.try_clone().map_err(supervise::SuperviseError::Dup)?;
        let died = self.fs_died.clone();
        let sandbox = sandbox_id.to_string();
        supervise::Watch::start(fs_fd, move |status| {
            died.store(true, Ordering::SeqCst);
            if supervise::exited(&vmm_fd) {
                tracing::info!(sandbox = %sandbox, %status, "virtiofsd exited after hull-vmm");
                return;
            }
            tracing::error!(sandbox = %sandbox, %status,
                "virtiofsd, which serves the pod's share, exited under the running VM: \
                 killing the VM; every task of the pod exits");
            supervise::kill(&vmm_fd);
            // SAFETY: shutdown(2) on a duplicate this closure owns; it ends
            // every agent call in flight at once.
            unsafe { libc::shutdown(conn.as_raw_fd(), libc::SHUT_RDWR) };
        })
    }

    /// Stops the watch on virtiofsd before the shim ends it on purpose.
    fn unsupervise(&self) {
        let watch = self
            .fs_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(watch) = watch {
            watch.stop();
        }
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

    /// The agent did not answer `call` within its deadline (or its connection
    /// broke): the pod cannot be managed any more, so its VM goes now. Every
    /// call in flight ends (WaitProcess with [`VM_GONE_STATUS`]).
    fn stop_unresponsive(&self, vm: &Vm, call: &str, err: &ttrpc::Error) {
        if self.unresponsive.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!(sandbox = %vm.sandbox_id, call, timeout_secs = vm.timeout.as_secs(),
            "the guest agent did not answer ({err}): killing the pod's VM");
        // SAFETY: shutdown(2) on a socket this struct owns; it only changes the
        // socket's state, shared with the client's duplicate.
        unsafe { libc::shutdown(vm.conn.as_raw_fd(), libc::SHUT_RDWR) };
        self.unsupervise();
        let mut children = vm.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            launch::stop(child, Duration::ZERO);
        }
        tracing::info!(sandbox = %vm.sandbox_id, "VM killed");
    }

    /// What namespace paths of a new container's spec may name.
    fn pod_namespaces(&self) -> PodNamespaces {
        let first = self
            .sandbox_container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        PodNamespaces {
            task_pid: std::process::id(),
            sandbox_init: first.and_then(|c| pids.get(&(c, String::new())).copied()),
            sandbox_netns: self
                .sandbox_netns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            pod_netns: self
                .network
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some(),
        }
    }

    /// Starts virtiofsd and hull-vmm (with the pod's taps), connects to the
    /// agent and creates the guest sandbox; undoes all of it on failure.
    fn boot(
        &self,
        req: &SandboxRequest,
        sockets: Sockets,
        vm_config: &hull_protocol::vm::VmConfig,
        network: Option<&PodNetwork>,
    ) -> Result<()> {
        sockets.remove();
        let timeout = Duration::from_secs(req.config.agent_timeout_secs.into());
        let log_limit = console::RateLimit::for_pod();
        // The pod's host cgroup first: launch moves each process into it.
        let mut cgroup =
            cgroup::PodCgroup::create(req.cgroups_path.as_deref()).map_err(sandbox_err)?;
        let mut virtiofsd =
            match launch::start_virtiofsd(req, &sockets, FS_TIMEOUT.max(timeout), &log_limit) {
                Ok(virtiofsd) => virtiofsd,
                Err(e) => {
                    cgroup.remove();
                    return Err(sandbox_err(e));
                }
            };
        let taps = network.map(PodNetwork::tap_fds).unwrap_or_default();
        let started = launch::start_vmm(req, &sockets, vm_config, &taps, BOOT_TIMEOUT, &log_limit);
        let mut vmm = match started {
            Ok(vmm) => {
                launch::record_virtiofsd_server(req, &virtiofsd);
                vmm
            }
            Err(e) => {
                launch::stop(&mut virtiofsd, Duration::ZERO);
                sockets.remove();
                host_pids::clear(&req.state_dir);
                cgroup.remove();
                return Err(sandbox_err(e));
            }
        };
        let booted = agent::connect(&sockets.vsock, timeout).and_then(|(client, conn)| {
            let mut create = CreateSandboxRequest::new();
            create.sandbox_id = req.sandbox_id.clone();
            create.shared_fs_tag = hull_protocol::vm::SHARE_TAG.into();
            create.network = network.map(PodNetwork::to_agent).into();
            client
                .create_sandbox(agent::prompt(timeout), &create)
                .map_err(agent::map("CreateSandbox"))?;
            Ok((client, conn))
        });
        let booted = booted.and_then(|(client, conn)| {
            let watch = self
                .supervise_virtiofsd(&req.sandbox_id, &vmm, &virtiofsd, &conn)
                .map_err(sandbox_err)?;
            Ok((client, conn, watch))
        });
        let (client, conn, watch) = match booted {
            Ok(booted) => booted,
            Err(e) => {
                launch::stop(&mut vmm, Duration::ZERO);
                launch::stop(&mut virtiofsd, Duration::ZERO);
                sockets.remove();
                host_pids::clear(&req.state_dir);
                cgroup.remove();
                return Err(e);
            }
        };
        tracing::info!(sandbox = %req.sandbox_id, vmm = vmm.id(), virtiofsd = virtiofsd.id(),
            cgroup = ?cgroup.dirs(), "VM up");
        let vm = Vm {
            sandbox_id: req.sandbox_id.clone(),
            state_dir: req.state_dir.clone(),
            sockets,
            client,
            conn,
            timeout,
            memory_mib: req.config.memory_mib,
            ports: streams::Ports::default(),
            children: Mutex::new(vec![vmm, virtiofsd]),
            cgroup: Mutex::new(cgroup),
            images: Mutex::new(images::ImageSlots::new(&vm_config.disks)),
        };
        self.vm
            .set(vm)
            .map_err(|_| BackendError::Invalid("the pod's sandbox exists already".into()))?;
        *self.fs_watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
        Ok(())
    }

    /// The serial of the slot holding `image` (filled now if need be), or "" for the share.
    fn image_serial(&self, image: &super::ImageDisk, container: &str) -> Result<String> {
        let vm = self.vm()?;
        let mut slots = vm.images.lock().unwrap_or_else(|e| e.into_inner());
        let serial = slots.serial_for(image, container, |index, file| {
            hull_protocol::control::attach_disk(&vm.sockets.control, index, file)
                .map_err(|e| hull_protocol::error::chain(&e))
        });
        Ok(serial.unwrap_or_default())
    }

    /// Binds the stdio listeners, makes the agent call (which returns the guest
    /// pid), takes the streams.
    fn with_stdio(
        &self,
        key: (String, String),
        wanted: StdioWanted,
        call: impl FnOnce(&Vm, Stdio) -> Result<u32>,
    ) -> Result<ProcessStreams> {
        let vm = self.vm()?;
        let (pending, stdio) =
            streams::prepare(&vm.sockets.vsock, &vm.ports, wanted).map_err(sandbox_err)?;
        let pid = call(vm, stdio)?;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, pid);
        pending.accept(wanted).map_err(sandbox_err)
    }
}

impl Backend for VmBackend {
    fn create_sandbox(&self, req: &SandboxRequest) -> Result<()> {
        let sockets = Sockets::in_dir(&req.state_dir);
        // Checked before anything starts: a bad size fails the create at once.
        let mut vm_config = launch::vm_config(req, &sockets)
            .map_err(|e| BackendError::Invalid(hull_protocol::error::chain(&e)))?;
        if let Some(jail) = vm_config.jail.as_mut() {
            (jail.uid, jail.gid) = req
                .config
                .vmm_ids()
                .map_err(|e| BackendError::Invalid(hull_protocol::error::chain(&e)))?;
        }
        let network = network::for_sandbox(req)?;
        let booted = match &network {
            Some(net) => {
                vm_config.net = net.vm_devices();
                vm_config
                    .validate()
                    .map_err(|e| BackendError::Invalid(hull_protocol::error::chain(&e)))
                    .and_then(|()| self.boot(req, sockets, &vm_config, Some(net)))
            }
            None => self.boot(req, sockets, &vm_config, None),
        };
        match (booted, network) {
            (Err(e), Some(net)) => {
                network::remove(&req.sandbox_id, &req.state_dir, net);
                Err(e)
            }
            (booted, net) => {
                *self.network.lock().unwrap_or_else(|e| e.into_inner()) = net;
                booted
            }
        }
    }

    fn create_container(&self, req: &ContainerRequest<'_>) -> Result<ProcessStreams> {
        sizing::check_container_limit(req.container_id, req.spec, self.vm()?.memory_mib)
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let spec = guest_spec(req.spec, req.volumes, &self.pod_namespaces())?;
        let image_disk = match (&req.image_disk, req.writable_layer_in_guest) {
            (Some(image), true) => self.image_serial(image, req.container_id)?,
            _ => String::new(),
        };
        let key = (req.container_id.to_string(), String::new());
        let streams = self.with_stdio(key, req.stdio, |vm, stdio| {
            let mut create = CreateContainerRequest::new();
            create.container_id = req.container_id.into();
            create.oci_spec_json = spec;
            create.rootfs = format!("{GUEST_SHARE}/{}", req.rootfs_in_share);
            create.writable_layer_in_guest = req.writable_layer_in_guest;
            create.image_disk = image_disk;
            create.stdio = Some(stdio).into();
            vm.client
                .create_container(vm.prompt(), &create)
                .map(|r| r.pid)
                .map_err(agent::map("CreateContainer"))
        })?;
        let mut first = self
            .sandbox_container
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(req.container_id.to_string());
            *self.sandbox_netns.lock().unwrap_or_else(|e| e.into_inner()) = sandbox_netns(req.spec);
        }
        Ok(streams)
    }

    fn exec(&self, req: &ExecRequest<'_>) -> Result<ProcessStreams> {
        let process = serde_json::to_vec(req.process)
            .map_err(|e| BackendError::Invalid(format!("OCI process: {e}")))?;
        let key = (req.container_id.to_string(), req.exec_id.to_string());
        self.with_stdio(key, req.stdio, |vm, stdio| {
            let mut exec = ExecProcessRequest::new();
            exec.container_id = req.container_id.into();
            exec.exec_id = req.exec_id.into();
            exec.oci_process_json = process;
            exec.stdio = Some(stdio).into();
            vm.client
                .exec_process(vm.prompt(), &exec)
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
                .start_container(vm.prompt(), &start)
                .map_err(agent::map("StartContainer"))?;
        }
        Ok(pid)
    }

    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<u32> {
        if self.vm_killed() {
            // The killed VM took every process with it.
            return Ok(VM_GONE_STATUS);
        }
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
        if self.vm_killed() {
            // The killed VM took every process with it.
            return Ok(());
        }
        let vm = self.vm()?;
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_key(exec_id);
        req.signal = signal;
        req.all = all;
        let started = Instant::now();
        match vm.client.signal_process(vm.prompt(), &req) {
            Ok(_) => Ok(()),
            // No answer: the VM goes, and with it every process of the pod
            // (unless the connection broke because the VM is already gone).
            Err(e) if agent::unanswered(&e) => {
                if started.elapsed() >= vm.timeout || !self.vm_gone_within(Duration::from_secs(2)) {
                    self.stop_unresponsive(vm, "SignalProcess", &e);
                }
                Ok(())
            }
            Err(e) => Err(agent::map("SignalProcess")(e)),
        }
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
            .resize_pty(vm.prompt(), &req)
            .map(drop)
            .map_err(agent::map("ResizePty"))
    }

    fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> Result<()> {
        let vm = self.vm()?;
        let mut req = CloseStdinRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_key(exec_id);
        vm.client
            .close_stdin(vm.prompt(), &req)
            .map(drop)
            .map_err(agent::map("CloseStdin"))
    }

    fn pids(&self, container_id: &str) -> Result<Vec<u32>> {
        let vm = self.vm()?;
        let mut req = ListPidsRequest::new();
        req.container_id = container_id.into();
        vm.client
            .list_pids(vm.prompt(), &req)
            .map(|r| r.pids)
            .map_err(agent::map("ListPids"))
    }

    fn stats(&self, container_id: &str) -> Result<ContainerStats> {
        let vm = self.vm()?;
        let mut req = StatsRequest::new();
        req.container_id = container_id.into();
        let st = vm
            .client
            .stats(vm.prompt(), &req)
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
            .pause_container(vm.prompt(), &req)
            .map(|_| ())
            .map_err(agent::map("PauseContainer"))
    }

    fn resume(&self, container_id: &str) -> Result<()> {
        let vm = self.vm()?;
        let mut req = ResumeContainerRequest::new();
        req.container_id = container_id.into();
        vm.client
            .resume_container(vm.prompt(), &req)
            .map(|_| ())
            .map_err(agent::map("ResumeContainer"))
    }

    fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        let vm = self.vm()?;
        sizing::check_resources_limit(container_id, Some(resources), vm.memory_mib)
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.into();
        req.oci_resources_json = serde_json::to_vec(resources)
            .map_err(|e| BackendError::Invalid(format!("OCI resources: {e}")))?;
        vm.client
            .update_container(vm.prompt(), &req)
            .map(drop)
            .map_err(agent::map("UpdateContainer"))
    }

    fn remove_container(&self, container_id: &str) -> Result<()> {
        self.oom
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(container_id);
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(c, _), _| c != container_id);
        if self.vm_killed() {
            // The killed VM took the container with it.
            return Ok(());
        }
        let vm = self.vm()?;
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.into();
        let started = Instant::now();
        match vm.client.remove_container(vm.prompt(), &req) {
            Ok(_) => Ok(()),
            // A dead VM took the container with it: nothing is left to remove.
            Err(e)
                if started.elapsed() < vm.timeout
                    && self.vm_gone_within(Duration::from_secs(2)) =>
            {
                tracing::info!(sandbox = %vm.sandbox_id, container = %container_id,
                    "the VM is gone, so is the container: {e}");
                Ok(())
            }
            // No answer: the VM goes, and the container with it.
            Err(e) if agent::unanswered(&e) => {
                self.stop_unresponsive(vm, "RemoveContainer", &e);
                Ok(())
            }
            Err(e) => Err(agent::map("RemoveContainer")(e)),
        }
    }

    fn next_oom(&self) -> Option<String> {
        // One call blocks until the guest reports a kill (timeout_ms 0, no deadline): an
        // idle pod costs no wake-ups. The VM's end closes the connection, which ends it.
        let req = OomEventRequest::new();
        loop {
            let wait = self
                .oom
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pace(Instant::now());
            std::thread::sleep(wait);
            let vm = self.vm().ok()?;
            let id = match vm.client.oom_event(agent::blocking(), &req) {
                Ok(r) if !r.container_id.is_empty() => r.container_id,
                Ok(_) => continue,
                Err(_) if self.vm_gone() => return None,
                Err(e) => {
                    tracing::warn!(sandbox = %vm.sandbox_id, "OomEvent: {e}");
                    std::thread::sleep(OOM_RETRY);
                    continue;
                }
            };
            let member = self
                .pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&(id.clone(), String::new()));
            let mut filter = self.oom.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let admitted = filter.admit(&id, member, now);
            if let Some((foreign, coalesced)) = filter.warning(now) {
                tracing::warn!(sandbox = %vm.sandbox_id, foreign, coalesced,
                    "OOM events dropped: {foreign} for containers not in this pod, \
                     {coalesced} repeats within {} ms", oom::COALESCE.as_millis());
            }
            if admitted {
                return Some(id);
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
        self.unsupervise();
        // A VM killed for a hung agent or a dead virtiofsd has nothing left to power off.
        let mut grace = Duration::ZERO;
        if !self.vm_killed() {
            // The pod's cost, for its story in the log.
            match hull_protocol::control::vm_stats(&vm.sockets.control, STATS_TIMEOUT) {
                Ok(s) => {
                    tracing::info!(sandbox = %vm.sandbox_id, vmm_rss_kib = s.memory.vmm_rss_kib,
                    cpu_user_s = s.cpu.user_s, cpu_system_s = s.cpu.system_s,
                    vcpu_exits = s.vcpu_exits, uptime_s = s.uptime_s, "VM figures at teardown")
                }
                Err(e) => tracing::debug!(sandbox = %vm.sandbox_id,
                    "no VM figures: {}", hull_protocol::error::chain(&e)),
            }
            let _ = vm
                .client
                .destroy_sandbox(vm.prompt(), &DestroySandboxRequest::new());
            grace = POWEROFF_GRACE;
        }
        let mut children = vm.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            launch::stop(child, grace);
            // virtiofsd ends once the VMM hung up; it gets a short grace only.
            grace = grace.min(Duration::from_secs(2));
        }
        vm.sockets.remove();
        let network = self
            .network
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(net) = network {
            network::remove(&vm.sandbox_id, &vm.state_dir, net);
        }
        host_pids::clear(&vm.state_dir);
        vm.cgroup.lock().unwrap_or_else(|e| e.into_inner()).remove();
        tracing::info!(sandbox = %vm.sandbox_id, "VM stopped");
        Ok(())
    }

    fn guest_writable_layer(&self) -> bool {
        true
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

    #[test]
    fn calls_before_the_sandbox_are_refused() {
        let backend = VmBackend::default();
        assert!(backend.pids("c1").is_err());
        assert!(backend.next_oom().is_none());
        backend.destroy_sandbox().unwrap();
    }

    /// A VM whose "agent" is a Unix socket that reads every request and never
    /// answers, and whose hull-vmm and virtiofsd are `sleep` processes.
    fn hung_vm(
        dir: &std::path::Path,
        timeout: Duration,
    ) -> (VmBackend, std::thread::JoinHandle<()>) {
        use std::io::Read;
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(theirs.read(&mut buf), Ok(n) if n > 0) {}
        });
        let conn = OwnedFd::from(ours.try_clone().unwrap());
        let client = AgentClient::new(hull_protocol::rpc::Client::new(ours, "agent").unwrap());
        let sleeper = || {
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap()
        };
        let vm = Vm {
            sandbox_id: "hung".into(),
            state_dir: dir.to_path_buf(),
            sockets: Sockets::in_dir(dir),
            client,
            conn,
            timeout,
            memory_mib: 512,
            ports: streams::Ports::default(),
            children: Mutex::new(vec![sleeper(), sleeper()]),
            cgroup: Mutex::default(),
            images: Mutex::default(),
        };
        let backend = VmBackend::default();
        assert!(backend.vm.set(vm).is_ok());
        backend
            .pids
            .lock()
            .unwrap()
            .insert(("c1".into(), String::new()), 1);
        (backend, agent)
    }

    #[test]
    fn a_hung_agent_gets_its_vm_killed_on_kill_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(1);
        let (backend, agent) = hung_vm(dir.path(), timeout);
        let backend = std::sync::Arc::new(backend);
        // A waiter blocked on WaitProcess (no deadline) and a hung Stats call.
        let waiter = {
            let b = backend.clone();
            std::thread::spawn(move || b.wait("c1", None))
        };
        let stats = {
            let b = backend.clone();
            std::thread::spawn(move || b.stats("c1"))
        };
        let started = Instant::now();
        backend.signal("c1", None, 15, false).unwrap();
        let took = started.elapsed();
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "kill returned after {took:?}"
        );
        let vm = backend.vm.get().unwrap();
        for child in vm.children.lock().unwrap().iter_mut() {
            assert!(
                matches!(child.try_wait(), Ok(Some(_))),
                "hull-vmm and virtiofsd stand-ins are killed and reaped"
            );
        }
        assert_eq!(waiter.join().unwrap().unwrap(), VM_GONE_STATUS);
        assert!(stats.join().unwrap().is_err(), "the hung call ends too");
        assert!(started.elapsed() < timeout + Duration::from_secs(6));
        // Afterwards: errors at once, Kill and Delete succeed, teardown is quick.
        assert!(backend.pids("c1").is_err());
        assert_dead_pod_answers_at_once(&backend, || {});
        agent.join().unwrap();
    }

    /// `first`, then Kill, Delete and teardown of a pod whose VM is gone, all
    /// succeed within a second.
    fn assert_dead_pod_answers_at_once(backend: &VmBackend, first: impl FnOnce()) {
        let quick = Instant::now();
        first();
        backend.signal("c1", None, 9, true).unwrap();
        backend.remove_container("c1").unwrap();
        backend.destroy_sandbox().unwrap();
        assert!(
            quick.elapsed() < Duration::from_secs(1),
            "{:?}",
            quick.elapsed()
        );
    }

    #[test]
    fn a_hung_agent_gets_its_vm_killed_on_delete() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(1);
        let (backend, _agent) = hung_vm(dir.path(), timeout);
        let started = Instant::now();
        backend.remove_container("c1").unwrap();
        assert!(started.elapsed() < timeout + Duration::from_secs(2));
        assert!(backend.unresponsive.load(Ordering::SeqCst));
        assert!(backend.vm_gone());
        backend.destroy_sandbox().unwrap();
    }

    #[test]
    fn a_dead_virtiofsd_kills_the_vm_and_every_task_exits() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, agent) = hung_vm(dir.path(), Duration::from_secs(30));
        let backend = std::sync::Arc::new(backend);
        let vm = backend.vm.get().unwrap();
        let watch = {
            let children = vm.children.lock().unwrap();
            backend
                .supervise_virtiofsd("hung", &children[0], &children[1], &vm.conn)
                .unwrap()
        };
        *backend.fs_watch.lock().unwrap() = Some(watch);
        let waiter = {
            let b = backend.clone();
            std::thread::spawn(move || b.wait("c1", None))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!backend.vm_gone(), "the VM runs while virtiofsd does");
        let started = Instant::now();
        vm.children.lock().unwrap()[1].kill().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), VM_GONE_STATUS);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(vm.children.lock().unwrap()[0].try_wait(), Ok(Some(_))) {
            assert!(
                Instant::now() < deadline,
                "the hull-vmm stand-in still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(backend.vm_gone());
        let err = backend.pids("c1").unwrap_err().to_string();
        assert!(err.contains("virtiofsd"), "{err}");
        // Later waits, Kill, Delete and teardown answer at once.
        assert_dead_pod_answers_at_once(&backend, || {
            assert_eq!(backend.wait("c1", Some("e1")).unwrap(), VM_GONE_STATUS);
        });
        agent.join().unwrap();
    }

    #[test]
    fn a_deliberate_teardown_does_not_fire_the_virtiofsd_watch() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _agent) = hung_vm(dir.path(), Duration::from_secs(1));
        let vm = backend.vm.get().unwrap();
        let watch = {
            let children = vm.children.lock().unwrap();
            backend
                .supervise_virtiofsd("hung", &children[0], &children[1], &vm.conn)
                .unwrap()
        };
        *backend.fs_watch.lock().unwrap() = Some(watch);
        // The hung agent gets the VM killed (hull-vmm and virtiofsd together).
        backend.remove_container("c1").unwrap();
        assert!(backend.unresponsive.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !backend.fs_died.load(Ordering::SeqCst),
            "virtiofsd was stopped on purpose"
        );
        backend.destroy_sandbox().unwrap();
    }

    #[test]
    fn the_sandbox_init_is_the_first_containers_guest_pid() {
        let backend = VmBackend::default();
        backend
            .pids
            .lock()
            .unwrap()
            .insert(("c1".into(), String::new()), 5);
        let ns = backend.pod_namespaces();
        assert_eq!(ns.task_pid, std::process::id());
        assert_eq!(ns.sandbox_init, None, "no sandbox container recorded yet");
        *backend.sandbox_container.lock().unwrap() = Some("c1".into());
        assert_eq!(backend.pod_namespaces().sandbox_init, Some(5));
    }
}
