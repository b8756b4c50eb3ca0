//! Fuzzes the shim's side of every agent call whose answer it reads: a real ttrpc
//! client (the shim's `AgentClient`) on a socketpair whose other end plays a
//! hostile agent, answering the request with the input's bytes (frames with
//! any header, length, stream id and body) and hanging up. The call must end
//! (with its reply or an error) and the decoded reply goes through what the
//! shim does with it: the version check, the OOM filter.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use containerd_shim_hull_v2::guest::oom::Filter;
use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::AgentClient;
use libfuzzer_sys::fuzz_target;

/// ttrpc's frame header: length, stream id (both big-endian u32), type, flags.
const HEADER: usize = 10;
/// ttrpc's largest frame body; a longer one is read and discarded.
const MAX_BODY: u32 = 4 << 20;

/// Caps each frame's declared length just above [`MAX_BODY`]. ttrpc 0.10
/// discards an oversized body 4 KiB at a time without stopping at end of
/// stream: a 4 GiB length before a hang-up costs about a million empty reads
/// (under a second of one thread in a release shim, ~7 s under ASan, and never
/// more: the connection is dead afterwards). Past the cap the path is the same,
/// so the fuzzer keeps covering it without tripping libFuzzer's timeout.
fn cap_lengths(reply: &mut [u8]) {
    let mut at = 0;
    while at + HEADER <= reply.len() {
        let declared = u32::from_be_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]]);
        let len = declared.min(MAX_BODY + 1);
        reply[at..at + 4].copy_from_slice(&len.to_be_bytes());
        at += HEADER + len as usize;
    }
}

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
    let mut reply = reply.to_vec();
    cap_lengths(&mut reply);
    let peer = std::thread::spawn(move || agent(theirs, reply));
    let client = AgentClient::new(ttrpc::Client::new(ours.into_raw_fd()).expect("ttrpc client"));
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
