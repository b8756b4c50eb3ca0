//! A process's stdio in the VM: one hybrid-vsock port per stream that the
//! agent dials during CreateContainer / ExecProcess, so the shim listens first
//! and accepts after the call. Each stream has its own random token, which
//! the agent writes first: another guest process that dials the port (they
//! are predictable) is refused.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hull_protocol::agent::{Stdio, StreamEndpoint};

use super::hybrid::{new_token, HybridError, PortListener};
use crate::backend::{ProcessStreams, StdioWanted};

/// How long the agent has to dial a stream once its call returned.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One stream's listener and the token its connection must present.
struct Slot {
    listener: PortListener,
    token: Vec<u8>,
}

/// Listeners bound for one process, before the agent call that dials them.
pub struct Pending {
    stdin: Option<Slot>,
    stdout: Option<Slot>,
    stderr: Option<Slot>,
    terminal: bool,
}

/// Host ports of stdio streams, unique within the pod.
pub struct Ports(AtomicU32);

impl Default for Ports {
    fn default() -> Self {
        Self(AtomicU32::new(FIRST_PORT))
    }
}

/// Stdio ports start above the well-known ones.
const FIRST_PORT: u32 = 10_000;

impl Ports {
    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Binds a listener per wanted stream; returns them and the agent's endpoints.
/// With a terminal, one stream (the `stdin` endpoint) carries the pty both ways.
pub fn prepare(
    uds: &Path,
    ports: &Ports,
    wanted: StdioWanted,
) -> Result<(Pending, Stdio), HybridError> {
    let mut stdio = Stdio::new();
    let bind = |want: bool, slot: &mut Option<StreamEndpoint>| {
        if !want {
            return Ok(None);
        }
        let port = ports.next();
        let listener = PortListener::bind(uds, port)?;
        let token = new_token()?;
        let mut ep = StreamEndpoint::new();
        ep.set_vsock_port(port);
        ep.token = token.clone();
        *slot = Some(ep);
        Ok::<_, HybridError>(Some(Slot { listener, token }))
    };
    let (mut stdin_ep, mut stdout_ep, mut stderr_ep) = (None, None, None);
    let pending = if wanted.terminal {
        Pending {
            stdin: bind(wanted.stdin || wanted.stdout, &mut stdin_ep)?,
            stdout: None,
            stderr: None,
            terminal: true,
        }
    } else {
        Pending {
            stdin: bind(wanted.stdin, &mut stdin_ep)?,
            stdout: bind(wanted.stdout, &mut stdout_ep)?,
            stderr: bind(wanted.stderr, &mut stderr_ep)?,
            terminal: false,
        }
    };
    stdio.stdin = stdin_ep.into();
    stdio.stdout = stdout_ep.into();
    stdio.stderr = stderr_ep.into();
    Ok((pending, stdio))
}

impl Pending {
    /// Takes the agent's connections (after its call succeeded).
    pub fn accept(self, wanted: StdioWanted) -> Result<ProcessStreams, HybridError> {
        let take = |slot: Option<Slot>| {
            slot.map(|s| s.listener.accept(&s.token, ACCEPT_TIMEOUT))
                .transpose()
        };
        let stdin = take(self.stdin)?;
        let stdout = take(self.stdout)?;
        let stderr = take(self.stderr)?;
        let mut streams = ProcessStreams::default();
        if self.terminal {
            if let Some(pty) = stdin {
                if wanted.stdout {
                    let out = pty.try_clone().map_err(|source| HybridError::Listen {
                        path: "pty stream".into(),
                        source,
                    })?;
                    streams.stdout = Some(Box::new(out));
                }
                if wanted.stdin {
                    streams.stdin = Some(Box::new(HalfClose(pty)));
                }
            }
            return Ok(streams);
        }
        streams.stdin = stdin.map(|s| Box::new(HalfClose(s)) as Box<dyn Write + Send>);
        streams.stdout = stdout.map(|s| Box::new(s) as _);
        streams.stderr = stderr.map(|s| Box::new(s) as _);
        Ok(streams)
    }
}

/// The host's writing half of a stream: dropping it shuts writing down, which
/// the guest process reads as end of input (the stream may still carry output).
struct HalfClose(UnixStream);

impl Write for HalfClose {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for HalfClose {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn token(ep: &protobuf::MessageField<StreamEndpoint>) -> Vec<u8> {
        ep.as_ref().unwrap().token.clone()
    }

    /// What the agent does: dial the host port and present the token.
    fn dial(uds: &Path, port: u32, token: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(format!("{}_{port}", uds.display())).unwrap();
        s.write_all(token).unwrap();
        s
    }

    #[test]
    fn each_stream_gets_its_own_port_and_stdin_half_closes() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let ports = Ports::default();
        let wanted = StdioWanted {
            stdin: true,
            stdout: true,
            stderr: false,
            terminal: false,
        };
        let (pending, stdio) = prepare(&uds, &ports, wanted).unwrap();
        let port = |ep: &protobuf::MessageField<StreamEndpoint>| ep.as_ref().unwrap().vsock_port();
        assert_eq!(port(&stdio.stdin), FIRST_PORT);
        assert_eq!(port(&stdio.stdout), FIRST_PORT + 1);
        assert!(stdio.stderr.is_none());
        let (tin, tout) = (token(&stdio.stdin), token(&stdio.stdout));
        assert_eq!(tin.len(), hull_protocol::STREAM_TOKEN_LEN);
        assert_ne!(tin, tout, "each stream has its own token");
        let mut guest_in = dial(&uds, FIRST_PORT, &tin);
        let mut guest_out = dial(&uds, FIRST_PORT + 1, &tout);
        let streams = pending.accept(wanted).unwrap();
        let mut stdin = streams.stdin.unwrap();
        stdin.write_all(b"in").unwrap();
        drop(stdin);
        let mut got = String::new();
        guest_in.read_to_string(&mut got).unwrap();
        assert_eq!(got, "in");
        guest_out.write_all(b"out").unwrap();
        drop(guest_out);
        let mut out = String::new();
        streams.stdout.unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "out");
        assert!(!Path::new(&format!("{}_{FIRST_PORT}", uds.display())).exists());
    }

    #[test]
    fn a_terminal_is_one_stream_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let wanted = StdioWanted {
            stdin: true,
            stdout: true,
            stderr: false,
            terminal: true,
        };
        let (pending, stdio) = prepare(&uds, &Ports::default(), wanted).unwrap();
        assert!(stdio.stdout.is_none() && stdio.stderr.is_none());
        let mut guest = dial(&uds, FIRST_PORT, &token(&stdio.stdin));
        let streams = pending.accept(wanted).unwrap();
        guest.write_all(b"prompt").unwrap();
        let mut buf = [0u8; 6];
        streams.stdout.unwrap().read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"prompt");
    }

    /// Another container of the pod dials the stdout port first, silent or
    /// with a guessed token: the agent's connection still gets the stream.
    #[test]
    fn a_neighbour_dialling_first_does_not_get_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let wanted = StdioWanted {
            stdin: false,
            stdout: true,
            stderr: false,
            terminal: false,
        };
        let (pending, stdio) = prepare(&uds, &Ports::default(), wanted).unwrap();
        let path = format!("{}_{FIRST_PORT}", uds.display());
        let _silent = UnixStream::connect(&path).unwrap();
        let mut guess = UnixStream::connect(&path).unwrap();
        guess
            .write_all(&[0u8; hull_protocol::STREAM_TOKEN_LEN])
            .unwrap();
        guess.write_all(b"fake output").unwrap();
        let mut real = dial(&uds, FIRST_PORT, &token(&stdio.stdout));
        real.write_all(b"real output").unwrap();
        drop(real);
        let streams = pending.accept(wanted).unwrap();
        let mut out = String::new();
        streams.stdout.unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "real output");
    }
}
