//! Hull's isolation benchmark: Hull vs runc/crun through one containerd.
//!
//! The driver (`hull-bench`) runs containers with `ctr`, the probe
//! (`hull-bench-probe`) measures and looks around inside them; this library
//! holds both sides' logic and the report.

pub mod boot;
pub mod ctr;
pub mod inside;
pub mod isolation;
pub mod model;
pub mod net;
pub mod netreport;
pub mod probe_data;
pub mod procs;
pub mod report;
pub mod stats;
pub mod svg;
