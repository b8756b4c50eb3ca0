//! What the shim parses from the guest, or from a hull-vmm the guest may own:
//! console lines, hull-vmm's answer to a vsock `CONNECT`, and the OOM events the
//! agent reports. Pure (no sockets, no threads), so the fuzz targets in
//! `shim/fuzz/` run the shim's own code on arbitrary bytes.

pub mod lines;
pub mod oom;

use std::io::Read;

/// Longest answer line hull-vmm may send to `CONNECT <port>` (`OK <port>\n`).
pub const MAX_CONNECT_ANSWER: usize = 64;

/// Reads hull-vmm's answer line to `CONNECT <port>` one byte at a time (nothing
/// past the newline is consumed: the guest's bytes follow it), at most
/// [`MAX_CONNECT_ANSWER`] bytes. Returns the line without its newline and
/// trailing blanks, lossily decoded, and whether it accepts the connection
/// (`OK <n>`).
pub fn read_connect_answer(mut reader: impl Read) -> std::io::Result<(String, bool)> {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < MAX_CONNECT_ANSWER {
        match reader.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let answer = String::from_utf8_lossy(&answer).trim_end().to_string();
    let accepted = answer
        .strip_prefix("OK ")
        .is_some_and(|port| port.parse::<u32>().is_ok());
    Ok((answer, accepted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers() {
        let mut input: &[u8] = b"OK 1073741824\nguest bytes";
        assert_eq!(
            read_connect_answer(&mut input).unwrap(),
            ("OK 1073741824".to_string(), true)
        );
        assert_eq!(input, b"guest bytes", "nothing past the newline is read");
        for refused in [&b"NO\n"[..], b"OK\n", b"OK x\n", b"", b"\xffOK 1\n"] {
            assert!(!read_connect_answer(refused).unwrap().1, "{refused:?}");
        }
        let endless = vec![b'O'; 1 << 20];
        let (line, ok) = read_connect_answer(&endless[..]).unwrap();
        assert!(!ok);
        assert_eq!(line.len(), MAX_CONNECT_ANSWER, "bounded");
    }
}
