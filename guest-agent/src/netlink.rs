//! The few rtnetlink requests the agent needs to bring the pod's interfaces
//! up (list links, move/rename/configure a link, add an address, add a
//! route), built and parsed by hand: no dependency, static-musl friendly.
//! Message layouts are the kernel's (`linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_link.h`, `linux/if_addr.h`).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
// linux/if_link.h
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NET_NS_FD: u16 = 28;
// linux/if_addr.h
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const IFF_UP: u32 = 0x1;

/// How many reply bytes one recv may bring (the kernel sends at most a page-ish per message).
const RECV_BUF: usize = 32 * 1024;
/// Replies read for one request before giving up (a dump of a few links needs a handful).
const MAX_REPLIES: usize = 256;

/// Errors of rtnetlink requests.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("{what}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: malformed netlink reply")]
    Malformed { what: String },
    #[error("{what}: no answer from the kernel after {MAX_REPLIES} replies")]
    NoAck { what: String },
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A link as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
}

/// What a link change sets (unset: left as is).
#[derive(Debug, Default)]
pub struct LinkChange<'a> {
    pub name: Option<&'a str>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// Move the link to the network namespace open at this descriptor.
    pub netns_fd: Option<RawFd>,
}

/// A NETLINK_ROUTE socket, in the network namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn family(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// RTM_NEWLINK body changing link `index`.
pub fn link_body(index: u32, change: &LinkChange<'_>) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family, pad, type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    let flags = if change.up { IFF_UP } else { 0 };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes()); // change mask: only IFF_UP, and only to set it
    if let Some(name) = change.name {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        push_attr(&mut b, IFLA_IFNAME, &n);
    }
    if let Some(mtu) = change.mtu {
        push_attr(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
    }
    if let Some(fd) = change.netns_fd {
        push_attr(&mut b, IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes());
    }
    b
}

/// RTM_NEWADDR body: `addr/prefix` on link `index` (IPv6 without duplicate
/// address detection: the host side already owns it, the guest answers for it).
pub fn addr_body(index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut b = vec![family(&addr), prefix, flags, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut b, IFA_LOCAL, &addr_bytes(&addr));
    push_attr(&mut b, IFA_ADDRESS, &addr_bytes(&addr));
    b
}

/// RTM_NEWROUTE body: to `dst` (None: default route of `family_of`'s family)
/// through link `index`, via `gateway` or on the link.
pub fn route_body(
    index: u32,
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    family_of: IpAddr,
) -> Vec<u8> {
    let scope = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let dst_len = dst.map_or(0, |(_, p)| p);
    let mut b = vec![
        family(&family_of),
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    if let Some((d, _)) = dst {
        push_attr(&mut b, RTA_DST, &addr_bytes(&d));
    }
    if let Some(g) = gateway {
        push_attr(&mut b, RTA_GATEWAY, &addr_bytes(&g));
    }
    push_attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message of a reply: (type, seq, payload).
fn messages(buf: &[u8]) -> Option<Vec<(u16, u32, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at)? as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return None;
        }
        let kind = u16_at(buf, at + 4)?;
        let seq = u32_at(buf, at + 8)?;
        out.push((kind, seq, &buf[at + NLMSG_HDRLEN..at + len]));
        at += len.next_multiple_of(4);
    }
    Some(out)
}

/// A link from an RTM_NEWLINK payload (ifinfomsg + attributes).
pub fn parse_link(payload: &[u8]) -> Option<LinkInfo> {
    let index = u32_at(payload, 4)?;
    let mut info = LinkInfo {
        index,
        name: String::new(),
        mac: Vec::new(),
    };
    let mut at = 16;
    while at + 4 <= payload.len() {
        let len = u16_at(payload, at)? as usize;
        let kind = u16_at(payload, at + 2)? & 0x3fff;
        if len < 4 || at + len > payload.len() {
            return None;
        }
        let data = &payload[at + 4..at + len];
        match kind {
            IFLA_IFNAME => {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                info.name = String::from_utf8_lossy(&data[..end]).into_owned();
            }
            IFLA_ADDRESS => info.mac = data.to_vec(),
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Some(info)
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; zeroed with the family set names the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg` and `to` outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: `buf` is valid for writes of its length during the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        Ok(n as usize)
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, what: &str, kind: u16, flags: u16, body: &[u8]) -> Result<()> {
        let seq = self.send(kind, flags | NLM_F_ACK, body)?;
        let mut buf = vec![0u8; RECV_BUF];
        for _ in 0..MAX_REPLIES {
            let n = self.recv(&mut buf)?;
            let malformed = || NetlinkError::Malformed { what: what.into() };
            for (kind, s, payload) in messages(&buf[..n]).ok_or_else(malformed)? {
                if kind != NLMSG_ERROR || s != seq {
                    continue;
                }
                let code = u32_at(payload, 0).ok_or_else(malformed)? as i32;
                if code == 0 {
                    return Ok(());
                }
                return Err(NetlinkError::Kernel {
                    what: what.into(),
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
        }
        Err(NetlinkError::NoAck { what: what.into() })
    }

    /// Every link of the socket's network namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let what = "list the network interfaces";
        let seq = self.send(RTM_GETLINK, NLM_F_DUMP, &[0u8; 16])?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut links = Vec::new();
        for _ in 0..MAX_REPLIES {
            let n = self.recv(&mut buf)?;
            let malformed = || NetlinkError::Malformed { what: what.into() };
            for (kind, s, payload) in messages(&buf[..n]).ok_or_else(malformed)? {
                if s != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(links),
                    NLMSG_ERROR => {
                        let code = u32_at(payload, 0).ok_or_else(malformed)? as i32;
                        return Err(NetlinkError::Kernel {
                            what: what.into(),
                            source: std::io::Error::from_raw_os_error(-code),
                        });
                    }
                    RTM_NEWLINK => links.push(parse_link(payload).ok_or_else(malformed)?),
                    _ => {}
                }
            }
        }
        Err(NetlinkError::NoAck { what: what.into() })
    }

    pub fn set_link(&mut self, what: &str, index: u32, change: &LinkChange<'_>) -> Result<()> {
        self.request(what, RTM_NEWLINK, 0, &link_body(index, change))
    }

    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let what = format!("add address {addr}/{prefix}");
        self.request(
            &what,
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &addr_body(index, addr, prefix),
        )
    }

    pub fn add_route(
        &mut self,
        index: u32,
        dst: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        family_of: IpAddr,
    ) -> Result<()> {
        let what = match (dst, gateway) {
            (Some((d, p)), Some(g)) => format!("add route {d}/{p} via {g}"),
            (Some((d, p)), None) => format!("add route {d}/{p} on the link"),
            (None, Some(g)) => format!("add default route via {g}"),
            (None, None) => "add default route on the link".into(),
        };
        self.request(
            &what,
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &route_body(index, dst, gateway, family_of),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_change_carries_name_mtu_netns_and_up() {
        let b = link_body(
            7,
            &LinkChange {
                name: Some("eth0"),
                mtu: Some(1450),
                up: true,
                netns_fd: Some(9),
            },
        );
        assert_eq!(u32_at(&b, 4), Some(7), "ifi_index");
        assert_eq!(
            (u32_at(&b, 8), u32_at(&b, 12)),
            (Some(IFF_UP), Some(IFF_UP))
        );
        // IFLA_IFNAME "eth0\0" padded to 8, IFLA_MTU, IFLA_NET_NS_FD.
        assert_eq!(&b[16..20], &[9, 0, 3, 0][..]);
        assert_eq!(&b[20..28], b"eth0\0\0\0\0");
        assert_eq!(
            (u16_at(&b, 30), u32_at(&b, 32)),
            (Some(IFLA_MTU), Some(1450))
        );
        assert_eq!(
            (u16_at(&b, 38), u32_at(&b, 40)),
            (Some(IFLA_NET_NS_FD), Some(9))
        );
        assert_eq!(b.len(), 44);
        let down = link_body(1, &LinkChange::default());
        assert_eq!(down.len(), 16, "nothing but the header: {down:?}");
        assert_eq!(u32_at(&down, 12), Some(0), "no flag is changed");
    }

    #[test]
    fn addresses_and_routes_are_laid_out_per_family() {
        let v4 = addr_body(3, "10.0.0.2".parse().unwrap(), 24);
        assert_eq!(&v4[..4], &[libc::AF_INET as u8, 24, 0, 0][..]);
        assert_eq!(&v4[8..16], &[8, 0, 2, 0, 10, 0, 0, 2][..], "IFA_LOCAL");
        let v6 = addr_body(3, "fd00::2".parse().unwrap(), 64);
        assert_eq!(&v6[..3], &[libc::AF_INET6 as u8, 64, IFA_F_NODAD][..]);
        assert_eq!(v6.len(), 8 + 20 + 20);

        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let default = route_body(3, None, Some(gw), gw);
        assert_eq!(default[1], 0, "dst_len of the default route");
        assert_eq!(default[6], RT_SCOPE_UNIVERSE);
        assert_eq!(
            &default[12..20],
            &[8, 0, 5, 0, 10, 0, 0, 1][..],
            "RTA_GATEWAY"
        );
        assert_eq!(
            (u16_at(&default, 22), u32_at(&default, 24)),
            (Some(RTA_OIF), Some(3))
        );
        let on_link = route_body(3, Some((gw, 32)), None, gw);
        assert_eq!((on_link[1], on_link[6]), (32, RT_SCOPE_LINK));
        assert_eq!(&on_link[12..20], &[8, 0, 1, 0, 10, 0, 0, 1][..], "RTA_DST");
    }

    #[test]
    fn replies_parse_and_truncated_ones_are_refused() {
        // One RTM_NEWLINK message: ifinfomsg(index 2) + IFNAME "eth0" + ADDRESS.
        let mut payload = vec![0u8; 16];
        payload[4..8].copy_from_slice(&2u32.to_ne_bytes());
        push_attr(&mut payload, IFLA_IFNAME, b"eth0\0");
        push_attr(&mut payload, IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend_from_slice(&payload);
        let parsed = messages(&msg).unwrap();
        assert_eq!(parsed.len(), 1);
        let link = parse_link(parsed[0].2).unwrap();
        assert_eq!(
            link,
            LinkInfo {
                index: 2,
                name: "eth0".into(),
                mac: vec![2, 0, 0, 0, 0, 1]
            }
        );
        assert!(
            messages(&msg[..msg.len() - 1]).is_none(),
            "length past the end"
        );
        let mut bad_attr = payload.clone();
        bad_attr[16..18].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_link(&bad_attr).is_none(), "attribute past the end");
        assert!(parse_link(&[0u8; 3]).is_none());
    }
}
