//! The channel between the agent and its setup helper (`hull-agent __setup`):
//! one JSON message per packet on a `SOCK_SEQPACKET` socketpair, optionally
//! carrying a file descriptor (the pty master).
//!
//! The helper's end is close-on-exec, so the agent reads end-of-file once the
//! container process has been executed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

/// Largest message on the channel (they are all tiny).
const MAX_MSG: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Helper → agent: PID of the container process, in the agent's PID
    /// namespace, with its pidfd attached.
    Pid(i32),
    /// Helper → agent: the pty master, passed as the attached descriptor.
    PtyMaster,
    /// Helper → agent: the process is set up and waits for `Start`.
    Ready,
    /// Agent → helper: execute the process now.
    Start,
    /// Helper → agent: setup failed; the process is gone.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("socketpair for the setup channel")]
    Socketpair(#[source] nix::Error),
    #[error("send on the setup channel")]
    Send(#[source] nix::Error),
    #[error("receive on the setup channel")]
    Recv(#[source] nix::Error),
    #[error("malformed message on the setup channel")]
    Decode(#[source] serde_json::Error),
}

pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair (agent end, helper end), both close-on-exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ChannelError::Socketpair)?;
        Ok((Channel(a), Channel(b)))
    }

    /// Wraps an inherited descriptor.
    ///
    /// # Safety
    /// `fd` must be an open socket that nothing else owns.
    pub unsafe fn from_raw(fd: RawFd) -> Channel {
        // SAFETY: the caller guarantees `fd` is open and exclusively ours.
        Channel(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }

    pub fn send(&self, msg: &Msg, fd: Option<RawFd>) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(ChannelError::Decode)?;
        let iov = [IoSlice::new(&bytes)];
        let fds = fd.map(|fd| [fd]);
        let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
            .map_err(ChannelError::Send)?;
        Ok(())
    }

    /// Whether a message (or end-of-file) is waiting, after up to `timeout`.
    pub fn readable(&self, timeout: std::time::Duration) -> Result<bool, ChannelError> {
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(n) => return Ok(n > 0),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ChannelError::Recv(e)),
            }
        }
    }

    /// Next message and its descriptor, or `None` at end-of-file.
    pub fn recv(&self) -> Result<Option<(Msg, Option<OwnedFd>)>, ChannelError> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = loop {
                match recvmsg::<()>(
                    self.0.as_fd().as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other.map_err(ChannelError::Recv)?,
                }
            };
            let mut fd = None;
            for c in msg.cmsgs().map_err(ChannelError::Recv)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        // SAFETY: SCM_RIGHTS just installed `raw` in our table; we own it.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            (msg.bytes, fd)
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(ChannelError::Decode)?;
        Ok(Some((msg, fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_the_channel() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Msg::Pid(42), None).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        a.send(&Msg::PtyMaster, Some(devnull.as_raw_fd())).unwrap();
        assert_eq!(b.recv().unwrap().unwrap().0, Msg::Pid(42));
        let (msg, fd) = b.recv().unwrap().unwrap();
        assert_eq!(msg, Msg::PtyMaster);
        assert!(fd.is_some());
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }
}
