//! Fuzzes the shim's side of every agent call whose answer it reads: the
//! shim's `AgentClient` on its ttrpc client (`hull_protocol::rpc`) on a socketpair whose other end plays a
//! hostile agent, answering the request with the input's bytes (frames with
//! any header, length, stream id and body) and hanging up. The call must end
//! (with its reply or an error) and the decoded reply goes through what the
//! shim does with it: the version check, the OOM filter.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use containerd_shim_hull_v2::guest::oom::Filter;
use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use libfuzzer_sys::fuzz_target;

/// ttrpc's frame header: length, stream id (both big-endian u32), type, flags.
const HEADER: usize = 10;

/// The hostile agent: reads one request frame, writes `reply`, hangs up.
fn agent(mut sock: UnixStream, reply: Vec<u8>) {
    let mut header = [0u8; HEADER];
    if sock.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut body = vec![0u8; len];
        let _ = sock.read_exact(&mut body);
    }
    let _ = sock.write_all(&reply);
    let _ = sock.shutdown(Shutdown::Both);
}

fuzz_target!(|data: &[u8]| {
    let Some((&call, reply)) = data.split_first() else {
        return;
    };
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let reply = reply.to_vec();
    let peer = std::thread::spawn(move || agent(theirs, reply));
    let client = AgentClient::new(
        hull_protocol::rpc::Client::new(ours, "agent").expect("ttrpc client"),
    );
    // No deadline: a reply that leaves a call hanging is a finding (libFuzzer's -timeout).
    let ctx = || ttrpc::context::with_timeout(0);
    match call % 8 {
        0 => {
            if let Ok(v) = client.version(ctx(), &VersionRequest::new()) {
                let _ = hull_protocol::compatible(&v.api_version);
            }
        }
        1 => {
            let _ = client.create_container(ctx(), &CreateContainerRequest::new());
        }
        2 => {
            let _ = client.exec_process(ctx(), &ExecProcessRequest::new());
        }
        3 => {
            let _ = client.wait_process(ctx(), &WaitProcessRequest::new());
        }
        4 => {
            let _ = client.list_pids(ctx(), &ListPidsRequest::new());
        }
        5 => {
            let _ = client.stats(ctx(), &StatsRequest::new());
        }
        6 => {
            if let Ok(r) = client.oom_event(ctx(), &OomEventRequest::new()) {
                let mut filter = Filter::default();
                let now = Instant::now();
                filter.admit(&r.container_id, r.container_id == "c1", now);
                let _ = filter.warning(now);
            }
        }
        _ => {
            let _ = client.remove_container(ctx(), &RemoveContainerRequest::new());
        }
    }
    drop(client);
    peer.join().expect("the fake agent thread");
    // ttrpc 0.10's receiver thread outlives the client for a moment (it polls
    // with a 10 ms timeout) and its socket is closed under it on drop; if the
    // next input's socketpair reuses the descriptor numbers, that thread may
    // read the next reply, and the next call waits for nothing (a timeout seen
    // once at load average 7, never reproduced alone). Let it end first. A
    // shim has one client for its pod's lifetime, dropped at teardown.
    std::thread::sleep(std::time::Duration::from_millis(20));
});
