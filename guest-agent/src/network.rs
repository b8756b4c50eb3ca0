//! The pod's network in the guest (CreateSandbox's `network`): a network
//! namespace of its own, bind-mounted where the CRI sandbox container and the
//! pod's app containers join it, holding each virtio-net interface (found by
//! the MAC of the CNI interface it stands for, renamed to that interface's
//! name) with CNI's MTU, addresses and routes, and `lo`, all up. The agent
//! itself stays in the guest's first network namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hull_protocol::agent::{NetInterface, PodNetwork};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::netlink::{LinkChange, LinkInfo, Netlink, NetlinkError};
use crate::setup::{id_at, NsId};

/// Interfaces one pod may ask for (the shim sends at most as many).
const MAX_INTERFACES: usize = 8;
/// Addresses and routes one interface may carry.
const MAX_ENTRIES: usize = 64;

/// Errors of setting up the pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod network: {0}")]
    Invalid(String),
    #[error(
        "no guest interface has MAC {mac} (CNI interface {name}): the VM lacks its \
         virtio-net device, or the guest kernel has no virtio-net driver"
    )]
    NoSuchMac { mac: String, name: String },
    #[error("interface {name}")]
    Netlink {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod network thread panicked")]
    Thread,
}

type Result<T> = std::result::Result<T, NetworkError>;

/// A destination (None: the default route) and a gateway (None: on the link).
type WantedRoute = (Option<(IpAddr, u8)>, Option<IpAddr>);

/// One interface, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    addresses: Vec<(IpAddr, u8)>,
    routes: Vec<WantedRoute>,
}

fn invalid(what: String) -> NetworkError {
    NetworkError::Invalid(what)
}

fn ip_net(name: &str, address: &str, prefix: u32) -> Result<(IpAddr, u8)> {
    let addr: IpAddr = address
        .parse()
        .map_err(|_| invalid(format!("{name}: {address:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(format!(
            "{name}: prefix /{prefix} is too long for {addr}"
        )));
    }
    Ok((addr, prefix as u8))
}

/// Checks one interface of the request.
fn wanted(i: &NetInterface) -> Result<Wanted> {
    let name = i.name.as_str();
    let name_ok = !name.is_empty()
        && name.len() < 16
        && name != "lo"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(invalid(format!(
            "interface name {name:?}: 1 to 15 letters, digits, '-', '_' or '.', not lo"
        )));
    }
    let mac = hull_protocol::vm::parse_mac(&i.mac)
        .map_err(|e| invalid(format!("interface {name}: {e}")))?;
    if !(u32::from(hull_protocol::vm::MIN_MTU)..=65535).contains(&i.mtu) {
        return Err(invalid(format!("interface {name}: MTU {}", i.mtu)));
    }
    if i.addresses.len() > MAX_ENTRIES || i.routes.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "interface {name}: more than {MAX_ENTRIES} addresses or routes"
        )));
    }
    let addresses = i
        .addresses
        .iter()
        .map(|a| ip_net(name, &a.address, a.prefix_len))
        .collect::<Result<Vec<_>>>()?;
    let routes = i
        .routes
        .iter()
        .map(|r| {
            let dst = r
                .destination
                .as_ref()
                .map(|d| ip_net(name, &d.address, d.prefix_len))
                .transpose()?;
            let gateway = match r.gateway.as_str() {
                "" => None,
                g => Some(ip_net(name, g, 0)?.0),
            };
            if dst.is_none() && gateway.is_none() {
                return Err(invalid(format!(
                    "interface {name}: a default route needs a gateway"
                )));
            }
            if let (Some((d, _)), Some(g)) = (dst, gateway) {
                if d.is_ipv4() != g.is_ipv4() {
                    return Err(invalid(format!(
                        "interface {name}: route to {d} via {g} mixes families"
                    )));
                }
            }
            Ok((dst, gateway))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Wanted {
        name: name.into(),
        mac,
        mtu: i.mtu,
        addresses,
        routes,
    })
}

/// Checks the whole request before anything changes.
pub(crate) fn check(req: &PodNetwork) -> Result<Vec<Wanted>> {
    if req.interfaces.len() > MAX_INTERFACES {
        return Err(invalid(format!(
            "{} interfaces, at most {MAX_INTERFACES}",
            req.interfaces.len()
        )));
    }
    let wanted = req
        .interfaces
        .iter()
        .map(wanted)
        .collect::<Result<Vec<_>>>()?;
    for (n, w) in wanted.iter().enumerate() {
        if wanted[..n]
            .iter()
            .any(|o| o.name == w.name || o.mac == w.mac)
        {
            return Err(invalid(format!(
                "interface {} or its MAC is given twice",
                w.name
            )));
        }
    }
    Ok(wanted)
}

fn by_mac<'a>(links: &'a [LinkInfo], w: &Wanted) -> Result<&'a LinkInfo> {
    links
        .iter()
        .find(|l| l.mac == w.mac)
        .ok_or_else(|| NetworkError::NoSuchMac {
            mac: w
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            name: w.name.clone(),
        })
}

/// Makes the pod's network namespace at `path` with the interfaces of `req`
/// (moved there from the calling thread's namespace) configured and up; says
/// which namespace it is. On failure nothing stays mounted at `path`.
pub fn setup(req: &PodNetwork, path: &Path) -> Result<NsId> {
    let wanted = check(req)?;
    let path = path.to_path_buf();
    std::thread::spawn(move || in_new_netns(&wanted, &path))
        .join()
        .map_err(|_| NetworkError::Thread)?
}

fn netlink(name: &str) -> impl Fn(NetlinkError) -> NetworkError + '_ {
    move |source| NetworkError::Netlink {
        name: name.into(),
        source,
    }
}

/// Runs on a thread of its own: it leaves the agent's namespace for good.
fn in_new_netns(wanted: &[Wanted], path: &PathBuf) -> Result<NsId> {
    let mut first = Netlink::open().map_err(netlink("(the guest's)"))?;
    let links = first.links().map_err(netlink("(the guest's)"))?;
    let found = wanted
        .iter()
        .map(|w| by_mac(&links, w).map(|l| l.index))
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| NetworkError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NetworkError::Io {
            what: format!(
                "create {} (does the pod have a network already?)",
                path.display()
            ),
            source,
        })?;
    let undo = |e: NetworkError| {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(path);
        e
    };
    let sys = |what: &str| {
        let what = what.to_string();
        move |source| NetworkError::Sys { what, source }
    };
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(sys("make the pod's network namespace"))
        .map_err(undo)?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path.as_path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind-mount the pod's network namespace"))
    .map_err(undo)?;
    let mut configure = || -> Result<NsId> {
        let ns = std::fs::File::open(path).map_err(|source| NetworkError::Io {
            what: format!("open {}", path.display()),
            source,
        })?;
        for (w, index) in wanted.iter().zip(&found) {
            let change = LinkChange {
                netns_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&ns)),
                ..Default::default()
            };
            first
                .set_link("move into the pod's network namespace", *index, &change)
                .map_err(netlink(&w.name))?;
        }
        let mut pod = Netlink::open().map_err(netlink("(the pod's)"))?;
        let links = pod.links().map_err(netlink("(the pod's)"))?;
        if let Some(lo) = links.iter().find(|l| l.name == "lo") {
            let up = LinkChange {
                up: true,
                ..Default::default()
            };
            pod.set_link("bring lo up", lo.index, &up)
                .map_err(netlink("lo"))?;
        }
        for w in wanted {
            configure_one(&mut pod, by_mac(&links, w)?, w)?;
        }
        id_at(path, CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Io {
            what: format!("stat {}", path.display()),
            source,
        })
    };
    configure().map_err(undo)
}

/// Renames, sizes and raises one interface, then gives it its addresses and routes.
fn configure_one(pod: &mut Netlink, link: &LinkInfo, w: &Wanted) -> Result<()> {
    let err = netlink(&w.name);
    if link.name != w.name {
        let rename = LinkChange {
            name: Some(&w.name),
            ..Default::default()
        };
        pod.set_link("rename", link.index, &rename).map_err(&err)?;
    }
    let up = LinkChange {
        mtu: Some(w.mtu),
        up: true,
        ..Default::default()
    };
    pod.set_link("set MTU and bring up", link.index, &up)
        .map_err(&err)?;
    for &(addr, prefix) in &w.addresses {
        pod.add_address(link.index, addr, prefix).map_err(&err)?;
    }
    // On-link routes first: a gateway must be reachable when its route comes.
    let mut routes = w.routes.clone();
    routes.sort_by_key(|(_, gateway)| gateway.is_some());
    for (dst, gateway) in routes {
        let family_of = dst
            .map(|(d, _)| d)
            .or(gateway)
            .unwrap_or(IpAddr::from([0; 4]));
        pod.add_route(link.index, dst, gateway, family_of)
            .map_err(&err)?;
    }
    tracing::info!(interface = %w.name, mtu = w.mtu, addresses = ?w.addresses,
        routes = w.routes.len(), "pod interface up");
    Ok(())
}

/// Removes the mount of the pod's network namespace (the sandbox goes).
pub fn remove(path: &Path) {
    if umount2(path, MntFlags::MNT_DETACH).is_ok() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::agent::{IpNet, NetRoute};

    fn net(address: &str, prefix_len: u32) -> IpNet {
        let mut n = IpNet::new();
        n.address = address.into();
        n.prefix_len = prefix_len;
        n
    }

    fn route(dst: Option<IpNet>, gateway: &str) -> NetRoute {
        let mut r = NetRoute::new();
        r.destination = dst.into();
        r.gateway = gateway.into();
        r
    }

    fn eth0(mac: &str) -> NetInterface {
        let mut i = NetInterface::new();
        i.name = "eth0".into();
        i.mac = mac.into();
        i.mtu = 1400;
        i.addresses = vec![net("10.88.0.5", 16), net("fd88::5", 64)];
        i.routes = vec![
            route(None, "10.88.0.1"),
            route(None, "fd88::1"),
            route(Some(net("10.96.0.0", 12)), "10.88.0.1"),
        ];
        i
    }

    fn request(interfaces: Vec<NetInterface>) -> PodNetwork {
        let mut req = PodNetwork::new();
        req.interfaces = interfaces;
        req
    }

    #[test]
    fn a_request_is_checked_before_anything_changes() {
        let ok = check(&request(vec![eth0("02:00:00:00:00:05")])).unwrap();
        assert_eq!(ok[0].addresses.len(), 2);
        assert_eq!(ok[0].routes[0], (None, Some("10.88.0.1".parse().unwrap())));
        type Change = Box<dyn Fn(&mut NetInterface)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|i| i.name = "../x".into()), "interface name"),
            (Box::new(|i| i.name = "lo".into()), "interface name"),
            (
                Box::new(|i| i.name = "a-very-long-name0".into()),
                "interface name",
            ),
            (
                Box::new(|i| i.mac = "01:00:00:00:00:01".into()),
                "unicast MAC",
            ),
            (Box::new(|i| i.mtu = 20), "MTU 20"),
            (
                Box::new(|i| i.addresses[0] = net("10.0.0.1", 33)),
                "prefix /33",
            ),
            (
                Box::new(|i| i.addresses[0] = net("nonsense", 8)),
                "not an IP",
            ),
            (
                Box::new(|i| i.routes.push(route(None, ""))),
                "needs a gateway",
            ),
            (
                Box::new(|i| i.routes.push(route(Some(net("10.1.0.0", 16)), "fd88::1"))),
                "mixes families",
            ),
            (
                Box::new(|i| i.addresses = vec![net("10.0.0.1", 8); MAX_ENTRIES + 1]),
                "more than",
            ),
        ];
        for (change, want) in cases {
            let mut i = eth0("02:00:00:00:00:05");
            change(&mut i);
            let err = check(&request(vec![i])).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let twice = request(vec![eth0("02:00:00:00:00:05"), eth0("02:00:00:00:00:06")]);
        assert!(check(&twice).unwrap_err().to_string().contains("twice"));
        let many = request(vec![eth0("02:00:00:00:00:05"); MAX_INTERFACES + 1]);
        assert!(check(&many).unwrap_err().to_string().contains("at most"));
    }

    /// Runs `f` on a thread in a network namespace of its own (the "guest's
    /// first namespace" of the test), which goes with the thread.
    fn in_scratch_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host tier: making network namespaces needs root"
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_pods_interfaces_are_moved_renamed_and_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns/pod");
        let mac = "02:00:0a:58:00:05";
        let (shown, routes, lo, left) = in_scratch_netns(|| {
            // A veth end stands for the virtio-net device the kernel named eth7.
            ip(&[
                "link", "add", "eth7", "address", mac, "type", "veth", "peer", "name", "peer0",
            ]);
            let id = setup(&request(vec![eth0(mac)]), &path).unwrap();
            assert_eq!(id, id_at(&path, CloneFlags::CLONE_NEWNET).unwrap());
            let left = ip(&["-o", "link", "show"]);
            let netns = |args: &[&str]| {
                let out = std::process::Command::new("nsenter")
                    .arg(format!("--net={}", path.display()))
                    .arg("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                String::from_utf8(out.stdout).unwrap()
            };
            let shown = netns(&["address", "show", "eth0"]);
            let routes = netns(&["route", "show"]) + &netns(&["-6", "route", "show"]);
            let lo = netns(&["link", "show", "lo"]);
            remove(&path);
            (shown, routes, lo, left)
        });
        assert!(
            !left.contains("eth7"),
            "moved out of the first namespace: {left}"
        );
        assert!(shown.contains(mac) && shown.contains("mtu 1400"), "{shown}");
        assert!(
            shown.contains("state UP") || shown.contains(",UP"),
            "{shown}"
        );
        assert!(
            shown.contains("inet 10.88.0.5/16") && shown.contains("inet6 fd88::5/64"),
            "{shown}"
        );
        assert!(
            routes.contains("default via 10.88.0.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.96.0.0/12 via 10.88.0.1 dev eth0"),
            "{routes}"
        );
        assert!(routes.contains("default via fd88::1 dev eth0"), "{routes}");
        assert!(lo.contains("UP"), "{lo}");
        assert!(!path.exists(), "removed");
    }

    #[test]
    fn a_missing_device_is_named_and_leaves_nothing_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod");
        let err = in_scratch_netns(|| setup(&request(vec![eth0("02:00:00:00:00:99")]), &path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("02:00:00:00:00:99") && err.contains("eth0"),
            "{err}"
        );
        assert!(!path.exists());
    }
}
