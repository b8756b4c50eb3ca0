//! The two rtnetlink requests of the pod network's teardown (delete an
//! ingress qdisc, delete a link), sent directly: teardown runs inside the
//! task Delete that containerd bounds at a few seconds, and one `tc`/`ip`
//! process costs seconds on a slow node (and in the lab). Layouts are the
//! kernel's (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/pkt_sched.h`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const RTM_DELLINK: u16 = 17;
const RTM_DELQDISC: u16 = 37;
/// `TC_H_INGRESS`: the ingress qdisc's parent; its handle is `ffff:`.
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// Replies read before giving up on an acknowledgement.
const MAX_REPLIES: usize = 16;

/// The interface index of `name` in the calling thread's network namespace
/// (None: there is no such interface).
pub fn index_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// RTM_DELQDISC body for the ingress qdisc of link `index` (a `tcmsg`).
fn del_ingress_body(index: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family, padding
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&INGRESS_HANDLE.to_ne_bytes());
    b.extend_from_slice(&TC_H_INGRESS.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// RTM_DELLINK body for link `index` (an `ifinfomsg`).
fn del_link_body(index: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family, padding, type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&[0u8; 8]); // flags, change
    b
}

/// Sends one request on a new NETLINK_ROUTE socket (in the calling thread's
/// network namespace) and waits for its acknowledgement.
fn request(kind: u16, body: &[u8]) -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let seq: u32 = 1;
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    // SAFETY: `msg` is valid for reads of its length during the call.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_REPLIES {
        // SAFETY: `buf` is valid for writes of its length during the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(code) = ack(&buf[..n as usize], seq) {
            return match code {
                0 => Ok(()),
                e => Err(std::io::Error::from_raw_os_error(-e)),
            };
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no netlink acknowledgement",
    ))
}

/// The error code of the acknowledgement of `seq` in a reply, if it has one.
fn ack(buf: &[u8], seq: u32) -> Option<i32> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?));
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(at)? as usize;
        let kind = u16::from_ne_bytes(buf.get(at + 4..at + 6)?.try_into().ok()?);
        if len < NLMSG_HDRLEN {
            return None;
        }
        if kind == NLMSG_ERROR && u32_at(at + 8)? == seq {
            return Some(u32_at(at + NLMSG_HDRLEN)? as i32);
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// Deletes the ingress qdisc of `name` (its filters go with it); an interface
/// or qdisc that is gone already is fine.
pub fn del_ingress(name: &str) -> std::io::Result<()> {
    let Some(index) = index_of(name) else {
        return Ok(());
    };
    match request(RTM_DELQDISC, &del_ingress_body(index)) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Deletes the link `name`; one that is gone already is fine.
pub fn del_link(name: &str) -> std::io::Result<()> {
    let Some(index) = index_of(name) else {
        return Ok(());
    };
    match request(RTM_DELLINK, &del_link_body(index)) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let q = del_ingress_body(7);
        assert_eq!(q.len(), 20, "struct tcmsg");
        assert_eq!(&q[4..8], &7i32.to_ne_bytes());
        assert_eq!(&q[8..12], &0xffff_0000u32.to_ne_bytes());
        assert_eq!(&q[12..16], &0xffff_fff1u32.to_ne_bytes());
        let l = del_link_body(9);
        assert_eq!(l.len(), 16, "struct ifinfomsg");
        assert_eq!(&l[4..8], &9i32.to_ne_bytes());
    }

    #[test]
    fn acknowledgements_are_found_by_sequence_and_bad_replies_ignored() {
        let reply = |seq: u32, code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&[0u8; 2]);
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        assert_eq!(ack(&reply(1, 0), 1), Some(0));
        assert_eq!(ack(&reply(1, -19), 1), Some(-19));
        assert_eq!(ack(&reply(2, 0), 1), None, "another request's");
        let mut short = reply(1, 0);
        short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(ack(&short, 1), None);
        assert_eq!(ack(&[0u8; 5], 1), None);
    }
}
