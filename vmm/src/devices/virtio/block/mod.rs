//! virtio-blk backed by a host file: request parsing and I/O (`device.rs`).

pub mod device;
