//! containerd bookkeeping for one pod: tasks, execs, their state machine,
//! events and exit waiting, independent of what runs the containers.

mod control;
pub mod events;
mod pod;
mod process;
pub mod rootfs;
pub mod service;
pub mod stdio;

pub use pod::{Pod, SANDBOX_ID_ANNOTATION};
pub use process::to_timestamp as timestamp;
