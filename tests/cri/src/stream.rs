//! CRI `Exec` and `Attach` streams as kubelet's clients use them: both calls
//! return a URL on containerd's streaming server, which this client upgrades
//! to a WebSocket with the `v4.channel.k8s.io` subprotocol (the server also
//! takes SPDY; WebSocket is what kubelet's newer clients speak). Every
//! message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the
//! final status (a JSON `Status`, with the exit code as an `ExitCode` cause),
//! 4 terminal resizes (JSON `{"Width":..,"Height":..}`). Every read and write
//! is bounded by a timeout.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The WebSocket subprotocol of kubelet's streaming (binary frames).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// One blocking read at most: deadlines are checked between reads.
const TICK: Duration = Duration::from_millis(200);

/// Errors of an Exec or Attach stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("streaming URL {url:?} is not http://HOST:PORT/PATH: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the streaming server at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WebSocket upgrade of {url} (subprotocol {PROTOCOL}) failed: {message}")]
    Upgrade { url: String, message: String },
    #[error("WebSocket {what} failed")]
    Ws {
        what: &'static str,
        #[source]
        source: tungstenite::Error,
    },
    #[error("timed out after {after:?} waiting for {what}; so far: {got}")]
    Timeout {
        what: String,
        after: Duration,
        got: String,
    },
    #[error("the stream ended while waiting for {what}; it sent: {got}")]
    Ended { what: String, got: String },
    #[error("the server sent a message on unknown channel {0}")]
    Channel(u8),
    #[error("no exit status: the error channel holds {text:?}")]
    Status { text: String },
}

/// Result of stream operations.
pub type Result<T> = std::result::Result<T, StreamError>;

/// What a stream delivered so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error channel's bytes: the final status.
    pub error: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The command's exit code from the final status: 0 for `Success`, the
    /// `ExitCode` cause of a `Failure`; anything else is an error naming it.
    pub fn exit_code(&self) -> Result<i32> {
        let text = String::from_utf8_lossy(&self.error).into_owned();
        let bad = || StreamError::Status { text: text.clone() };
        let v: serde_json::Value = serde_json::from_slice(&self.error).map_err(|_| bad())?;
        match v.get("status").and_then(|s| s.as_str()) {
            Some("Success") => Ok(0),
            Some("Failure") => v
                .pointer("/details/causes")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))
                .and_then(|c| c.get("message")?.as_str()?.parse().ok())
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stdout {:?}, stderr {:?}, status {:?}",
            self.stdout_text(),
            self.stderr_text(),
            String::from_utf8_lossy(&self.error)
        )
    }
}

/// An upgraded Exec or Attach stream.
pub struct Stream {
    ws: WebSocket<TcpStream>,
    out: Output,
    closed: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("out", &self.out)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Stream {
    /// Upgrades `url` (from CRI `Exec`/`Attach`), each step bounded by `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let bad = |reason: &str| StreamError::BadUrl {
            url: url.into(),
            reason: reason.into(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only plain http (containerd's TLS streaming is off)"))?;
        let (host, path) = rest.split_at(rest.find('/').ok_or_else(|| bad("no path"))?);
        let addr = host
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("the host resolves to nothing"))?;
        let connect = |source| StreamError::Connect {
            addr: host.into(),
            source,
        };
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
        tcp.set_read_timeout(Some(timeout)).map_err(connect)?;
        tcp.set_write_timeout(Some(timeout)).map_err(connect)?;
        let upgrade = |message: String| StreamError::Upgrade {
            url: url.into(),
            message,
        };
        let mut req = format!("ws://{host}{path}")
            .into_client_request()
            .map_err(|e| upgrade(e.to_string()))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        // The handshake also refuses a server that does not choose the subprotocol.
        let (ws, _) = tungstenite::client(req, tcp).map_err(|e| upgrade(e.to_string()))?;
        ws.get_ref().set_read_timeout(Some(TICK)).map_err(connect)?;
        Ok(Self {
            ws,
            out: Output::default(),
            closed: false,
        })
    }

    /// What arrived so far.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// Sends `data` to the process's stdin.
    pub fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data)
    }

    /// Tells the server the terminal's size (a tty stream).
    pub fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        self.send(
            RESIZE,
            format!(r#"{{"Width":{width},"Height":{height}}}"#).as_bytes(),
        )
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(channel);
        msg.extend_from_slice(data);
        self.ws
            .send(Message::Binary(msg.into()))
            .map_err(|source| StreamError::Ws {
                what: "send",
                source,
            })
    }

    /// Reads until `done` holds for what arrived; a timeout or the end of the
    /// stream first is an error saying what came.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Output) -> bool,
    ) -> Result<&Output> {
        let deadline = Instant::now() + timeout;
        while !done(&self.out) {
            if self.closed {
                return Err(StreamError::Ended {
                    what: what.into(),
                    got: self.out.to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(StreamError::Timeout {
                    what: what.into(),
                    after: timeout,
                    got: self.out.to_string(),
                });
            }
            self.read_one()?;
        }
        Ok(&self.out)
    }

    /// Reads until the server ends the stream (an exec's process exited); all it sent.
    pub fn finish(mut self, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if Instant::now() >= deadline {
                return Err(StreamError::Timeout {
                    what: "the end of the stream".into(),
                    after: timeout,
                    got: self.out.to_string(),
                });
            }
            self.read_one()?;
        }
        Ok(self.out)
    }

    /// Closes the stream from this side (an attach detaching); all it sent.
    pub fn close(mut self) -> Output {
        if !self.closed {
            let _ = self.ws.close(None);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.closed && Instant::now() < deadline && self.read_one().is_ok() {}
        }
        self.out
    }

    fn read_one(&mut self) -> Result<()> {
        match self.ws.read() {
            Ok(Message::Binary(b)) => self.take(&b),
            Ok(Message::Text(t)) => self.take(t.as_bytes()),
            Ok(Message::Close(_)) => {
                self.closed = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Ok(())
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(StreamError::Ws {
                what: "read",
                source,
            }),
        }
    }

    /// One message: its channel byte, then data (an empty one only says the stream is up).
    fn take(&mut self, msg: &[u8]) -> Result<()> {
        let Some((&channel, data)) = msg.split_first() else {
            return Ok(());
        };
        match channel {
            STDOUT => self.out.stdout.extend_from_slice(data),
            STDERR => self.out.stderr.extend_from_slice(data),
            ERROR => self.out.error.extend_from_slice(data),
            other => return Err(StreamError::Channel(other)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tungstenite::handshake::server::{Request, Response};

    const T: Duration = Duration::from_secs(10);

    /// A stand-in streaming server on loopback: upgrades one connection
    /// (answering `subprotocol`), then runs `serve` on it.
    fn server(
        subprotocol: Option<&'static str>,
        serve: impl FnOnce(&mut WebSocket<TcpStream>) + Send + 'static,
    ) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/exec/tok", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            #[allow(
                clippy::result_large_err,
                reason = "the error type is tungstenite's callback's"
            )]
            let answer = |req: &Request, mut resp: Response| {
                assert_eq!(req.uri().path(), "/exec/tok");
                let asked = req.headers().get("Sec-WebSocket-Protocol").unwrap();
                assert_eq!(asked, PROTOCOL);
                if let Some(p) = subprotocol {
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
                }
                Ok(resp)
            };
            let Ok(mut ws) = tungstenite::accept_hdr(tcp, answer) else {
                return;
            };
            serve(&mut ws);
        });
        (url, handle)
    }

    fn send(ws: &mut WebSocket<TcpStream>, channel: u8, data: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        ws.send(Message::Binary(m.into())).unwrap();
    }

    #[test]
    fn stdin_reaches_the_server_and_output_and_exit_code_come_back() {
        let (url, server) = server(Some(PROTOCOL), |ws| {
            send(ws, STDOUT, b"");
            let line = ws.read().unwrap().into_data();
            assert_eq!(&line[..], b"\0hello\n");
            send(ws, STDOUT, b"got hello\n");
            send(ws, STDERR, b"oops\n");
            send(
                ws,
                ERROR,
                br#"{"metadata":{},"status":"Failure","message":"exit 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
            );
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        });
        let mut s = Stream::connect(&url, T).unwrap();
        s.send_stdin(b"hello\n").unwrap();
        let out = s.finish(T).unwrap();
        server.join().unwrap();
        assert_eq!(out.stdout_text(), "got hello\n");
        assert_eq!(out.stderr_text(), "oops\n");
        assert_eq!(out.exit_code().unwrap(), 3);
    }

    #[test]
    fn success_is_exit_code_zero_and_garbage_is_an_error_naming_it() {
        let ok = Output {
            error: br#"{"metadata":{},"status":"Success"}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(ok.exit_code().unwrap(), 0);
        for bad in [
            &b""[..],
            b"not json",
            br#"{"status":"Failure","message":"boom"}"#,
        ] {
            let out = Output {
                error: bad.to_vec(),
                ..Default::default()
            };
            let err = out.exit_code().unwrap_err().to_string();
            assert!(err.contains("no exit status"), "{err}");
        }
    }

    #[test]
    fn wait_for_times_out_saying_what_came() {
        let (url, server) = server(Some(PROTOCOL), |ws| {
            send(ws, STDOUT, b"partial");
            std::thread::sleep(Duration::from_secs(2));
        });
        let mut s = Stream::connect(&url, T).unwrap();
        let err = s
            .wait_for("the echo", Duration::from_millis(700), |o| {
                o.stdout.ends_with(b"\n")
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("the echo") && err.contains("partial"), "{err}");
        drop(s);
        server.join().unwrap();
    }

    #[test]
    fn a_server_without_the_subprotocol_is_refused() {
        let (url, server) = server(None, |_| {});
        let err = Stream::connect(&url, T).unwrap_err().to_string();
        server.join().unwrap();
        assert!(
            err.contains(PROTOCOL) && err.contains("no subprotocol"),
            "{err}"
        );
    }

    #[test]
    fn bad_urls_and_closed_ports_are_clear_errors() {
        let err = Stream::connect("https://127.0.0.1:1/exec/x", T).unwrap_err();
        assert!(err.to_string().contains("only plain http"), "{err}");
        let err = Stream::connect("http://127.0.0.1:1", T).unwrap_err();
        assert!(err.to_string().contains("no path"), "{err}");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Stream::connect(&format!("http://127.0.0.1:{port}/exec/x"), T).unwrap_err();
        assert!(
            matches!(err, StreamError::Connect { .. }) && err.to_string().contains("127.0.0.1"),
            "{err}"
        );
    }
}
