//! The tap behind a virtio-net device: an inherited descriptor checked to be a tap with the
//! virtio-net header, switched to non-blocking, with its offloads set to what the guest acked.
//! Tests and fuzzing use a datagram socket in its place (same one-frame-per-read semantics).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Size of the virtio-net header the tap reads and writes (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// Tap offload flags (`TUN_F_*`).
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// TCP segmentation offload over IPv4.
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// TCP segmentation offload over IPv6.
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;

/// Errors taking over a tap descriptor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptor is not open in hull-vmm.
    #[error(
        "net tap_fd {0} is not an open descriptor; the shim must pass the tap without O_CLOEXEC"
    )]
    NotOpen(RawFd, #[source] io::Error),
    /// The descriptor is not a tap (TUNGETIFF failed).
    #[error("net tap_fd {0} is not a tun/tap descriptor")]
    NotTun(RawFd, #[source] io::Error),
    /// The tap lacks IFF_TAP, IFF_NO_PI or IFF_VNET_HDR.
    #[error("net tap_fd {fd} ({name}) has flags {flags:#x}; open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    Flags {
        /// The descriptor.
        fd: RawFd,
        /// The interface name.
        name: String,
        /// Its TUNSETIFF flags.
        flags: u32,
    },
    /// An ioctl or fcntl on the tap failed.
    #[error("{what} on tap {name} failed")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A tap (or, in tests, a datagram socket): one frame per read or write, each led by a
/// [`VNET_HDR_LEN`]-byte virtio-net header.
pub struct Tap {
    fd: OwnedFd,
    name: String,
    is_tap: bool,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we checked is open; results are checked.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        let fdf = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, fdf | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

impl Tap {
    /// Takes over inherited descriptor `fd`: it must be a tap opened with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR. Checked before hull-vmm owns it, so a wrong number closes nothing.
    pub fn from_inherited(fd: RawFd) -> Result<Tap, Error> {
        // SAFETY: F_GETFD only asks whether the number is an open descriptor.
        cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map_err(|e| Error::NotOpen(fd, e))?;
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF fills the ifreq we pass and nothing else.
        cvt(unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr) })
            .map_err(|e| Error::NotTun(fd, e))?;
        let name: String = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        // SAFETY: TUNGETIFF sets the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags } as u16 as u32;
        let want = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u32;
        if flags & want != want || flags & libc::IFF_TUN as u32 != 0 {
            return Err(Error::Flags { fd, name, flags });
        }
        let ioctl_err = |what, source| Error::Ioctl {
            what,
            name: name.clone(),
            source,
        };
        set_nonblocking_cloexec(fd).map_err(|e| ioctl_err("fcntl O_NONBLOCK", e))?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        cvt(unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) })
            .map_err(|e| ioctl_err("TUNSETVNETHDRSZ", e))?;
        // SAFETY: `fd` is open (checked above), is a tap, and nothing else in hull-vmm owns
        // it: the configuration hands each tap to exactly one device (the builder refuses
        // duplicates), so this is its only owner.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Tap {
            fd,
            name,
            is_tap: true,
        })
    }

    /// A datagram socket standing in for a tap (unit tests, fuzzing): no ioctls, no offloads.
    pub fn from_socket(fd: OwnedFd, name: &str) -> io::Result<Tap> {
        set_nonblocking_cloexec(fd.as_raw_fd())?;
        Ok(Tap {
            fd,
            name: name.to_string(),
            is_tap: false,
        })
    }

    /// The interface name (for logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor to poll for received frames.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Sets the offloads (`TUN_F_*`): what the tap may hand the guest (partial checksums, TSO
    /// frames). A socket stand-in accepts only 0.
    pub fn set_offloads(&self, flags: u32) -> io::Result<()> {
        if !self.is_tap {
            return if flags == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            };
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        })
        .map(|_| ())
    }

    /// The offloads this tap accepts among checksum and TSO4/6 (the kernel may refuse TSO),
    /// left switched off afterwards.
    pub fn probe_offloads(&self) -> u32 {
        let full = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let found = [full, TUN_F_CSUM]
            .into_iter()
            .find(|&f| self.set_offloads(f).is_ok())
            .unwrap_or(0);
        if let Err(e) = self.set_offloads(0) {
            tracing::warn!(tap = %self.name, error = %e, "cannot clear the tap's offloads");
        }
        found
    }

    /// Reads one frame (virtio-net header included); WouldBlock when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one frame (virtio-net header included).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_that_are_not_taps_are_refused_and_left_open() {
        let err = Tap::from_inherited(999_999).err().unwrap();
        assert!(matches!(err, Error::NotOpen(999_999, _)), "{err}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let err = Tap::from_inherited(f.as_raw_fd()).err().unwrap();
        assert!(matches!(err, Error::NotTun(..)), "{err}");
        assert!(err.to_string().contains("not a tun/tap"));
        // Still open: the failed take-over did not close it.
        // SAFETY: F_GETFD on a descriptor `f` owns.
        assert!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) } >= 0);
    }

    #[test]
    fn a_socket_stand_in_moves_frames_and_refuses_offloads() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let tap = Tap::from_socket(OwnedFd::from(a), "test0").unwrap();
        assert_eq!(tap.probe_offloads(), 0);
        assert!(tap.set_offloads(TUN_F_CSUM).is_err());
        let mut buf = [0u8; 16];
        assert_eq!(
            tap.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.send(b"frame").unwrap();
        assert_eq!(tap.read(&mut buf).unwrap(), 5);
        tap.write(b"back").unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), 4);
        assert_eq!(tap.name(), "test0");
    }
}
