//! The guest's own memory and CPU figures for the metrics, asked of the pod's
//! agent (`GuestStats`) through hull-vmm's hybrid vsock socket (`CONNECT 1024`),
//! as the shim reaches it. The guest is hostile: every step has a deadline, the
//! answer is bounded by ttrpc's frame limit, and figures that cannot be true
//! (more free memory than there is, more CPUs than the VM has) are refused
//! whole rather than exported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_hull_v2::dial::{self, DialError};
use hull_protocol::agent::GuestStatsRequest;
use hull_protocol::agent_ttrpc::AgentClient;

/// Errors of asking the guest for its figures.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot reach the agent through {path} (is the pod's VM running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: DialError,
    },
    #[error("the agent did not answer GuestStats: {0}")]
    Call(String),
    #[error("the agent's figures cannot be true: {0}")]
    Implausible(String),
}

/// CPU modes of the guest's `/proc/stat`, in the order of [`GuestFigures::cpu_seconds`].
pub const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Largest guest memory believed when hull-vmm's own figure is unknown: 1 TiB.
const MAX_GUEST_BYTES: u64 = 1 << 40;
/// Largest CPU count believed when hull-vmm's own figure is unknown.
const MAX_GUEST_CPUS: u32 = 255;

/// The guest's figures, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestFigures {
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_cached_bytes: u64,
    pub cpus: u32,
    /// Seconds per mode of [`CPU_MODES`], all CPUs together.
    pub cpu_seconds: [f64; 8],
}

/// What the host knows of the VM, to check the guest's figures against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    /// Guest RAM as hull-vmm configured it.
    pub guest_bytes: Option<u64>,
    /// vCPUs as hull-vmm configured them.
    pub vcpus: Option<u32>,
}

/// Checks the agent's answer against `bounds`.
pub fn check(
    resp: &hull_protocol::agent::GuestStatsResponse,
    bounds: Bounds,
) -> Result<GuestFigures, GuestError> {
    let bad = |what: String| Err(GuestError::Implausible(what));
    let (Some(m), Some(c)) = (resp.memory.as_ref(), resp.cpu.as_ref()) else {
        return bad("memory or cpu figures missing".into());
    };
    let max_bytes = bounds.guest_bytes.unwrap_or(MAX_GUEST_BYTES);
    if m.total_bytes == 0 || m.total_bytes > max_bytes {
        return bad(format!(
            "MemTotal {} bytes, the VM has at most {max_bytes}",
            m.total_bytes
        ));
    }
    for (name, value) in [
        ("MemFree", m.free_bytes),
        ("MemAvailable", m.available_bytes),
        ("Cached", m.cached_bytes),
    ] {
        if value > m.total_bytes {
            return bad(format!(
                "{name} {value} bytes above MemTotal {}",
                m.total_bytes
            ));
        }
    }
    let max_cpus = bounds.vcpus.unwrap_or(MAX_GUEST_CPUS);
    if c.online == 0 || c.online > max_cpus {
        return bad(format!(
            "{} online CPUs, the VM has at most {max_cpus}",
            c.online
        ));
    }
    let usec = [
        c.user_usec,
        c.nice_usec,
        c.system_usec,
        c.idle_usec,
        c.iowait_usec,
        c.irq_usec,
        c.softirq_usec,
        c.steal_usec,
    ];
    Ok(GuestFigures {
        memory_total_bytes: m.total_bytes,
        memory_free_bytes: m.free_bytes,
        memory_available_bytes: m.available_bytes,
        memory_cached_bytes: m.cached_bytes,
        cpus: c.online,
        cpu_seconds: usec.map(|u| u as f64 / 1e6),
    })
}

/// Asks the agent behind hull-vmm's hybrid vsock socket `uds` for the guest's
/// figures: the CONNECT handshake and the call each within `timeout`.
pub fn guest_stats(
    uds: &Path,
    timeout: Duration,
    bounds: Bounds,
) -> Result<GuestFigures, GuestError> {
    let stream = dial::connect(uds, hull_protocol::AGENT_PORT, timeout).map_err(|source| {
        GuestError::Connect {
            path: uds.to_path_buf(),
            source,
        }
    })?;
    let client = hull_protocol::rpc::Client::new(stream, "agent")
        .map(AgentClient::new)
        .map_err(|e| GuestError::Call(format!("ttrpc client: {e}")))?;
    let nanos = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
    let resp = client
        .guest_stats(
            ttrpc::context::with_timeout(nanos),
            &GuestStatsRequest::new(),
        )
        .map_err(|e| GuestError::Call(e.to_string()))?;
    check(&resp, bounds)
}

#[cfg(test)]
mod tests {
    use hull_protocol::agent::{GuestCpu, GuestMemory, GuestStatsResponse};
    use std::io::Write;

    use super::*;

    fn answer(total: u64, free: u64, online: u32) -> GuestStatsResponse {
        let mut m = GuestMemory::new();
        m.total_bytes = total;
        m.free_bytes = free;
        m.available_bytes = free;
        let mut c = GuestCpu::new();
        c.online = online;
        c.user_usec = 1_500_000;
        c.idle_usec = 20_000_000;
        let mut r = GuestStatsResponse::new();
        r.memory = Some(m).into();
        r.cpu = Some(c).into();
        r
    }

    #[test]
    fn plausible_figures_pass_and_lies_are_refused() {
        let bounds = Bounds {
            guest_bytes: Some(256 << 20),
            vcpus: Some(2),
        };
        let f = check(&answer(200 << 20, 100 << 20, 2), bounds).unwrap();
        assert_eq!(f.memory_total_bytes, 200 << 20);
        assert_eq!(f.cpus, 2);
        assert_eq!(f.cpu_seconds[0], 1.5);
        assert_eq!(f.cpu_seconds[3], 20.0);
        for lie in [
            answer(0, 0, 1),
            answer(512 << 20, 0, 1),
            answer(200 << 20, 300 << 20, 1),
            answer(200 << 20, 0, 0),
            answer(200 << 20, 0, 3),
            GuestStatsResponse::new(),
        ] {
            let err = check(&lie, bounds).unwrap_err();
            assert!(matches!(err, GuestError::Implausible(_)), "{err}");
        }
        // Without hull-vmm's figures only the wide limits apply.
        assert!(check(&answer(512 << 20, 0, 3), Bounds::default()).is_ok());
        assert!(check(&answer(2 << 40, 0, 3), Bounds::default()).is_err());
    }

    #[test]
    fn a_silent_or_refusing_vmm_ends_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let err = guest_stats(&uds, Duration::from_secs(1), Bounds::default()).unwrap_err();
        assert!(matches!(err, GuestError::Connect { .. }), "{err}");
        let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
        let server = std::thread::spawn(move || {
            // A VMM that never answers CONNECT, one that refuses it, and an agent that
            // takes the connection and never answers the call.
            let (silent, _) = listener.accept().unwrap();
            let (mut refusing, _) = listener.accept().unwrap();
            refusing.write_all(b"ERR no listener\n").unwrap();
            let (mut hung, _) = listener.accept().unwrap();
            hung.write_all(b"OK 1024\n").unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop((silent, hung));
        });
        let started = std::time::Instant::now();
        let err = guest_stats(&uds, Duration::from_millis(300), Bounds::default()).unwrap_err();
        assert!(matches!(err, GuestError::Connect { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = guest_stats(&uds, Duration::from_millis(300), Bounds::default()).unwrap_err();
        assert!(
            matches!(
                &err,
                GuestError::Connect { source: DialError::Refused { answer, .. }, .. }
                    if answer == "ERR no listener"
            ),
            "{err}"
        );
        let started = std::time::Instant::now();
        let err = guest_stats(&uds, Duration::from_millis(300), Bounds::default()).unwrap_err();
        assert!(matches!(err, GuestError::Call(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(700));
        server.join().unwrap();
    }
}
