//! The vhost-user side of virtio-fs: which feature bits pass between the guest and virtiofsd,
//! the memory table and vring addresses virtiofsd needs (frontend userspace addresses into the
//! shared guest-RAM memfd), and the message sequences that connect and start the backend.
//! No event handling here: `device.rs` drives these steps.

use std::path::Path;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::memory::GuestMem;

/// Queues: one high-priority queue, then one request queue (virtio 1.2, 5.11.2).
pub const NUM_QUEUES: usize = 2;
/// Size of each queue (virtiofsd accepts up to 32768).
pub const QUEUE_SIZE: u16 = 1024;
/// Length of the tag field of the configuration space.
pub const TAG_LEN: usize = 36;
/// Length of the configuration space: tag, then `num_request_queues` (le32).
pub const CONFIG_LEN: usize = TAG_LEN + 4;
/// Ring feature: indirect descriptors.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Ring feature: used/avail event indexes.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
/// The virtio feature bits the guest may negotiate with the backend. The rings are the
/// backend's business, so ring features pass through; anything touching the transport or the
/// memory model (packed rings, IOMMU, ...) and vhost-user's own bits (protocol features, dirty
/// logging) do not.
pub const PASSTHROUGH_FEATURES: u64 = VIRTIO_F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX;
/// vhost-user protocol features Hull uses when the backend offers them: REPLY_ACK (every
/// request is acknowledged, so a refusal surfaces as an error at once), MQ (to check the
/// backend's queue count) and RESET_DEVICE (so a driver reset can restart the device). CONFIG
/// stays off: the VMM serves the tag itself.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// What the setup learnt about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The backend's virtio features.
    pub features: u64,
    /// The protocol features in use.
    pub protocol: VhostUserProtocolFeatures,
}

/// Errors of the vhost-user exchange with virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("cannot connect to virtiofsd at {0}; start virtiofsd --socket-path={0} --shared-dir=DIR first")]
    Connect(String, #[source] vhost::Error),
    /// A vhost-user request failed or the backend refused it.
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    /// The backend is not a virtio 1.x device.
    #[error("the vhost-user backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    /// The backend serves fewer queues than virtio-fs needs.
    #[error("the vhost-user backend serves {0} queue(s); virtio-fs needs {NUM_QUEUES}")]
    TooFewQueues(u64),
    /// A RAM region has no file behind it, so the backend cannot map it.
    #[error("guest memory at {0:#x} is not backed by a shareable file")]
    NotShared(u64),
    /// A ring the driver programmed is not inside one RAM region.
    #[error("queue {queue}: {ring} at guest address {addr:#x} ({len} bytes) is not in guest RAM")]
    BadRing {
        /// Queue index.
        queue: usize,
        /// Which part of the ring.
        ring: &'static str,
        /// Guest physical address the driver wrote.
        addr: u64,
        /// Bytes the ring needs.
        len: u64,
    },
}

/// The configuration space: the tag, NUL padded to 36 bytes, then one request queue (le32).
/// Tags longer than 36 bytes are cut (the config parser refuses them earlier).
pub fn config_space(tag: &str) -> [u8; CONFIG_LEN] {
    let mut cfg = [0u8; CONFIG_LEN];
    let n = tag.len().min(TAG_LEN);
    cfg[..n].copy_from_slice(&tag.as_bytes()[..n]);
    cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    cfg
}

/// Features offered to the guest for a backend offering `backend`: VERSION_1 (which the
/// handshake requires of the backend) plus the passthrough bits the backend has.
pub fn guest_features(backend: u64) -> u64 {
    VIRTIO_F_VERSION_1 | (backend & PASSTHROUGH_FEATURES)
}

/// Features to set on the backend once the guest acked `acked`: what both sides support,
/// plus VHOST_USER_F_PROTOCOL_FEATURES when the backend offers it (it stays set once the
/// protocol features were negotiated, and it enables SET_VRING_ENABLE).
pub fn backend_features(backend: u64, acked: u64) -> u64 {
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    (acked & backend & PASSTHROUGH_FEATURES) | (backend & protocol)
}

/// The memory table for `mem`: every RAM region as guest address, size, the VMM's own
/// userspace address of the mapping, and the memfd plus offset the backend maps.
pub fn memory_table(mem: &GuestMem) -> Result<Vec<VhostUserMemoryRegionInfo>, Error> {
    mem.iter()
        .map(|region| {
            let gpa = region.start_addr().raw_value();
            let file = region.file_offset().ok_or(Error::NotShared(gpa))?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: gpa,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: file.start(),
                mmap_handle: std::os::fd::AsRawFd::as_raw_fd(file.file()),
            })
        })
        .collect()
}

/// The VMM userspace address of `len` bytes at guest address `addr`, if they lie in one region.
pub fn host_address(mem: &GuestMem, addr: u64, len: u64) -> Option<u64> {
    let region = mem.find_region(GuestAddress(addr))?;
    let offset = addr.checked_sub(region.start_addr().raw_value())?;
    if offset.checked_add(len)? > region.len() {
        return None;
    }
    (region.as_ptr() as u64).checked_add(offset)
}

/// The vring addresses of queue `index` as the backend wants them: VMM userspace addresses
/// (vhost-user translates them back through the memory table). Each ring must fit one region.
pub fn vring_config(mem: &GuestMem, index: usize, queue: &Queue) -> Result<VringConfigData, Error> {
    let size = u64::from(queue.size());
    let rings = [
        ("descriptor table", queue.desc_table(), 16 * size),
        ("available ring", queue.avail_ring(), 6 + 2 * size),
        ("used ring", queue.used_ring(), 6 + 8 * size),
    ];
    let mut host = [0u64; 3];
    for (slot, (ring, addr, len)) in host.iter_mut().zip(rings) {
        *slot = host_address(mem, addr, len).ok_or(Error::BadRing {
            queue: index,
            ring,
            addr,
            len,
        })?;
    }
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host[0],
        avail_ring_addr: host[1],
        used_ring_addr: host[2],
        log_addr: None,
    })
}

/// Connects to the backend at `socket` and runs the setup that needs no guest: owner, virtio
/// features, protocol features.
pub fn connect(socket: &Path) -> Result<(Frontend, Negotiated), Error> {
    let frontend = Frontend::connect(socket, NUM_QUEUES as u64)
        .map_err(|e| Error::Connect(socket.display().to_string(), e))?;
    let negotiated = init(frontend.clone())?;
    Ok((frontend, negotiated))
}

/// The setup of a connected backend (see [`connect`]).
pub fn init(mut frontend: Frontend) -> Result<Negotiated, Error> {
    frontend
        .set_owner()
        .map_err(|e| Error::Request("SET_OWNER", e))?;
    let features = frontend
        .get_features()
        .map_err(|e| Error::Request("GET_FEATURES", e))?;
    if features & VIRTIO_F_VERSION_1 == 0 {
        return Err(Error::NoVersion1(features));
    }
    let mut used = VhostUserProtocolFeatures::empty();
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(|e| Error::Request("GET_PROTOCOL_FEATURES", e))?;
        used = offered & wanted_protocol_features();
        frontend
            .set_protocol_features(used)
            .map_err(|e| Error::Request("SET_PROTOCOL_FEATURES", e))?;
        if used.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if used.contains(VhostUserProtocolFeatures::MQ) {
            let queues = frontend
                .get_queue_num()
                .map_err(|e| Error::Request("GET_QUEUE_NUM", e))?;
            if queues < NUM_QUEUES as u64 {
                return Err(Error::TooFewQueues(queues));
            }
        }
    }
    Ok(Negotiated {
        features,
        protocol: used,
    })
}

/// What [`start`] hands the backend.
pub struct StartParams<'a> {
    /// Guest memory.
    pub mem: &'a GuestMem,
    /// The driver's queues, configured and ready.
    pub queues: &'a [Queue],
    /// The backend's virtio features, from [`connect`].
    pub backend_features: u64,
    /// The features the guest acked.
    pub acked: u64,
    /// Signalled by the backend when it used buffers (any queue).
    pub call: &'a EventFd,
    /// One per queue: signalled by KVM when the guest notifies that queue.
    pub kicks: &'a [EventFd],
}

/// Starts the backend on the driver's queues: features, memory table, then for each queue its
/// size, ring addresses, base 0, call and kick eventfds, and enable.
pub fn start(mut frontend: Frontend, p: &StartParams<'_>) -> Result<(), Error> {
    let features = backend_features(p.backend_features, p.acked);
    let table = memory_table(p.mem)?;
    let configs = p
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| vring_config(p.mem, i, q))
        .collect::<Result<Vec<_>, _>>()?;
    frontend
        .set_features(features)
        .map_err(|e| Error::Request("SET_FEATURES", e))?;
    frontend
        .set_mem_table(&table)
        .map_err(|e| Error::Request("SET_MEM_TABLE", e))?;
    let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    for (i, (config, kick)) in configs.iter().zip(p.kicks).enumerate() {
        frontend
            .set_vring_num(i, config.queue_size)
            .map_err(|e| Error::Request("SET_VRING_NUM", e))?;
        frontend
            .set_vring_addr(i, config)
            .map_err(|e| Error::Request("SET_VRING_ADDR", e))?;
        frontend
            .set_vring_base(i, 0)
            .map_err(|e| Error::Request("SET_VRING_BASE", e))?;
        frontend
            .set_vring_call(i, p.call)
            .map_err(|e| Error::Request("SET_VRING_CALL", e))?;
        frontend
            .set_vring_kick(i, kick)
            .map_err(|e| Error::Request("SET_VRING_KICK", e))?;
        // Without protocol features a ring starts enabled with its kick; with them it starts
        // disabled until SET_VRING_ENABLE.
        if protocol {
            frontend
                .set_vring_enable(i, true)
                .map_err(|e| Error::Request("SET_VRING_ENABLE", e))?;
        }
    }
    Ok(())
}

/// Stops every ring (GET_VRING_BASE stops a vring and drops its kick and call), so the backend
/// no longer touches guest memory the driver may reuse; then, with RESET_DEVICE, resets the
/// backend's device state. Returns whether the backend can be started again.
pub fn reset(mut frontend: Frontend, protocol: VhostUserProtocolFeatures) -> Result<bool, Error> {
    for i in 0..NUM_QUEUES {
        frontend
            .get_vring_base(i)
            .map_err(|e| Error::Request("GET_VRING_BASE", e))?;
    }
    if !protocol.contains(VhostUserProtocolFeatures::RESET_DEVICE) {
        return Ok(false);
    }
    frontend
        .reset_device()
        .map_err(|e| Error::Request("RESET_DEVICE", e))?;
    Ok(true)
}

#[cfg(test)]
#[path = "vhost_user_tests.rs"]
mod tests;
