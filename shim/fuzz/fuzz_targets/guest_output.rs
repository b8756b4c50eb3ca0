//! Fuzzes what the shim reads from the guest outside ttrpc: the console and
//! stderr line splitter with the ready-marker search and the log sanitizer,
//! hull-vmm's answer to a vsock `CONNECT`, and the OOM event filter fed a
//! sequence of (possibly made-up) container ids. Checks the promises the shim
//! relies on: bounded lines, every byte accounted for, no control characters
//! logged, no foreign id remembered.
#![no_main]

use std::io::Read;
use std::time::{Duration, Instant};

use containerd_shim_hull_v2::guest::lines::{is_ready_marker, printable, read_lines, MAX_LINE};
use containerd_shim_hull_v2::guest::oom::Filter;
use containerd_shim_hull_v2::guest::{read_connect_answer, MAX_CONNECT_ANSWER};
use libfuzzer_sys::fuzz_target;

/// A reader that returns the input in pieces of the sizes the input asks for,
/// as a pipe does.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = match self.sizes.split_first() {
            Some((&s, rest)) => {
                self.sizes = rest;
                usize::from(s).max(1) * 37
            }
            None => usize::MAX,
        };
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn lines(data: &[u8]) {
    let split = data
        .len()
        .min(usize::from(data.first().copied().unwrap_or(0)));
    let (sizes, data) = data.split_at(split);
    let mut bytes = 0usize;
    read_lines(Pieces { data, sizes }, |line| {
        assert!(line.len() <= MAX_LINE, "a line of {} bytes", line.len());
        assert!(!line.contains(&b'\n'));
        bytes += line.len();
        let _ = is_ready_marker(line);
        let shown = printable(line);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\t'),
            "control characters reach the log: {shown:?}"
        );
    });
    // Every byte is in a line, is a newline or is a `\r` ending a line.
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    let returns = data.iter().filter(|b| **b == b'\r').count();
    assert!(bytes + newlines <= data.len());
    assert!(bytes + newlines + returns >= data.len(), "bytes lost");
}

fn connect_answer(data: &[u8]) {
    let mut input = data;
    let (line, accepted) = read_connect_answer(&mut input).expect("reading a slice");
    let consumed = data.len() - input.len();
    assert!(
        consumed <= MAX_CONNECT_ANSWER + 1,
        "read {consumed} bytes of an answer"
    );
    if accepted {
        assert!(line.starts_with("OK "));
    }
}

fn oom(data: &[u8]) {
    let mut filter = Filter::default();
    let t0 = Instant::now();
    let mut now = t0;
    for op in data.chunks(4) {
        let id = format!("c{}", op.get(1).copied().unwrap_or(0) % 8);
        now += Duration::from_millis(u64::from(op.get(2).copied().unwrap_or(0)) * 20);
        match op[0] % 4 {
            0 | 1 => {
                let member = op[0] & 0x10 != 0;
                if filter.admit(&id, member, now) {
                    assert!(member, "an event for a foreign id {id} passed");
                    assert!(!filter.admit(&id, member, now), "a repeat at once passed");
                }
            }
            2 => {
                let _ = filter.warning(now);
            }
            _ => {
                let wait = filter.pace(now);
                assert!(wait <= containerd_shim_hull_v2::guest::oom::MIN_CALL_GAP);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => lines(rest),
        1 => connect_answer(rest),
        _ => oom(rest),
    }
});
