//! GuestStats: the guest kernel's own memory (/proc/meminfo) and CPU time
//! (/proc/stat) for the node's metrics, which see the VM from outside only.

use hull_protocol::agent::{GuestCpu, GuestMemory, GuestStatsResponse};

/// Errors reading the guest's figures.
#[derive(Debug, thiserror::Error)]
pub enum GuestStatsError {
    #[error("cannot read {0}")]
    Read(&'static str, #[source] std::io::Error),
    #[error("{0} has no {1} line")]
    Missing(&'static str, &'static str),
}

/// USER_HZ, the unit of /proc/stat: fixed at 100 on Linux for userspace.
const USER_HZ: u64 = 100;

/// The value in bytes of `key:` in /proc/meminfo text (`MemTotal:  123 kB`).
fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// The memory figures of /proc/meminfo text; MemTotal is required.
pub fn parse_meminfo(text: &str) -> Result<GuestMemory, GuestStatsError> {
    let mut m = GuestMemory::new();
    m.total_bytes = meminfo_bytes(text, "MemTotal")
        .ok_or(GuestStatsError::Missing("/proc/meminfo", "MemTotal"))?;
    m.free_bytes = meminfo_bytes(text, "MemFree").unwrap_or(0);
    m.available_bytes = meminfo_bytes(text, "MemAvailable").unwrap_or(m.free_bytes);
    m.cached_bytes = meminfo_bytes(text, "Cached").unwrap_or(0);
    Ok(m)
}

/// The CPU figures of /proc/stat text: the `cpu` line's first eight fields
/// (user nice system idle iowait irq softirq steal, in USER_HZ ticks) and the
/// count of `cpuN` lines.
pub fn parse_stat(text: &str) -> Result<GuestCpu, GuestStatsError> {
    let mut cpu = GuestCpu::new();
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or(GuestStatsError::Missing("/proc/stat", "cpu"))?;
    let mut ticks = total.split_whitespace().map(|w| {
        w.parse::<u64>()
            .unwrap_or(0)
            .saturating_mul(1_000_000 / USER_HZ)
    });
    let mut next = || ticks.next().unwrap_or(0);
    cpu.user_usec = next();
    cpu.nice_usec = next();
    cpu.system_usec = next();
    cpu.idle_usec = next();
    cpu.iowait_usec = next();
    cpu.irq_usec = next();
    cpu.softirq_usec = next();
    cpu.steal_usec = next();
    let online = text
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|w| w.strip_prefix("cpu"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    cpu.online = u32::try_from(online).unwrap_or(u32::MAX);
    Ok(cpu)
}

/// The guest's figures now.
pub fn do_guest_stats() -> Result<GuestStatsResponse, GuestStatsError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|e| GuestStatsError::Read(path, e))
    };
    let mut resp = GuestStatsResponse::new();
    resp.memory = Some(parse_meminfo(&read("/proc/meminfo")?)?).into();
    resp.cpu = Some(parse_stat(&read("/proc/stat")?)?).into();
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines_become_bytes() {
        let text = "MemTotal:         493304 kB\nMemFree:          401228 kB\n\
                    MemAvailable:     420000 kB\nBuffers:               0 kB\n\
                    Cached:            20000 kB\nSwapCached:            7 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total_bytes, 493_304 * 1024);
        assert_eq!(m.free_bytes, 401_228 * 1024);
        assert_eq!(m.available_bytes, 420_000 * 1024);
        assert_eq!(m.cached_bytes, 20_000 * 1024, "not SwapCached");
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert_eq!(
            parse_meminfo("MemTotal: 99999999999999999999 kB\n")
                .map(|m| m.total_bytes)
                .ok(),
            None,
            "an overflowing value is no MemTotal"
        );
    }

    #[test]
    fn the_cpu_line_becomes_microseconds() {
        let text = "cpu  10 1 20 300 4 0 2 0 0 0\ncpu0 5 1 10 150 2 0 1 0 0 0\n\
                    cpu1 5 0 10 150 2 0 1 0 0 0\nintr 1 2\nctxt 99\n";
        let c = parse_stat(text).unwrap();
        assert_eq!(c.online, 2);
        assert_eq!(
            (c.user_usec, c.nice_usec, c.system_usec, c.idle_usec),
            (100_000, 10_000, 200_000, 3_000_000)
        );
        assert_eq!(
            (c.iowait_usec, c.softirq_usec, c.steal_usec),
            (40_000, 20_000, 0)
        );
        assert!(parse_stat("intr 1\n").is_err());
    }

    #[test]
    fn this_machine_answers() {
        let r = do_guest_stats().unwrap();
        assert!(r.memory.total_bytes > 0);
        assert!(r.cpu.online >= 1);
    }
}
