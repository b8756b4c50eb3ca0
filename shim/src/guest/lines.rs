//! Guest output (hull-vmm's console carrying the guest's serial port, the
//! stderr of hull-vmm and virtiofsd) split into bounded lines whatever the
//! bytes, shown safely, and searched for the agent's ready marker. Pure, so
//! the fuzz targets in `shim/fuzz/` run it on arbitrary bytes.

use std::io::Read;

/// Longest line kept; longer ones are split into pieces of this size.
pub const MAX_LINE: usize = 2048;
/// Bytes read from the pipe at a time.
const READ_CHUNK: usize = 8192;

/// Calls `on_line` for every line of `reader` until EOF, without the newline
/// (and a trailing `\r`); a line longer than [`MAX_LINE`] arrives in pieces.
/// Memory stays at one read chunk plus one line, whatever the input.
pub fn read_lines(mut reader: impl Read, mut on_line: impl FnMut(&[u8])) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut emit = |line: &mut Vec<u8>| {
        let end = if line.last() == Some(&b'\r') {
            line.len() - 1
        } else {
            line.len()
        };
        on_line(&line[..end]);
        line.clear();
    };
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("reading guest output stopped: {e}");
                break;
            }
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let room = MAX_LINE - line.len();
            let take = rest.len().min(room);
            match rest[..take].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&rest[..i]);
                    emit(&mut line);
                    rest = &rest[i + 1..];
                }
                None => {
                    line.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if line.len() == MAX_LINE {
                        emit(&mut line);
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// A line as text for the log: lossy UTF-8, control characters (terminal
/// escapes included) shown as U+FFFD.
pub fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Whether a line carries the agent's ready marker ([`hull_protocol::READY_MARKER`]),
/// anywhere in it (the kernel may print on the same line).
pub fn is_ready_marker(line: &[u8]) -> bool {
    let marker = hull_protocol::READY_MARKER.as_bytes();
    line.windows(marker.len()).any(|w| w == marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of `byte`, produced without holding them in memory.
    struct Flood {
        left: usize,
        byte: u8,
    }

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left);
            buf[..n].fill(self.byte);
            self.left -= n;
            Ok(n)
        }
    }

    fn lines_of(input: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read_lines(input, |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_split_on_newlines_and_at_the_cap() {
        assert_eq!(lines_of(b"a\nbc\r\n\nd"), [&b"a"[..], b"bc", b"", b"d"]);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let got = lines_of(&long);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 5]
        );
    }

    #[test]
    fn a_flood_without_newlines_is_read_to_the_end_in_bounded_lines() {
        const SIZE: usize = 64 << 20;
        let (mut lines, mut bytes, mut longest) = (0usize, 0usize, 0usize);
        read_lines(
            Flood {
                left: SIZE,
                byte: b'z',
            },
            |l| {
                lines += 1;
                bytes += l.len();
                longest = longest.max(l.len());
            },
        );
        assert_eq!(bytes, SIZE, "every byte read, none kept");
        assert_eq!(longest, MAX_LINE);
        assert_eq!(lines, SIZE / MAX_LINE);
    }

    #[test]
    fn invalid_utf8_does_not_end_the_reader() {
        let got = lines_of(b"\xff\xfe\x80 bad\nstill here\n\x1b[2Jescape\n");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(printable(&got[0]), "\u{FFFD}\u{FFFD}\u{FFFD} bad");
        assert_eq!(printable(&got[1]), "still here");
        assert_eq!(
            printable(&got[2]),
            "\u{FFFD}[2Jescape",
            "no terminal escapes"
        );
    }

    #[test]
    fn the_ready_marker_is_found_anywhere_in_a_line() {
        assert!(is_ready_marker(b"HULL_AGENT_READY uptime=1.0"));
        assert!(is_ready_marker(
            b"[ 1.2] \xffHULL_AGENT_READY listen=vsock:1024"
        ));
        assert!(!is_ready_marker(b"HULL_AGENT_READ"));
        assert!(!is_ready_marker(b""));
    }
}
