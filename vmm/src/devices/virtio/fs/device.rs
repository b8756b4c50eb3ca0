//! The virtio-fs device (type 26) as the transport and the event loop see it. The file system
//! itself runs in virtiofsd, over vhost-user: the guest's queue notifications (KVM ioeventfds)
//! go straight to virtiofsd as its kick eventfds, so the event loop does not poll them.
//!
//! Interrupts: virtiofsd raises the device's interrupt line itself: its "call" eventfd for both
//! queues is the device's KVM irqfd, so a completed request reaches the guest without a trip
//! through the event loop. The virtio-mmio driver handles an interrupt only when InterruptStatus
//! shows the used-ring bit, which virtiofsd cannot set: while the queues run, the bit reads as
//! always pending (the driver then checks both rings, finding nothing new at worst).
//!
//! Driver reset: the rings are stopped (GET_VRING_BASE) and, when virtiofsd offers RESET_DEVICE
//! (1.x does), its device state is reset so the driver can start the device again; otherwise
//! the device declines to restart until the VM restarts.
//!
//! Backend death: the event loop also polls the vhost-user socket, which virtiofsd never writes
//! on its own. When it hangs up, the device logs it, marks itself broken and stops listing the
//! socket (the loop drops it); the VM keeps running without the share.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vhost::vhost_user::Frontend;

use super::vhost_user::{self, Negotiated, StartParams, CONFIG_LEN, NUM_QUEUES, QUEUE_SIZE};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceType, VirtioCommon, VirtioDevice, INT_VRING,
};

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// virtiofsd is not listening on the socket.
    #[error(transparent)]
    Connect(vhost_user::Error),
    /// virtiofsd answered the setup wrongly.
    #[error("virtio-fs share '{0}': virtiofsd setup failed")]
    Setup(String, #[source] vhost_user::Error),
    /// An eventfd could not be created.
    #[error("cannot create the virtio-fs event file descriptors")]
    EventFd(#[source] std::io::Error),
}

impl Error {
    /// Whether the error is a configuration problem (nothing listens on the socket).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// What virtiofsd can still do (whether it serves the queues now is the shared state's
/// activation).
enum Backend {
    /// Connected: serves the queues while the device is activated, can start them when not.
    Usable,
    /// The driver reset the device and the backend cannot reset its state (no RESET_DEVICE):
    /// the rings are stopped until the VM restarts.
    Stopped,
    /// virtiofsd went away or failed during start.
    Broken,
}

/// A virtio-fs share served by virtiofsd. Its queue events are the kick eventfds virtiofsd
/// reads.
pub struct Fs {
    common: VirtioCommon,
    tag: String,
    socket: PathBuf,
    frontend: Frontend,
    negotiated: Negotiated,
    config: [u8; CONFIG_LEN],
    backend: Backend,
}

/// Whether the peer of the stream socket `fd` is gone (EOF or a socket error). Data waiting
/// (which virtiofsd never sends unasked) is a protocol error and counts as gone too.
fn peer_gone(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is a socket owned by the caller; the buffer is one valid writable byte and
    // MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        );
    }
    true
}

impl Fs {
    /// Connects to virtiofsd at `socket` for the share the guest mounts as `tag`.
    pub fn new(tag: &str, socket: &Path) -> Result<Self, Error> {
        let (frontend, backend) = vhost_user::connect(socket).map_err(|e| match e {
            vhost_user::Error::Connect(..) => Error::Connect(e),
            e => Error::Setup(tag.to_string(), e),
        })?;
        Self::with_frontend(tag, socket, frontend, backend)
    }

    /// The device on an already set-up `frontend` (see [`vhost_user::connect`]).
    pub fn with_frontend(
        tag: &str,
        socket: &Path,
        frontend: Frontend,
        negotiated: Negotiated,
    ) -> Result<Self, Error> {
        let features = vhost_user::guest_features(negotiated.features);
        Ok(Fs {
            common: VirtioCommon::new(DeviceType::Fs, features, &[QUEUE_SIZE; NUM_QUEUES])
                .map_err(Error::EventFd)?
                .served_externally(),
            tag: tag.to_string(),
            socket: socket.to_path_buf(),
            frontend,
            negotiated,
            config: vhost_user::config_space(tag),
            backend: Backend::Usable,
        })
    }

    /// Whether virtiofsd went away (or failed to start the queues).
    pub fn is_broken(&self) -> bool {
        matches!(self.backend, Backend::Broken)
    }

    fn broken(&mut self, why: &str) {
        tracing::warn!(tag = %self.tag, socket = %self.socket.display(), why,
            "virtio-fs: virtiofsd is gone; the share stops working until the VM restarts");
        self.backend = Backend::Broken;
    }
}

impl VirtioDevice for Fs {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn on_activate(&mut self) -> Result<(), ActivateError> {
        match self.backend {
            Backend::Usable => {}
            Backend::Stopped => {
                return Err(ActivateError::Backend(
                    "virtio-fs cannot restart after a reset; restart the VM".into(),
                ))
            }
            Backend::Broken => return Err(ActivateError::Backend("virtiofsd is gone".into())),
        }
        let Some(active) = self.common.active() else {
            return Err(ActivateError::BadQueues);
        };
        let params = StartParams {
            mem: &active.mem,
            queues: &active.queues,
            backend_features: self.negotiated.features,
            acked: self.common.acked(),
            call: active.interrupt.irqfd(),
            kicks: self.common.queue_events(),
        };
        match vhost_user::start(self.frontend.clone(), &params) {
            Ok(()) => {
                active.interrupt.set_always(INT_VRING);
                tracing::info!(tag = %self.tag, "virtio-fs: virtiofsd serves the queues");
                Ok(())
            }
            Err(e @ vhost_user::Error::BadRing { .. }) => {
                Err(ActivateError::Backend(e.to_string()))
            }
            Err(e) => {
                let text = hull_protocol::error::chain(&e);
                self.broken(&text);
                Err(ActivateError::Backend(text))
            }
        }
    }
    fn on_reset(&mut self) -> bool {
        if let Some(active) = self.common.active() {
            active.interrupt.set_always(0);
        }
        if !matches!(self.backend, Backend::Usable) {
            return false;
        }
        match vhost_user::reset(self.frontend.clone(), self.negotiated.protocol) {
            Ok(true) => true,
            Ok(false) => {
                self.backend = Backend::Stopped;
                false
            }
            Err(e) => {
                self.broken(&hull_protocol::error::chain(&e));
                false
            }
        }
    }
    fn polls_queue_events(&self) -> bool {
        false
    }
    fn backend_fds(&self) -> Vec<RawFd> {
        if self.is_broken() {
            return Vec::new();
        }
        vec![self.frontend.as_raw_fd()]
    }
    fn process_queue(&mut self, _index: usize) {}
    fn process_backend(&mut self, fd: RawFd) {
        if fd == self.frontend.as_raw_fd()
            && !self.is_broken()
            && peer_gone(self.frontend.as_raw_fd())
        {
            self.broken("the vhost-user socket hung up");
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
