//! Hull's operator tools share these modules: their command-line loop, the node check and the diagnostics
//! bundle (`hull-check`), per-pod figures from /proc and hull-vmm's control socket
//! (through `hull_protocol::control::vm_stats`), the guest's own figures from its
//! agent (`guest`), and their Prometheus rendering (`hull-monitor`).

pub mod args;
pub mod bundle;
pub mod check;
pub mod guest;
pub mod metrics;
pub mod pods;

/// `NAME VERSION (commit HASH)`, the `--version` line of Hull's binaries.
pub fn version_line(name: &str) -> String {
    format!(
        "{name} {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("HULL_COMMIT")
    )
}
