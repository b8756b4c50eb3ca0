//! virtio-balloon with free page reporting only: the guest reports the pages it frees and
//! hull-vmm gives their host memory back (`device.rs`). The balloon itself never inflates.

pub mod device;
