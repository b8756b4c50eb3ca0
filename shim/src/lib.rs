//! The part of the shim that Hull's other tools share (`hull-check`, `hull-monitor`
//! in `tools/`): the configuration type, so they read `/etc/hull/config.toml` the
//! way the shim does. The shim binary itself lives in `main.rs`.

pub mod config;
