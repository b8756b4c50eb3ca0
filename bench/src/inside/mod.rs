//! What `hull-bench-probe` does inside a container: cost loops and isolation probes.

pub mod inspect;
pub mod syscalls;
pub mod work;
