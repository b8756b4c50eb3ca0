//! virtio-fs through an external vhost-user backend (virtiofsd): the vhost-user exchange
//! (`vhost_user.rs`) and the device the transport and event loop drive (`device.rs`).

pub mod device;
#[cfg(test)]
mod test_backend;
pub mod vhost_user;
