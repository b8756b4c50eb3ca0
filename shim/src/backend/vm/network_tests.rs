//! Tests of the pod network plumbing: parsing `ip -json`, and (as root) the
//! plumbing itself in network namespaces made like CNI's.
use super::*;

fn link(json: &str) -> IpLink {
    serde_json::from_str(json).unwrap()
}

const VETH: &str = r#"{"ifindex":3,"ifname":"eth0","flags":["UP"],"mtu":1450,
    "link_type":"ether","address":"0e:f6:7d:13:98:47"}"#;
const ADDRS: &str = r#"[{"ifname":"eth0","addr_info":[
    {"family":"inet","local":"10.99.0.2","prefixlen":24,"scope":"global"},
    {"family":"inet6","local":"fd99::2","prefixlen":64,"scope":"global"},
    {"family":"inet6","local":"fe80::cf6:7dff:fe13:9847","prefixlen":64,"scope":"link"}]}]"#;
const ROUTES: &str = r#"[{"dst":"default","gateway":"10.99.0.1","flags":[]},
    {"dst":"10.99.0.0/24","protocol":"kernel","scope":"link","prefsrc":"10.99.0.2"},
    {"dst":"10.96.0.0/12","gateway":"10.99.0.1"},
    {"dst":"10.99.0.1","scope":"link"},
    {"dst":"fe80::/64","protocol":"kernel","metric":256},
    {"dst":"default","gateway":"fd99::1","metric":1024}]"#;

#[test]
fn an_interface_is_read_from_ip_json() {
    let i = interface(
        link(VETH),
        serde_json::from_str(ADDRS).unwrap(),
        serde_json::from_str(ROUTES).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (i.name.as_str(), i.mac.as_str(), i.mtu),
        ("eth0", "0e:f6:7d:13:98:47", 1450)
    );
    let net = |a: &str, prefix| IpNet {
        addr: a.parse().unwrap(),
        prefix,
    };
    assert_eq!(i.addresses, [net("10.99.0.2", 24), net("fd99::2", 64)]);
    let gw = |a: &str| Some(a.parse().unwrap());
    assert_eq!(
        i.routes,
        [
            Route {
                destination: None,
                gateway: gw("10.99.0.1")
            },
            Route {
                destination: Some(net("10.96.0.0", 12)),
                gateway: gw("10.99.0.1")
            },
            Route {
                destination: Some(net("10.99.0.1", 32)),
                gateway: None
            },
            Route {
                destination: None,
                gateway: gw("fd99::1")
            },
        ]
    );
}

#[test]
fn interfaces_hull_cannot_pass_are_refused_clearly() {
    let addrs = || serde_json::from_str(ADDRS).unwrap();
    let err = interface(link(VETH), vec![], vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eth0") && err.contains("no IP address"),
        "{err}"
    );
    let ipip = link(r#"{"ifname":"t0","mtu":1480,"link_type":"ipip","address":"0.0.0.0"}"#);
    let err = interface(ipip, addrs(), vec![]).unwrap_err().to_string();
    assert!(err.contains("Ethernet"), "{err}");
    let jumbo =
        link(r#"{"ifname":"e","mtu":70000,"link_type":"ether","address":"02:00:00:00:00:01"}"#);
    let err = interface(jumbo, addrs(), vec![]).unwrap_err().to_string();
    assert!(err.contains("MTU 70000"), "{err}");
    let odd = serde_json::from_str(r#"[{"dst":"nonsense"}]"#).unwrap();
    let err = interface(link(VETH), addrs(), odd).unwrap_err().to_string();
    assert!(err.contains("nonsense"), "{err}");
}

#[test]
fn networks_parse_with_and_without_prefix() {
    assert_eq!(parse_net("10.0.0.0/8").unwrap().prefix, 8);
    assert_eq!(parse_net("fd00::1").unwrap().prefix, 128);
    assert!(parse_net("10.0.0.0/33").is_none());
    assert!(parse_net("x/1").is_none());
}

#[test]
fn a_missing_netns_path_is_a_clear_error() {
    let err = PodNetwork::setup(Path::new("/var/run/netns/hull-no-such"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/var/run/netns/hull-no-such"), "{err}");
    // Undoing the plumbing of a namespace CNI already removed is fine.
    let gone = Record {
        netns: "/var/run/netns/hull-no-such".into(),
        pairs: vec![("eth0".into(), "tap0_hull".into())],
    };
    gone.undo().unwrap();
}

#[test]
fn a_file_that_is_no_netns_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = PodNetwork::setup(file.path()).unwrap_err().to_string();
    assert!(err.contains("network namespace"), "{err}");
}

/// A network namespace as CNI leaves it: `eth0` (one end of a veth pair,
/// with addresses, MTU and routes) in the pod's namespace, the peer in a
/// second namespace standing for the node. Both go when dropped.
struct CniNetns {
    pod: String,
    node: String,
}

impl CniNetns {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host tier: making network namespaces needs root"
        );
        let id = std::process::id();
        let this = Self {
            pod: format!("hull-t-{tag}-{id}"),
            node: format!("hull-t-{tag}-node-{id}"),
        };
        let ip = |args: &str| {
            let args: Vec<&str> = args.split(' ').collect();
            run("ip", &args).unwrap_or_else(|e| panic!("{e}"));
        };
        let (pod, node) = (&this.pod, &this.node);
        ip(&format!("netns add {pod}"));
        ip(&format!("netns add {node}"));
        ip(&format!(
            "-n {pod} link add eth0 mtu 1400 type veth peer name vhost netns {node}"
        ));
        ip(&format!("-n {pod} address add 10.77.0.2/24 dev eth0"));
        ip(&format!("-n {pod} address add fd77::2/64 dev eth0 nodad"));
        ip(&format!("-n {pod} link set eth0 up"));
        ip(&format!("-n {pod} route add default via 10.77.0.1"));
        ip(&format!("-n {node} link set vhost mtu 1400 up"));
        ip(&format!("-n {node} address add 10.77.0.1/24 dev vhost"));
        this
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.pod)
    }

    /// `ip`/`tc` output inside the pod namespace, without counters.
    fn state(&self) -> String {
        let netns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.pod];
            all.extend_from_slice(args);
            run("ip", &all).unwrap()
        };
        [
            netns(&["ip", "-o", "link", "show"]),
            netns(&["ip", "-o", "address", "show"]),
            netns(&["ip", "route", "show"]),
            netns(&["tc", "qdisc", "show", "dev", "eth0", "ingress"]),
            netns(&["tc", "filter", "show", "dev", "eth0", "ingress"]),
        ]
        .join("\n")
    }
}

impl Drop for CniNetns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.pod]);
        let _ = run("ip", &["netns", "del", &self.node]);
    }
}

/// Reads one frame from the tap within `timeout` (None: nothing came).
fn read_frame(fd: &OwnedFd, timeout: std::time::Duration) -> Option<Vec<u8>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap();
    if poll(&mut fds, ms).ok()? == 0 {
        return None;
    }
    let mut buf = vec![0u8; 65536];
    let n = nix::unistd::read(fd, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn the_plumbing_joins_a_tap_to_the_cni_interface_and_teardown_undoes_it() {
    let ns = CniNetns::new("plumb");
    let before = ns.state();
    let net = PodNetwork::setup(&ns.path()).unwrap();
    assert_eq!(net.links.len(), 1, "{:?}", net.record());
    let link = &net.links[0];
    let i = &link.interface;
    assert_eq!(
        (i.name.as_str(), i.mtu, link.tap.as_str()),
        ("eth0", 1400, "tap0_hull")
    );
    assert!(i
        .addresses
        .iter()
        .any(|a| a.addr.to_string() == "10.77.0.2" && a.prefix == 24));
    assert!(i
        .addresses
        .iter()
        .any(|a| a.addr.to_string() == "fd77::2" && a.prefix == 64));
    assert!(i.routes.contains(&Route {
        destination: None,
        gateway: Some("10.77.0.1".parse().unwrap())
    }));
    let devices = net.vm_devices();
    assert_eq!(
        (devices[0].mac.as_str(), devices[0].mtu),
        (i.mac.as_str(), 1400)
    );
    let during = ns.state();
    assert!(
        during.contains("tap0_hull") && during.contains("mtu 1400"),
        "{during}"
    );
    assert!(
        during.contains("mirred") && during.contains("tap0_hull"),
        "{during}"
    );
    // The CNI interface keeps its addresses.
    assert!(during.contains("10.77.0.2/24"), "{during}");
    // A frame the node sends to the pod arrives on the tap (after the
    // 10-byte virtio-net header): a UDP datagram to 10.77.0.2 makes the
    // node send an ARP request from its end of the veth.
    let node_links: Vec<IpLink> =
        json("ip", &["-n", &ns.node, "-json", "link", "show", "vhost"]).unwrap();
    let node_mac: Vec<u8> = node_links[0]
        .address
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let node_path = Path::new("/var/run/netns").join(&ns.node);
    in_netns(&node_path, || {
        let sock = std::net::UdpSocket::bind("10.77.0.1:0").unwrap();
        let _ = sock.send_to(b"hello", "10.77.0.2:9");
        Ok(())
    })
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = read_frame(&link.tap_fd, left)
            .unwrap_or_else(|| panic!("no frame of the node reached the tap; saw {seen:x?}"));
        assert!(frame.len() > 10 + 14, "{frame:?}");
        if frame[10 + 6..10 + 12] == node_mac[..] {
            break;
        }
        seen.push(u16::from_be_bytes([frame[10 + 12], frame[10 + 13]]));
    }
    net.teardown().unwrap();
    assert_eq!(ns.state(), before, "the namespace is as CNI left it");
}

#[test]
fn a_failed_plumbing_leaves_nothing_behind() {
    let ns = CniNetns::new("fail");
    // A second interface without an address: the whole setup is refused.
    let ip = |args: &[&str]| run("ip", args).unwrap();
    ip(&[
        "-n", &ns.pod, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2",
    ]);
    let before = ns.state();
    let err = PodNetwork::setup(&ns.path()).unwrap_err().to_string();
    assert!(
        err.contains("interface eth") && err.contains("no IP address"),
        "{err}"
    );
    assert_eq!(ns.state(), before);
}

#[test]
fn a_dead_shims_record_undoes_the_plumbing() {
    let ns = CniNetns::new("record");
    let before = ns.state();
    let dir = tempfile::tempdir().unwrap();
    let net = PodNetwork::setup(&ns.path()).unwrap();
    net.save(dir.path()).unwrap();
    // The shim dies: its descriptors close, the record stays.
    let record = Record::load(dir.path()).unwrap();
    assert_eq!(record, net.record());
    drop(net.links);
    record.undo().unwrap();
    assert_eq!(ns.state(), before);
}

#[test]
fn a_pod_asking_for_the_host_network_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let req = SandboxRequest {
        sandbox_id: "hostnet".into(),
        share_dir: dir.path().join("share"),
        state_dir: dir.path().into(),
        config: crate::config::Config {
            hull_vmm: "/nonexistent/hull-vmm".into(),
            virtiofsd: "/nonexistent/virtiofsd".into(),
            ..Default::default()
        },
        cgroups_path: None,
        network: SandboxNetwork::Host,
    };
    use crate::backend::Backend;
    let backend = super::super::VmBackend::default();
    let err = backend.create_sandbox(&req).unwrap_err().to_string();
    assert!(
        err.contains("host network") && err.contains("runc"),
        "{err}"
    );
    // A CNI path that is no namespace fails with its name, nothing recorded.
    let req = SandboxRequest {
        network: SandboxNetwork::Cni(dir.path().join("no-netns")),
        ..req
    };
    let err = backend.create_sandbox(&req).unwrap_err().to_string();
    assert!(
        err.contains("pod network") && err.contains("no-netns"),
        "{err}"
    );
    assert!(!dir.path().join(RECORD_FILE).exists());
    assert!(backend.vm.get().is_none());
}
