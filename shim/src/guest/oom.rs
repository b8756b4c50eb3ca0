//! Which of the agent's OOM events reach containerd: only those naming a
//! container of this pod, at most one per container per interval, and the
//! agent is asked no faster than a fixed pace, so a guest reporting OOMs
//! without end (or for ids it made up) costs the host a bounded amount.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one OOM event per container per interval reaches containerd.
pub const COALESCE: Duration = Duration::from_secs(1);
/// The shortest time between two OomEvent calls.
pub const MIN_CALL_GAP: Duration = Duration::from_millis(100);
/// At most one warning about refused events per interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The state of the OOM watch of one pod.
#[derive(Default)]
pub struct Filter {
    /// When each container's last event was passed on (pod containers only).
    passed: HashMap<String, Instant>,
    /// Events refused since the last warning: foreign ids, then coalesced ones.
    foreign: u64,
    coalesced: u64,
    warned: Option<Instant>,
    last_call: Option<Instant>,
}

impl Filter {
    /// How long to wait before the next OomEvent call made at `now`.
    pub fn pace(&mut self, now: Instant) -> Duration {
        let wait = self
            .last_call
            .map(|t| MIN_CALL_GAP.saturating_sub(now.saturating_duration_since(t)))
            .unwrap_or_default();
        self.last_call = Some(now + wait);
        wait
    }

    /// Whether an event for `id` goes to containerd; `member` says whether `id`
    /// is a container of this pod.
    pub fn admit(&mut self, id: &str, member: bool, now: Instant) -> bool {
        if !member {
            self.foreign += 1;
            return false;
        }
        match self.passed.get_mut(id) {
            Some(t) if now.saturating_duration_since(*t) < COALESCE => {
                self.coalesced += 1;
                false
            }
            Some(t) => {
                *t = now;
                true
            }
            None => {
                self.passed.insert(id.to_string(), now);
                true
            }
        }
    }

    /// Refused events to warn about now (foreign, coalesced), at most once per interval.
    pub fn warning(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self.foreign + self.coalesced == 0 {
            return None;
        }
        if self
            .warned
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.warned = Some(now);
        Some((
            std::mem::take(&mut self.foreign),
            std::mem::take(&mut self.coalesced),
        ))
    }

    /// Forgets a removed container.
    pub fn forget(&mut self, id: &str) {
        self.passed.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_ids_are_refused_and_repeats_coalesced() {
        let mut f = Filter::default();
        let t0 = Instant::now();
        assert!(f.admit("c1", true, t0));
        assert!(!f.admit("c1", true, t0 + Duration::from_millis(10)));
        assert!(f.admit("c2", true, t0 + Duration::from_millis(10)));
        for i in 0..10_000 {
            assert!(!f.admit(&format!("made-up-{i}"), false, t0));
        }
        assert!(f.admit("c1", true, t0 + COALESCE));
        assert_eq!(f.passed.len(), 2, "only pod containers are remembered");
        assert_eq!(f.warning(t0), Some((10_000, 1)));
        assert!(!f.admit("x", false, t0));
        assert_eq!(
            f.warning(t0 + Duration::from_secs(1)),
            None,
            "once per interval"
        );
        assert_eq!(f.warning(t0 + WARN_EVERY), Some((1, 0)));
        f.forget("c1");
        assert!(f.admit("c1", true, t0 + COALESCE));
    }

    #[test]
    fn calls_are_paced() {
        let mut f = Filter::default();
        let t0 = Instant::now();
        assert_eq!(f.pace(t0), Duration::ZERO);
        assert_eq!(f.pace(t0), MIN_CALL_GAP, "an immediate answer waits");
        // The second call happens at t0 + gap; one right after waits a full gap.
        assert_eq!(f.pace(t0 + MIN_CALL_GAP), MIN_CALL_GAP);
        assert_eq!(f.pace(t0 + Duration::from_secs(5)), Duration::ZERO);
    }
}
