//! hull-vmm's figures from its control socket (`vmm/src/control.rs`: JSON lines,
//! `{"v":1,"cmd":"stats"}`). This one function is the only place the tools speak
//! that protocol, so it can move to the typed client once hull-vmm's control
//! protocol has one.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The control socket's name in a pod directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// How long a stats request may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Errors asking hull-vmm for its figures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot talk to hull-vmm's control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hull-vmm's answer on {path} is not valid: {reason}")]
    Answer { path: PathBuf, reason: String },
}

/// What hull-vmm reports about its VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmmStats {
    pub vcpus: u64,
    pub paused: bool,
    pub uptime_s: f64,
    pub guest_memory_mib: u64,
    pub rss_kib: u64,
    pub user_cpu_s: f64,
    pub system_cpu_s: f64,
}

/// The control socket of the pod in `pod_dir`.
pub fn socket(pod_dir: &Path) -> PathBuf {
    pod_dir.join(CONTROL_SOCKET)
}

/// Asks the hull-vmm listening on `path` for its stats.
pub fn query(path: &Path) -> Result<VmmStats, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(b"{\"v\":1,\"cmd\":\"stats\"}\n")
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_ANSWER))
        .read_line(&mut line)
        .map_err(io)?;
    parse(&line).map_err(|reason| Error::Answer {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads a stats answer line.
pub fn parse(line: &str) -> Result<VmmStats, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    if v["ok"] != serde_json::Value::Bool(true) {
        return Err(format!("request refused: {}", v["error"]));
    }
    let s = &v["stats"];
    let int = |value: &serde_json::Value, name: &str| {
        value
            .as_u64()
            .ok_or_else(|| format!("{name} is missing or not a number"))
    };
    let float = |value: &serde_json::Value, name: &str| {
        value
            .as_f64()
            .ok_or_else(|| format!("{name} is missing or not a number"))
    };
    Ok(VmmStats {
        vcpus: int(&s["vcpus"], "vcpus")?,
        paused: s["paused"].as_bool().unwrap_or(false),
        uptime_s: float(&s["uptime_s"], "uptime_s")?,
        guest_memory_mib: int(&s["memory"]["guest_mib"], "memory.guest_mib")?,
        rss_kib: int(&s["memory"]["vmm_rss_kib"], "memory.vmm_rss_kib")?,
        user_cpu_s: float(&s["cpu"]["user_s"], "cpu.user_s")?,
        system_cpu_s: float(&s["cpu"]["system_s"], "cpu.system_s")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"v":1,"ok":true,"stats":{"vcpus":2,"paused":false,"uptime_s":1.5,"memory":{"guest_mib":128,"vmm_rss_kib":4096},"cpu":{"user_s":0.25,"system_s":0.5}}}"#;

    #[test]
    fn parses_what_hull_vmm_answers() {
        let s = parse(ANSWER).unwrap();
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.guest_memory_mib, 128);
        assert_eq!(s.rss_kib, 4096);
        assert!((s.system_cpu_s - 0.5).abs() < 1e-9);
    }

    #[test]
    fn refusals_and_junk_are_errors() {
        assert!(parse(r#"{"v":1,"ok":false,"error":"no"}"#)
            .unwrap_err()
            .contains("refused"));
        assert!(parse("not json").unwrap_err().contains("invalid JSON"));
        assert!(parse(r#"{"v":1,"ok":true,"stats":{}}"#)
            .unwrap_err()
            .contains("vcpus"));
    }

    #[test]
    fn a_silent_socket_times_out_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(query(&path), Err(Error::Io { .. })));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
