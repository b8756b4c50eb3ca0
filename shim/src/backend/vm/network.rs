//! The pod's network on the host: inside the network namespace CNI set up
//! (CRI's `/var/run/netns/cni-…`), one tap per CNI interface, joined to it by
//! tc ingress `mirred egress redirect` filters both ways, so frames pass
//! between the CNI interface and hull-vmm's virtio-net untouched; the CNI
//! interface keeps its addresses, which the guest takes over (same MAC, same
//! addresses, routes and MTU). Teardown removes the taps and the qdiscs, so
//! CNI's DEL finds the namespace as it left it.
//!
//! Links, addresses and routes are read with `ip -json`, the qdiscs, filters
//! and tap settings made with `ip`/`tc` (iproute2, on every Kubernetes node),
//! run from a thread that entered the namespace (children inherit it); every
//! command's exit status is checked and its stderr reported. The tap itself is
//! opened here (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) so the
//! shim holds its descriptor for hull-vmm.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_protocol::agent::{NetInterface, NetRoute};
use hull_protocol::vm::NetConfig;
use nix::sched::{setns, CloneFlags};
use serde::{Deserialize, Serialize};

/// Tap names: `tap<n>_hull`, the n-th CNI interface's.
const TAP_SUFFIX: &str = "_hull";
/// The record of the pod's plumbing in its state directory, for the cleanup
/// of a shim that died.
pub const RECORD_FILE: &str = "network.json";
/// CNI interfaces one pod may have (each costs a tap and a virtio-net device).
const MAX_INTERFACES: usize = 8;

/// Errors of the pod's host-side network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot open the pod's network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot enter {path} (is it a network namespace file, such as CNI's /var/run/netns/cni-…?)"
    )]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot run `{command}` (Hull needs iproute2's ip and tc on the node)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot read the output of `{command}`")]
    Parse {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("interface {name} in the pod's network namespace: {what}")]
    Interface { name: String, what: String },
    #[error(
        "the pod's network namespace has {0} interfaces besides lo; Hull gives a pod at most \
         {MAX_INTERFACES}: check the CNI configuration"
    )]
    TooMany(usize),
    #[error("cannot create the tap {name} (is the tun module loaded? /dev/net/tun must exist)")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot record the pod's network plumbing in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread inside the pod's network namespace panicked")]
    Thread,
}

type Result<T> = std::result::Result<T, NetworkError>;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route through an interface; no destination is the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// What the guest needs of one CNI interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u16,
    /// Global (not link-local) addresses.
    pub addresses: Vec<IpNet>,
    /// Routes CNI (or its IPAM) added; the kernel's own connected routes are
    /// left out, the guest's kernel makes them from the addresses.
    pub routes: Vec<Route>,
}

impl Interface {
    /// What the agent gets of it (CreateSandbox's `network`).
    pub fn to_agent(&self) -> NetInterface {
        let net = |n: &IpNet| {
            let mut p = hull_protocol::agent::IpNet::new();
            p.address = n.addr.to_string();
            p.prefix_len = n.prefix.into();
            p
        };
        let mut i = NetInterface::new();
        i.name = self.name.clone();
        i.mac = self.mac.clone();
        i.mtu = self.mtu.into();
        i.addresses = self.addresses.iter().map(net).collect();
        i.routes = self
            .routes
            .iter()
            .map(|r| {
                let mut route = NetRoute::new();
                route.destination = r.destination.as_ref().map(net).into();
                route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                route
            })
            .collect();
        i
    }
}

/// One CNI interface joined to its tap.
#[derive(Debug)]
pub struct Link {
    pub interface: Interface,
    pub tap: String,
    /// The tap's queue, for hull-vmm.
    pub tap_fd: OwnedFd,
}

/// The pod's plumbing in its network namespace.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    pub links: Vec<Link>,
}

/// What a dead shim's cleanup needs to undo the plumbing.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub netns: PathBuf,
    /// (CNI interface, tap) pairs.
    pub pairs: Vec<(String, String)>,
}

impl PodNetwork {
    /// Enters `netns`, reads every CNI interface (all but lo) and joins each
    /// to a new tap; undoes what it did when a step fails.
    pub fn setup(netns: &Path) -> Result<Self> {
        let links = in_netns(netns, || {
            let interfaces = read_interfaces()?;
            let mut links: Vec<Link> = Vec::new();
            for (i, interface) in interfaces.into_iter().enumerate() {
                match plumb(interface, &format!("tap{i}{TAP_SUFFIX}")) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        for link in links {
                            let _ = unplumb(&link.interface.name, &link.tap);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(links)
        })?;
        Ok(Self {
            netns: netns.to_path_buf(),
            links,
        })
    }

    /// hull-vmm's virtio-net devices: one per tap, with the CNI interface's MAC and MTU.
    pub fn vm_devices(&self) -> Vec<NetConfig> {
        self.links
            .iter()
            .map(|l| NetConfig {
                tap_fd: l.tap_fd.as_raw_fd(),
                mac: l.interface.mac.clone(),
                mtu: l.interface.mtu,
            })
            .collect()
    }

    /// CreateSandbox's `network`.
    pub fn to_agent(&self) -> hull_protocol::agent::PodNetwork {
        let mut net = hull_protocol::agent::PodNetwork::new();
        net.interfaces = self.links.iter().map(|l| l.interface.to_agent()).collect();
        net
    }

    /// The tap descriptors hull-vmm inherits.
    pub fn tap_fds(&self) -> Vec<RawFd> {
        self.links.iter().map(|l| l.tap_fd.as_raw_fd()).collect()
    }

    pub fn record(&self) -> Record {
        Record {
            netns: self.netns.clone(),
            pairs: self
                .links
                .iter()
                .map(|l| (l.interface.name.clone(), l.tap.clone()))
                .collect(),
        }
    }

    /// Writes [`Self::record`] into the pod's state directory.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(RECORD_FILE);
        serde_json::to_vec(&self.record())
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json))
            .map_err(|source| NetworkError::Record { path, source })
    }

    /// Closes the taps and removes them and the qdiscs (with their filters).
    /// Call it once hull-vmm has exited.
    pub fn teardown(self) -> Result<()> {
        let record = self.record();
        drop(self.links);
        record.undo()
    }
}

impl Record {
    /// Reads the record a shim left in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Option<Record> {
        let text = std::fs::read(state_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the taps and the CNI interfaces' ingress qdiscs. A namespace
    /// that is gone already (CNI's DEL ran) leaves nothing to undo.
    pub fn undo(&self) -> Result<()> {
        match in_netns(&self.netns, || {
            let results: Vec<Result<()>> = self
                .pairs
                .iter()
                .map(|(interface, tap)| unplumb(interface, tap))
                .collect();
            results.into_iter().collect()
        }) {
            Err(NetworkError::OpenNetns { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Runs `f` on a thread that entered the network namespace at `path`.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(path).map_err(|source| NetworkError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                NetworkError::EnterNetns {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            f()
        })
        .join()
        .map_err(|_| NetworkError::Thread)?
    })
}

/// Runs `program args` (in the calling thread's network namespace), returns stdout.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json<T: for<'de> Deserialize<'de>>(program: &str, args: &[&str]) -> Result<T> {
    let out = run(program, args)?;
    serde_json::from_str(&out).map_err(|source| NetworkError::Parse {
        command: format!("{program} {}", args.join(" ")),
        source,
    })
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    mtu: u32,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: String,
    local: IpAddr,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct IpAddrs {
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    gateway: Option<IpAddr>,
    #[serde(default)]
    protocol: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// The interfaces of the current network namespace, but lo and Hull's taps.
fn read_interfaces() -> Result<Vec<Interface>> {
    let links: Vec<IpLink> = json("ip", &["-json", "link", "show"])?;
    let links: Vec<IpLink> = links
        .into_iter()
        .filter(|l| l.link_type != "loopback" && !l.ifname.ends_with(TAP_SUFFIX))
        .collect();
    if links.len() > MAX_INTERFACES {
        return Err(NetworkError::TooMany(links.len()));
    }
    links
        .into_iter()
        .map(|link| {
            let addrs: Vec<IpAddrs> =
                json("ip", &["-json", "address", "show", "dev", &link.ifname])?;
            let mut routes: Vec<IpRoute> =
                json("ip", &["-json", "-4", "route", "show", "dev", &link.ifname])?;
            routes.extend(json::<Vec<IpRoute>>(
                "ip",
                &["-json", "-6", "route", "show", "dev", &link.ifname],
            )?);
            interface(link, addrs, routes)
        })
        .collect()
}

/// One interface from what `ip -json` said of it.
fn interface(link: IpLink, addrs: Vec<IpAddrs>, routes: Vec<IpRoute>) -> Result<Interface> {
    let name = link.ifname;
    let bad = |what: String| NetworkError::Interface {
        name: name.clone(),
        what,
    };
    if link.link_type != "ether" {
        return Err(bad(format!(
            "link type {:?}: Hull can only pass Ethernet interfaces (veth, macvlan, …) to the guest",
            link.link_type
        )));
    }
    hull_protocol::vm::parse_mac(&link.address).map_err(|e| bad(e.to_string()))?;
    let mtu = u16::try_from(link.mtu)
        .ok()
        .filter(|m| *m >= hull_protocol::vm::MIN_MTU)
        .ok_or_else(|| {
            bad(format!(
                "MTU {} is outside what virtio-net can carry",
                link.mtu
            ))
        })?;
    let addresses: Vec<IpNet> = addrs
        .into_iter()
        .flat_map(|a| a.addr_info)
        .filter(|a| a.scope != "link" && (a.family == "inet" || a.family == "inet6"))
        .map(|a| IpNet {
            addr: a.local,
            prefix: a.prefixlen,
        })
        .collect();
    if addresses.is_empty() {
        return Err(bad(
            "no IP address; CNI (its IPAM plugin) should have assigned one: check the CNI \
             configuration"
                .into(),
        ));
    }
    let routes = routes
        .into_iter()
        .filter(|r| r.protocol != "kernel" && (r.kind.is_empty() || r.kind == "unicast"))
        .map(|r| {
            let destination = match r.dst.as_str() {
                "default" => None,
                dst => Some(parse_net(dst).ok_or_else(|| bad(format!("route to {dst:?}")))?),
            };
            Ok(Route {
                destination,
                gateway: r.gateway,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Interface {
        name,
        mac: link.address,
        mtu,
        addresses,
        routes,
    })
}

/// `10.0.0.0/24`, or a bare address (a host route).
fn parse_net(text: &str) -> Option<IpNet> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
        None => {
            let a = text.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(IpNet { addr, prefix })
}

/// Opens `/dev/net/tun` and creates the tap `name` in the current network
/// namespace; it lives as long as a descriptor of it is open.
fn open_tap(name: &str) -> Result<OwnedFd> {
    let err = |source| NetworkError::Tap {
        name: name.to_string(),
        source,
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives on this stack
    // frame for the call; the descriptor is open.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(tun);
    // SAFETY: `fd` came from into_raw_fd just above: open and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the tap for `interface` and joins the two (in the current namespace).
fn plumb(interface: Interface, tap: &str) -> Result<Link> {
    let tap_fd = open_tap(tap)?;
    let cni = interface.name.as_str();
    let mtu = interface.mtu.to_string();
    let steps: [(&str, Vec<&str>); 5] = [
        ("ip", vec!["link", "set", "dev", tap, "mtu", &mtu, "up"]),
        ("tc", vec!["qdisc", "add", "dev", cni, "ingress"]),
        ("tc", vec!["qdisc", "add", "dev", tap, "ingress"]),
        ("tc", redirect(cni, tap)),
        ("tc", redirect(tap, cni)),
    ];
    for (program, args) in steps {
        if let Err(e) = run(program, &args) {
            let _ = unplumb(cni, tap);
            return Err(e);
        }
    }
    Ok(Link {
        interface,
        tap: tap.to_string(),
        tap_fd,
    })
}

/// A filter on `from`'s ingress sending every frame out of `to`.
fn redirect<'a>(from: &'a str, to: &'a str) -> Vec<&'a str> {
    vec![
        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8",
        "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
    ]
}

/// Removes the CNI interface's ingress qdisc (its filters go with it) and the
/// tap; what is already gone is fine. Tries both steps, reports the first failure.
fn unplumb(cni: &str, tap: &str) -> Result<()> {
    let gone = |r: Result<String>| match r {
        Err(NetworkError::Command { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("Invalid handle")
                || stderr.contains("Cannot delete qdisc with handle of zero")
                || stderr.contains("does not exist") =>
        {
            Ok(())
        }
        r => r.map(drop),
    };
    let qdisc = gone(run("tc", &["qdisc", "del", "dev", cni, "ingress"]));
    let link = gone(run("ip", &["link", "del", "dev", tap]));
    qdisc.and(link)
}

#[cfg(test)]
mod tests {
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
}
