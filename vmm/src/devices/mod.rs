//! Emulated devices and the buses that route vCPU port and MMIO exits to them.

pub mod bus;
pub mod console;
pub mod legacy;
pub mod virtio;
