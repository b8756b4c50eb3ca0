//! Lab test: hull-agent as `/init` of the Hull guest kernel, booted with QEMU
//! microvm (the reference VMM until hull-vmm exists) with a vhost-vsock
//! device: the host calls Version over vsock and runs a container whose
//! stdout is a vsock stream the guest dials back.
//!
//! Needs the lab (KVM that boots standard kernels, root, /dev/vhost-vsock).
//! `HULL_LAB_MODULES=DIR` names a directory of vsock/vhost modules for the lab
//! kernel to insmod when /dev/vhost-vsock is missing; `HULL_AGENT_MUSL` and
//! `HULL_KERNEL` override the static agent and the guest `vmlinux`.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use hull_tests::{guest_kernel, qemu_microvm, repo_root};
use serde_json::json;

const MODULES: [&str; 5] = [
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vhost_iotlb",
    "vhost",
    "vhost_vsock",
];
/// Guest CID and the host port its stdout stream dials.
const CID: u32 = 42;
const STDOUT_PORT: u32 = 7001;

fn musl_agent() -> PathBuf {
    let path = std::env::var_os("HULL_AGENT_MUSL").map_or_else(
        || repo_root().join("target/x86_64-unknown-linux-musl/release/hull-agent"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no static agent at {path:?}: cargo build -p hull-agent --release --target x86_64-unknown-linux-musl"
    );
    path
}

fn ensure_vhost_vsock() {
    if Path::new("/dev/vhost-vsock").exists() {
        return;
    }
    if let Some(dir) = std::env::var_os("HULL_LAB_MODULES") {
        for m in MODULES {
            let _ = Command::new("insmod")
                .arg(Path::new(&dir).join(format!("{m}.ko")))
                .status();
        }
    }
    assert!(
        Path::new("/dev/vhost-vsock").exists(),
        "no /dev/vhost-vsock: load vhost_vsock in the lab (or set HULL_LAB_MODULES)"
    );
}

/// An initramfs: the agent as /init, /dev/console, and a busybox rootfs.
fn initramfs(dir: &Path) -> PathBuf {
    let stage = dir.join("stage");
    let rootfs = stage.join("containers/c1/rootfs");
    for d in ["dev", "bin", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(stage.join("dev")).unwrap();
    std::fs::copy(musl_agent(), stage.join("init")).unwrap();
    let console = std::ffi::CString::new(stage.join("dev/console").to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid NUL-terminated path; creates a device node.
    let rc = unsafe { libc::mknod(console.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(5, 1)) };
    assert_eq!(rc, 0, "mknod /dev/console");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "hostname"] {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            stage.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio");
    out
}

/// A host AF_VSOCK listener on `port`.
fn vsock_listen(port: u32) -> OwnedFd {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "vsock socket");
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; zeroed is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "bind vsock port {port}");
    // SAFETY: listen(2) on our socket.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 4) }, 0);
    fd
}

/// A stream connected to the guest's vsock `port`.
fn vsock(cid: u32, port: u32) -> OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("vsock socket");
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .unwrap_or_else(|e| panic!("connect to vsock {cid}:{port}: {e}"));
    fd
}

fn vsock_accept(listener: &OwnedFd) -> std::fs::File {
    // SAFETY: accept(2) on our listening socket with no address out-parameters.
    let fd = unsafe {
        libc::accept(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert!(fd >= 0, "accept the guest's stdout stream");
    // SAFETY: `fd` is a fresh descriptor from accept(2) that we now own.
    std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel and vhost-vsock (make test-lab)"]
fn lab_guest_agent_answers_over_vsock_and_runs_a_container() {
    ensure_vhost_vsock();
    let dir = std::env::temp_dir().join("hull-lab-guest");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = initramfs(&dir);
    let mut vm = qemu_microvm()
        .arg("-device")
        .arg(format!("vhost-vsock-device,guest-cid={CID}"))
        .arg("-kernel")
        .arg(guest_kernel())
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!(
            "{} hull.containers_root=/containers",
            hull_protocol::vm::DEFAULT_CMDLINE
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let console = BufReader::new(vm.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in console.lines().map_while(Result::ok) {
            println!("guest: {line}");
            if line.starts_with(hull_protocol::READY_MARKER) {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(180));
    if ready.is_err() {
        let _ = vm.kill();
        panic!("no ready marker from the guest within 180 s");
    }
    println!("{}", ready.unwrap());

    let client =
        AgentClient::new(hull_protocol::rpc::Client::new(vsock(CID, 1024), "agent").unwrap());
    let ctx = || ttrpc::context::with_timeout(0);
    let mut req = VersionRequest::new();
    req.api_version = hull_protocol::API_VERSION.into();
    let version = client.version(ctx(), &req).unwrap();
    assert_eq!(version.api_version, hull_protocol::API_VERSION);
    println!(
        "guest agent {} up {:.2} s",
        version.agent_version, version.uptime_secs
    );

    let listener = vsock_listen(STDOUT_PORT);
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hello from $(hostname); exit 3"],
                    "env": ["PATH=/bin"], "cwd": "/"},
        "hostname": "in-the-guest",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}],
                  "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 20}}}
    });
    let mut req = CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.oci_spec_json = serde_json::to_vec(&spec).unwrap();
    req.rootfs = "/containers/c1/rootfs".into();
    let mut ep = StreamEndpoint::new();
    ep.set_vsock_port(STDOUT_PORT);
    req.stdio.mut_or_insert_default().stdout = Some(ep).into();
    let create = std::thread::spawn(move || {
        let r = client.create_container(ctx(), &req);
        (client, r)
    });
    let mut stdout = vsock_accept(&listener);
    let (client, created) = create.join().unwrap();
    created.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut start = StartContainerRequest::new();
    start.container_id = "c1".into();
    client.start_container(ctx(), &start).unwrap();
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "c1".into();
    assert_eq!(client.wait_process(ctx(), &wait).unwrap().exit_status, 3);
    assert_eq!(reader.join().unwrap(), "hello from in-the-guest\n");
    let mut stats = StatsRequest::new();
    stats.container_id = "c1".into();
    let st = client.stats(ctx(), &stats).unwrap();
    assert_eq!(st.memory.usage_limit, 64 << 20);
    let _ = client.destroy_sandbox(ctx(), &DestroySandboxRequest::new());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = vm.try_wait().unwrap() {
            println!("VM ended after DestroySandbox: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM did not end after DestroySandbox"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
