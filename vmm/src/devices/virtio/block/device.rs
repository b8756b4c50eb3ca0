//! The virtio-blk device: a file-backed disk, read-only or read-write, with flush. Requests are
//! bounds-checked against the disk and guest memory; a malformed one fails with an error status
//! (or is returned unused when there is nowhere to put a status), never panics.
//!
//! A disk may also start as an empty read-only slot ([`Block::empty`]: capacity 0, every read
//! fails) that takes its one image while the VM runs ([`Block::attach`], from the control
//! socket's `attach-disk`): virtio-mmio has no hotplug, so the shim boots the VM with slots and
//! fills them as containers start. The new capacity reaches the guest through a
//! configuration-change interrupt, which its driver answers by reading the capacity again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use virtio_queue::{QueueT, Reader, Writer};

use crate::devices::virtio::counters::DeviceCounters;
use crate::devices::virtio::{read_config_bytes, DeviceType, VirtioCommon, VirtioDevice};
use crate::memory::GuestMem;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const REQ_HDR_LEN: usize = 16;
const ID_LEN: usize = 20;
const CHUNK: usize = 64 * 1024;
/// Requests served per event.
pub const EVENT_BUDGET: usize = 32;

/// Errors opening the disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file cannot be opened.
    #[error("cannot open disk image {0}")]
    Open(String, #[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create the disk's queue event")]
    EventFd(#[source] std::io::Error),
}

/// Why an image cannot fill a disk slot.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The disk already has its backing file (from the configuration or an earlier attach).
    #[error("the disk is not an empty slot: it already holds an image, and a guest may cache what it read")]
    Occupied,
    /// The descriptor's file cannot be examined.
    #[error("cannot examine the image descriptor")]
    Stat(#[source] std::io::Error),
    /// The descriptor is not a regular file.
    #[error("the image descriptor is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// The file holds no whole sector.
    #[error("the image is {0} bytes: it needs at least one {SECTOR_SIZE}-byte sector")]
    TooSmall(u64),
}

/// The backing file and what the guest may do with it.
struct Disk {
    /// None for an empty slot.
    file: Option<File>,
    read_only: bool,
    capacity_sectors: u64,
    /// The driver acked VIRTIO_BLK_F_FLUSH.
    flush: bool,
    /// The VIRTIO_BLK_T_GET_ID answer, NUL-padded.
    id: [u8; ID_LEN],
}

/// A virtio-blk disk: file-backed, or an empty slot until [`Block::attach`].
pub struct Block {
    common: VirtioCommon,
    disk: Disk,
    /// The capacity changed while no driver ran: raise the configuration interrupt once one
    /// starts (it may have read the old capacity while probing).
    config_pending: bool,
}

/// `serial` as the GET_ID answer: its first [`ID_LEN`] bytes, NUL-padded (the configuration
/// validates the length; longer text is cut, never an overflow).
fn id_bytes(serial: &str) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let n = serial.len().min(ID_LEN);
    id[..n].copy_from_slice(&serial.as_bytes()[..n]);
    id
}

/// A name for a file type that is not a regular file.
fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "pipe"
    } else if t.is_socket() {
        "socket"
    } else {
        "symbolic link"
    }
}

impl Block {
    /// Opens `path` as a disk; its size is rounded down to whole sectors. The guest reads
    /// `serial` as the disk's id.
    pub fn new(path: &Path, read_only: bool, serial: &str) -> Result<Self, Error> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::Open(name.clone(), e))?;
        let len = file.metadata().map_err(|e| Error::Open(name, e))?.len();
        Self::with(Some(file), read_only, len / SECTOR_SIZE, serial)
    }

    /// An empty read-only slot: capacity 0 (every read fails) until [`Block::attach`].
    pub fn empty(serial: &str) -> Result<Self, Error> {
        Self::with(None, true, 0, serial)
    }

    fn with(
        file: Option<File>,
        read_only: bool,
        capacity_sectors: u64,
        serial: &str,
    ) -> Result<Self, Error> {
        let features = F_FLUSH | if read_only { F_RO } else { 0 };
        Ok(Block {
            common: VirtioCommon::new(DeviceType::Block, features, &[QUEUE_SIZE])
                .map_err(Error::EventFd)?,
            disk: Disk {
                file,
                read_only,
                capacity_sectors,
                flush: false,
                id: id_bytes(serial),
            },
            config_pending: false,
        })
    }

    /// Disk size in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// Whether this is an empty slot that still waits for its image.
    pub fn is_empty_slot(&self) -> bool {
        self.disk.file.is_none()
    }

    /// Fills an empty slot with `file`, read-only, once: the capacity becomes the file's size
    /// in whole sectors and the driver, if running, gets a configuration-change interrupt (one
    /// that has not started yet reads the capacity when it probes, and gets the interrupt
    /// when it starts). Refused on a disk that has a file: an image never changes under a
    /// guest that may cache it. On refusal `file` is dropped (closed).
    pub fn attach(&mut self, file: File) -> Result<(), AttachError> {
        if self.disk.file.is_some() {
            return Err(AttachError::Occupied);
        }
        let meta = file.metadata().map_err(AttachError::Stat)?;
        if !meta.file_type().is_file() {
            return Err(AttachError::NotRegular(file_kind(meta.file_type())));
        }
        if meta.len() < SECTOR_SIZE {
            return Err(AttachError::TooSmall(meta.len()));
        }
        self.disk.file = Some(file);
        self.disk.capacity_sectors = meta.len() / SECTOR_SIZE;
        self.config_pending = !self.common.signal_config();
        Ok(())
    }

    /// Serves at most [`EVENT_BUDGET`] available requests. When the budget runs out, the device
    /// kicks its own queue event so the event loop comes back after serving everything else
    /// that is ready. Returns how many requests were completed.
    pub fn process_requests(&mut self) -> usize {
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let queue = &mut a.queues[0];
        let mut used = 0;
        while used < EVENT_BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.disk.serve(&a.mem, chain, &counters).unwrap_or(0);
            if queue.add_used(&a.mem, head, len).is_err() {
                tracing::warn!("virtio-blk: cannot return a request");
            }
            used += 1;
        }
        if used == EVENT_BUDGET {
            self.common.rearm(0);
        }
        if used > 0 {
            self.common.signal_used();
        }
        used
    }
}

impl Disk {
    /// Byte offset of `sector` if `len` bytes from there fit the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len as u64)?;
        (end <= self.capacity_sectors * SECTOR_SIZE).then_some(start)
    }

    fn read_into(&self, offset: u64, len: usize, w: &mut Writer<'_>) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let mut buf = vec![0u8; CHUNK.min(len)];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            if file
                .read_exact_at(&mut buf[..n], offset + done as u64)
                .is_err()
                || w.write_all(&buf[..n]).is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }

    fn write_from(&self, offset: u64, len: usize, r: &mut Reader<'_>) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let mut buf = vec![0u8; CHUNK.min(len)];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            if r.read_exact(&mut buf[..n]).is_err()
                || file.write_all_at(&buf[..n], offset + done as u64).is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }

    /// Serves one request; returns the bytes written to guest memory, or None when the chain
    /// has no room for a status byte.
    fn serve<M>(
        &self,
        mem: &GuestMem,
        chain: virtio_queue::DescriptorChain<M>,
        counters: &DeviceCounters,
    ) -> Option<u32>
    where
        M: std::ops::Deref + Clone,
        M::Target: vm_memory::GuestMemory + Sized,
    {
        let mut reader = Reader::new(mem, chain.clone()).ok()?;
        let writer = Writer::new(mem, chain).ok()?;
        let room = writer.available_bytes();
        if room == 0 {
            return None;
        }
        let mut status_writer = writer;
        let mut data = status_writer.split_at(room - 1).ok()?;
        // `data` is now everything but the last byte; `status_writer` holds the status byte.
        std::mem::swap(&mut data, &mut status_writer);
        let data_len = room - 1;

        let mut hdr = [0u8; REQ_HDR_LEN];
        let status = if reader.read_exact(&mut hdr).is_err() {
            S_IOERR
        } else {
            let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&hdr[8..16]);
            let sector = u64::from_le_bytes(s);
            let out_len = reader.available_bytes();
            let status = self.execute(kind, sector, &mut reader, &mut data, data_len);
            if status == S_OK {
                match kind {
                    T_IN => counters.add_rx_bytes(data_len as u64),
                    T_OUT => counters.add_tx_bytes(out_len as u64),
                    _ => {}
                }
            }
            status
        };
        let written = if status == S_OK {
            data.bytes_written()
        } else {
            0
        };
        status_writer.write_all(&[status]).ok()?;
        Some(written as u32 + 1)
    }

    fn execute(
        &self,
        kind: u32,
        sector: u64,
        reader: &mut Reader<'_>,
        data: &mut Writer<'_>,
        data_len: usize,
    ) -> u8 {
        let ok = |b: bool| if b { S_OK } else { S_IOERR };
        match kind {
            T_IN => match self.range(sector, data_len) {
                Some(off) if (data_len as u64).is_multiple_of(SECTOR_SIZE) => {
                    ok(self.read_into(off, data_len, data))
                }
                _ => S_IOERR,
            },
            T_OUT => {
                let len = reader.available_bytes();
                match self.range(sector, len) {
                    Some(off) if !self.read_only && (len as u64).is_multiple_of(SECTOR_SIZE) => {
                        ok(self.write_from(off, len, reader))
                    }
                    _ => S_IOERR,
                }
            }
            T_FLUSH if self.flush => {
                ok(self.read_only || self.file.as_ref().is_some_and(|f| f.sync_data().is_ok()))
            }
            T_GET_ID => {
                let n = ID_LEN.min(data_len);
                ok(data.write_all(&self.id[..n]).is_ok())
            }
            _ => S_UNSUPP,
        }
    }
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.disk.capacity_sectors.to_le_bytes(), offset, data)
    }
    fn on_activate(&mut self) -> Result<(), crate::devices::virtio::ActivateError> {
        self.disk.flush = self.common.has_acked(F_FLUSH);
        if std::mem::take(&mut self.config_pending) {
            self.common.signal_config();
        }
        Ok(())
    }
    fn process_queue(&mut self, _index: usize) {
        self.process_requests();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
