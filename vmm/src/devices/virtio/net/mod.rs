//! virtio-net over a tap the shim opened in the pod's network namespace: the tap backend
//! (`tap.rs`) and the device's queue handling (`device.rs`).

pub mod device;
pub mod tap;
