//! Stand-ins for the product backend's guest side, shared by the host tests
//! that drive the VM backend through a real containerd without booting a guest:
//! hull-vmm and virtiofsd are shell scripts, the agent is a ttrpc server in the
//! test process reached through the pod's vsock socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_protocol::agent_ttrpc::{create_agent, Agent};

use super::Lab;

/// Inside a stand-in agent's `impl Agent`: the calls that run a container as far as the shim
/// can tell (Version answering `$version` as the agent's version, CreateSandbox,
/// CreateContainer with pid 1, StartContainer), each answered at once.
macro_rules! runs_containers {
    ($version:literal) => {
        fn version(
            &self,
            _: &ttrpc::TtrpcContext,
            _: hull_protocol::agent::VersionRequest,
        ) -> ttrpc::Result<hull_protocol::agent::VersionResponse> {
            let mut r = hull_protocol::agent::VersionResponse::new();
            r.api_version = hull_protocol::API_VERSION.into();
            r.agent_version = $version.into();
            Ok(r)
        }
        fn create_sandbox(
            &self,
            _: &ttrpc::TtrpcContext,
            _: hull_protocol::agent::CreateSandboxRequest,
        ) -> ttrpc::Result<hull_protocol::agent::Empty> {
            Ok(hull_protocol::agent::Empty::new())
        }
        fn create_container(
            &self,
            _: &ttrpc::TtrpcContext,
            _: hull_protocol::agent::CreateContainerRequest,
        ) -> ttrpc::Result<hull_protocol::agent::CreateContainerResponse> {
            let mut r = hull_protocol::agent::CreateContainerResponse::new();
            r.pid = 1;
            Ok(r)
        }
        fn start_container(
            &self,
            _: &ttrpc::TtrpcContext,
            _: hull_protocol::agent::StartContainerRequest,
        ) -> ttrpc::Result<hull_protocol::agent::Empty> {
            Ok(hull_protocol::agent::Empty::new())
        }
    };
}
pub(crate) use runs_containers;

/// A scratch directory for the stand-ins of one test: `/tmp/hull-NAME.PID`, made afresh.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/hull-{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a detached container `id` of its own pod, its stdio null; the pid of its shim, the
/// only one of `lab`.
pub fn run_detached(lab: &Lab, id: &str) -> i32 {
    lab.run_sleeper(id, &["--null-io"]);
    let shims = lab.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    shims[0]
}

/// Serves `agent`: the returned socket takes the shim's hybrid-vsock
/// connections (`CONNECT <port>` → `OK <n>`) and relays them to a ttrpc server.
pub fn serve(dir: &Path, agent: Arc<dyn Agent + Send + Sync>) -> (ttrpc::Server, PathBuf) {
    let inner = dir.join("agent-ttrpc.sock");
    let services: HashMap<_, _> = create_agent(agent);
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", inner.display()))
        .unwrap()
        .register_service(services)
        .set_thread_count_max(256);
    server.start().unwrap();
    let front = dir.join("agent.sock");
    let listener = UnixListener::bind(&front).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let inner = inner.clone();
            std::thread::spawn(move || relay(conn, &inner));
        }
    });
    (server, front)
}

fn relay(mut conn: UnixStream, inner: &Path) {
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, &conn);
    if reader.read_until(b'\n', &mut line).is_err() || conn.write_all(b"OK 1\n").is_err() {
        return;
    }
    let Ok(agent) = UnixStream::connect(inner) else {
        return;
    };
    let (mut a, mut b) = (agent.try_clone().unwrap(), conn.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b, &mut a);
        let _ = a.shutdown(std::net::Shutdown::Both);
    });
    let (mut a, mut c) = (agent, conn);
    let _ = std::io::copy(&mut a, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Both);
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Writes the hull-vmm and virtiofsd stand-ins into `dir` and returns the
/// Hull config that uses them. hull-vmm records its pid in `dir/vmm.pid`,
/// points the pod's vsock socket (`"uds"` in its `--config vm.json`) at `agent`, prints the ready marker, runs
/// `console` (shell, its stdout is the guest console) and then sleeps with the
/// console closed. Both write nothing to stderr.
pub fn host_processes(dir: &Path, agent: &Path, console: &str, extra_config: &str) -> String {
    let vmm = dir.join("hull-vmm");
    let virtiofsd = dir.join("virtiofsd");
    script(
        &vmm,
        &format!(
            "exec 2>/dev/null\necho $$ > {pidfile}\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --config ] && cfg=\"$2\"; shift; done\n\
             ln -s {agent} \"$(sed -n 's/.*\"uds\": \"\\(.*\\)\".*/\\1/p' \"$cfg\")\"\n\
             echo {marker}\n{console}\nexec sleep 1001 >/dev/null\n",
            pidfile = dir.join("vmm.pid").display(),
            agent = agent.display(),
            marker = hull_protocol::READY_MARKER
        ),
    );
    script(
        &virtiofsd,
        "exec 2>/dev/null\n\
         while [ $# -gt 0 ]; do [ \"$1\" = --socket-path ] && : > \"$2\"; shift; done\n\
         exec sleep 1002\n",
    );
    format!(
        "hull_vmm = {vmm:?}\nvirtiofsd = {virtiofsd:?}\nkernel = \"/nonexistent/vmlinux\"\n\
         initrd = \"/nonexistent/initrd\"\n{extra_config}"
    )
}

/// Kills the hull-vmm stand-in of `dir`, as a guest powering off ends hull-vmm.
pub fn power_off(dir: &Path) {
    if let Ok(pid) = std::fs::read_to_string(dir.join("vmm.pid")) {
        // SAFETY: kill(2) with a pid and a signal; touches no memory.
        unsafe { libc::kill(pid.trim().parse().unwrap_or(0), libc::SIGKILL) };
    }
}

/// The host pids the shim recorded for pod `pod` (hull-vmm, virtiofsd).
pub fn recorded_pids(run_dir: &Path, pod: &str) -> Vec<String> {
    std::fs::read_to_string(run_dir.join("hulltest").join(pod).join("host-pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
