//! The virtio-balloon device, offering only free page reporting (virtio 1.2, section 5.5):
//! the guest hands over ranges of pages it freed and the device punches them out of the memfd
//! behind guest RAM, so an idle pod gives its page cache and freed heap back to the host. The
//! device never asks for a balloon size (`num_pages` stays 0), so buffers on the inflate and
//! deflate queues are returned as they came.
//!
//! Everything in the queues is hostile: each reported range must be whole pages inside one RAM
//! region (see [`crate::memory::discard`]), anything else is skipped, counted and logged at
//! most once per [`WARN_INTERVAL`]; a chain yields at most [`QUEUE_SIZE`] ranges, and each
//! event serves at most [`EVENT_BUDGET`] chains per queue.

use std::time::{Duration, Instant};

use virtio_queue::QueueT;

use crate::devices::virtio::{read_config_bytes, DeviceType, VirtioCommon, VirtioDevice};
use crate::memory;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Chains served per event and queue.
pub const EVENT_BUDGET: usize = 64;
/// Shortest time between two warnings about hostile reports.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Feature bit: the device takes free page reports (VIRTIO_BALLOON_F_REPORTING).
pub const F_REPORTING: u64 = 1 << 5;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// Config space: `num_pages` (le32) then `actual` (le32).
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: u64 = 4;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An eventfd could not be created.
    #[error("cannot create the balloon's queue events")]
    EventFd(#[source] std::io::Error),
}

/// What the device did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reported ranges whose host memory was freed.
    pub ranges_freed: u64,
    /// Bytes of host memory freed.
    pub bytes_freed: u64,
    /// Reported ranges refused: not device-writable, or not whole pages of one RAM region.
    pub ranges_refused: u64,
    /// Valid ranges fallocate failed to free.
    pub discard_errors: u64,
    /// Chains cut short after [`QUEUE_SIZE`] ranges (a descriptor loop in an indirect table).
    pub chains_truncated: u64,
    /// Buffers returned without being read: inflate and deflate buffers, and reports when the
    /// driver did not negotiate free page reporting.
    pub returned_unread: u64,
}

/// Logs at most one warning per [`WARN_INTERVAL`], with how many were held back since.
#[derive(Debug, Default)]
struct WarnLimit {
    last: Option<Instant>,
    held: u64,
}

impl WarnLimit {
    fn warn(&mut self, what: &str, addr: u64, len: u64, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            self.held += 1;
            return;
        }
        tracing::warn!(addr = format_args!("{addr:#x}"), len, error = %error,
            held_back = self.held, "virtio-balloon: {what}");
        self.last = Some(now);
        self.held = 0;
    }
}

/// A virtio-balloon that only takes free page reports.
pub struct Balloon {
    common: VirtioCommon,
    /// The driver's `actual` field, kept only so it reads back as written.
    actual: u32,
    stats: Stats,
    warn: WarnLimit,
}

impl Balloon {
    /// An inactive balloon offering free page reporting.
    pub fn new() -> Result<Self, Error> {
        Ok(Balloon {
            common: VirtioCommon::new(DeviceType::Balloon, F_REPORTING, &[QUEUE_SIZE; 3])
                .map_err(Error::EventFd)?,
            actual: 0,
            stats: Stats::default(),
            warn: WarnLimit::default(),
        })
    }

    /// What the device did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        // num_pages (bytes 0..4) stays 0: the device never asks for memory.
        c[4..].copy_from_slice(&self.actual.to_le_bytes());
        c
    }

    /// Frees the ranges of up to [`EVENT_BUDGET`] reporting chains and returns each chain used
    /// (length 0) only once its ranges are freed, as the driver reuses the pages after that.
    /// Re-arms the queue when the budget runs out. Returns how many chains were served.
    pub fn process_reporting(&mut self) -> usize {
        if !self.common.has_acked(F_REPORTING) {
            return self.return_unused(REPORTING);
        }
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let mut served = 0;
        while served < EVENT_BUDGET {
            let Some(chain) = a.queues[REPORTING].pop_descriptor_chain(&a.mem) else {
                break;
            };
            served += 1;
            let head = chain.head_index();
            for (seen, desc) in chain.enumerate() {
                if seen == usize::from(QUEUE_SIZE) {
                    self.stats.chains_truncated += 1;
                    break;
                }
                let (addr, len) = (desc.addr().0, u64::from(desc.len()));
                if !desc.is_write_only() {
                    self.stats.ranges_refused += 1;
                    self.warn.warn(
                        "refused a read-only report",
                        addr,
                        len,
                        &"not device-writable",
                    );
                    continue;
                }
                match memory::discard(&a.mem, addr, len) {
                    Ok(()) => {
                        self.stats.ranges_freed += 1;
                        self.stats.bytes_freed += len;
                        counters.add_tx_bytes(len);
                    }
                    Err(e @ memory::Error::BadRange { .. }) => {
                        self.stats.ranges_refused += 1;
                        self.warn.warn("refused a reported range", addr, len, &e);
                    }
                    Err(e) => {
                        self.stats.discard_errors += 1;
                        self.warn
                            .warn("cannot free a reported range", addr, len, &e);
                    }
                }
            }
            if a.queues[REPORTING].add_used(&a.mem, head, 0).is_err() {
                tracing::warn!("virtio-balloon: cannot return a report");
            }
        }
        self.finish(REPORTING, served)
    }

    /// Returns up to [`EVENT_BUDGET`] chains of queue `index` used without reading them (the
    /// inflate and deflate queues: the device never asks the guest to inflate). Re-arms the
    /// queue when the budget runs out. Returns how many chains were returned.
    pub fn return_unused(&mut self, index: usize) -> usize {
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let Some(queue) = a.queues.get_mut(index) else {
            return 0;
        };
        let mut served = 0;
        while served < EVENT_BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(&a.mem) else {
                break;
            };
            served += 1;
            if queue.add_used(&a.mem, chain.head_index(), 0).is_err() {
                tracing::warn!("virtio-balloon: cannot return a buffer");
            }
        }
        self.stats.returned_unread += served as u64;
        self.finish(index, served)
    }

    fn finish(&mut self, index: usize, served: usize) -> usize {
        if served == EVENT_BUDGET {
            self.common.rearm(index);
        }
        if served > 0 {
            self.common.signal_used();
        }
        served
    }
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data)
    }
    /// Only a whole write of `actual` is kept; `num_pages` belongs to the device.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (ACTUAL_OFFSET, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.actual = u32::from_le_bytes(bytes);
        }
    }
    fn on_reset(&mut self) -> bool {
        self.actual = 0;
        true
    }
    fn process_queue(&mut self, index: usize) {
        match index {
            INFLATE | DEFLATE => {
                self.return_unused(index);
            }
            REPORTING => {
                self.process_reporting();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
