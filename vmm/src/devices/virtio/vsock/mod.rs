//! virtio-vsock with a hybrid Unix-socket backend: packet format, the connection muxer, and the
//! device's queue handling.

mod conn;
pub mod device;
pub mod muxer;
pub mod packet;
