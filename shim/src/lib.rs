//! The part of the shim that Hull's other tools share (`hull-check`, `hull-monitor`
//! in `tools/`): the configuration type, so they read `/etc/hull/config.toml` the
//! way the shim does; and the shim's parsing of what the guest sends (`guest`),
//! which the fuzz targets in `shim/fuzz/` reach here. The shim binary itself
//! lives in `main.rs`.

pub mod config;
pub mod dial;
pub mod guest;
