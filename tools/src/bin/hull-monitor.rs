//! `hull-monitor`: one Prometheus endpoint per node with every Hull pod's figures
//! (host processes from /proc, hull-vmm's own and its devices' counters from its
//! control socket, the guest's memory and CPU from its agent), in the spirit of
//! Kata's kata-monitor. It listens on a loopback address only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use containerd_shim_hull_v2::config::Config;
use hull_tools::{args, metrics};

/// The default listen address: loopback; `--listen` picks another port if this one is taken.
const DEFAULT_LISTEN: &str = "127.0.0.1:8091";
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: u64 = 8192;

const HELP: &str = "\
hull-monitor: Prometheus metrics of the Hull pods on this node

usage: hull-monitor [--listen ADDR] [--config PATH]
       hull-monitor --version

Serves GET /metrics (text format 0.0.4) on ADDR (default 127.0.0.1:8091; a
loopback address only). Pods are found under the config's run_dir
(<run_dir>/<namespace>/<pod>). Prints `listening on ADDR` once ready.
";

fn parse(args: &[String]) -> anyhow::Result<Option<(SocketAddr, Option<PathBuf>)>> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut config = None;
    let run = args::parse("hull-monitor", HELP, args, |arg, rest| {
        match arg {
            "--listen" => listen = rest.value()?.clone(),
            "--config" => config = Some(PathBuf::from(rest.value()?)),
            _ => return Err(rest.unknown()),
        }
        Ok(())
    })?;
    if !run {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?}: expected IP:PORT, e.g. {DEFAULT_LISTEN}"))?;
    if !addr.ip().is_loopback() {
        bail!("--listen {addr}: not a loopback address; pod figures stay on the node (use 127.0.0.1 or ::1 and a local scraper or proxy)");
    }
    Ok(Some((addr, config)))
}

/// Answers one HTTP request: `GET /metrics` gets the page, anything else 404/405.
fn serve(mut stream: TcpStream, run_dir: &std::path::Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_REQUEST)).read_line(&mut request)?;
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match metrics::gather(run_dir, metrics::SCRAPE_DEADLINE) {
            Ok(figures) => ("200 OK", metrics::CONTENT_TYPE, metrics::render(&figures)),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("cannot list pods under {}: {e}\n", run_dir.display()),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((addr, config_path)) = parse(&args)? else {
        return Ok(());
    };
    let config = Config::load(config_path.as_deref()).context("load Hull's config")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = serve(stream, &config.run_dir) {
                    eprintln!("hull-monitor: a scrape failed: {e}");
                }
            }
            Err(e) => eprintln!("hull-monitor: accept: {e}"),
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hull-monitor: {e:#}");
        std::process::exit(2);
    }
}
