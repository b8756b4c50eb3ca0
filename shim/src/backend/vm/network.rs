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

use super::SandboxNetwork;
use crate::backend::{BackendError, SandboxRequest};

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
    #[error("cannot remove the {what}")]
    Teardown {
        what: String,
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
/// tap, over netlink (no process: this runs inside containerd's bounded task
/// Delete); what is already gone is fine. Tries both, reports the first failure.
fn unplumb(cni: &str, tap: &str) -> Result<()> {
    let err = |what: String| move |source| NetworkError::Teardown { what, source };
    let qdisc = super::netlink::del_ingress(cni).map_err(err(format!("ingress qdisc of {cni}")));
    let link = super::netlink::del_link(tap).map_err(err(format!("tap {tap}")));
    qdisc.and(link)
}

/// Why a pod asking for the node's network is refused.
const HOST_NETWORK_REFUSED: &str = "the pod asks for the host network (hostNetwork: true, or no \
     network namespace in the sandbox spec): a Hull pod runs in its own VM and cannot share the \
     node's network namespace; run such pods with runc";

/// The pod's taps and filters in CNI's namespace (none for a pod without
/// one), recorded in the state directory for a dead shim's cleanup.
pub fn for_sandbox(req: &SandboxRequest) -> std::result::Result<Option<PodNetwork>, BackendError> {
    let path = match &req.network {
        SandboxNetwork::Loopback => return Ok(None),
        SandboxNetwork::Host => return Err(BackendError::Invalid(HOST_NETWORK_REFUSED.into())),
        SandboxNetwork::Cni(path) => path,
    };
    let fail = |e: NetworkError| {
        BackendError::Invalid(format!("pod network: {}", hull_protocol::error::chain(&e)))
    };
    let net = PodNetwork::setup(path).map_err(fail)?;
    if let Err(e) = net.save(&req.state_dir) {
        let _ = net.teardown();
        return Err(fail(e));
    }
    tracing::info!(sandbox = %req.sandbox_id, netns = %path.display(),
        interfaces = ?net.record().pairs, "pod network plumbed");
    Ok(Some(net))
}

/// Removes the pod's taps and filters (after hull-vmm exited) and its record.
pub fn remove(sandbox_id: &str, state_dir: &Path, net: PodNetwork) {
    match net.teardown() {
        Ok(()) => tracing::info!(sandbox = %sandbox_id, "pod network removed"),
        Err(e) => tracing::error!(sandbox = %sandbox_id, "pod network teardown: {}",
            hull_protocol::error::chain(&e)),
    }
    let _ = std::fs::remove_file(state_dir.join(RECORD_FILE));
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
