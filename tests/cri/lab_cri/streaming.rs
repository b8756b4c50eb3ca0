//! Lab tier: CRI `Exec` and `Attach`, the streaming calls (not ExecSync), for
//! the `runc` and `hull` handlers in the same run, through containerd's
//! streaming server the way kubelet's clients use it (a WebSocket with the
//! `v4.channel.k8s.io` subprotocol, `hull_cri_tests::stream`): an exec fed on
//! stdin with output on both streams and an exit code, an exec with a
//! terminal (stdin through the pty, a resize), an attach to a container's
//! stdin and stdout whose output also reaches the container's CRI log, and an
//! attach to a `stdin_once` container, whose stdin closes when it detaches.

use hull_cri_tests::stream::{Output, Stream, StreamError};

use super::*;

/// Bound on every connect, read and write of a stream (the lab is slow).
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// `Exec` and the upgrade of its URL.
/// The lines of the CRI log file `path` once they hold `want` (containerd writes the log a
/// moment after the stream), or as they are after 30 s.
fn wait_for_log_line(path: &Path, want: &(String, String)) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = log_lines(&std::fs::read_to_string(path).unwrap_or_default());
        if lines.contains(want) || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn exec_stream(
    cri: &mut Cri,
    id: &str,
    cmd: &[&str],
    tty: bool,
) -> std::result::Result<Stream, String> {
    let url = cri.exec(id, cmd, true, tty).map_err(|e| e.to_string())?;
    Stream::connect(&url, IO_TIMEOUT).map_err(|e| e.to_string())
}

/// Step 1: stdin in, stdout and stderr apart, the exit code in the final status.
fn exec_with_stdin(cri: &mut Cri, id: &str) -> std::result::Result<(Output, i32), String> {
    let cmd = ["sh", "-c", "read l; echo \"got $l\"; echo oops >&2; exit 3"];
    let mut s = exec_stream(cri, id, &cmd, false)?;
    s.send_stdin(b"hello\n").map_err(|e| e.to_string())?;
    let out = s.finish(IO_TIMEOUT).map_err(|e| e.to_string())?;
    let code = out
        .exit_code()
        .map_err(|e| format!("{e}; the stream sent {out}"))?;
    Ok((out, code))
}

/// Step 2: a terminal: the process's stdin is a pty, input goes through it,
/// the size sent on the resize channel is the terminal's.
///
/// containerd's CRI reads the resize channel from before it starts the exec,
/// and runc's shim drops a resize that comes before the exec has its console
/// (it answers success). So the size is sent again once the pty's path shows
/// the process runs, as a terminal client sends its size on a change; the
/// script then waits up to 5 s for a size, because the resize and stdin take
/// separate paths. A size that never arrives still fails the check.
fn exec_with_tty(cri: &mut Cri, id: &str) -> std::result::Result<(Output, i32), String> {
    let script = "tty; read l; i=0; \
                  until stty size >/dev/null 2>&1 || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done; \
                  stty size; echo \"got $l\"";
    let cmd = ["sh", "-c", script];
    let mut s = exec_stream(cri, id, &cmd, true)?;
    s.resize(100, 30).map_err(|e| e.to_string())?;
    s.wait_for("the pty's path", IO_TIMEOUT, |o| {
        o.stdout_text().contains("/dev/pts/")
    })
    .map_err(|e| e.to_string())?;
    s.resize(100, 30).map_err(|e| e.to_string())?;
    s.send_stdin(b"hi\n").map_err(|e| e.to_string())?;
    let out = s.finish(IO_TIMEOUT).map_err(|e| e.to_string())?;
    let code = out
        .exit_code()
        .map_err(|e| format!("{e}; the stream sent {out}"))?;
    Ok((out, code))
}

/// Step 3: attach to the echo container's stdin and stdout; sends lines until
/// one comes back (output is attached a moment after stdin, so the first echo
/// may go to the log only). The line echoed.
fn attach_echo(cri: &mut Cri, id: &str, handler: &str) -> std::result::Result<String, String> {
    let url = cri.attach(id, true, false).map_err(|e| e.to_string())?;
    let mut s = Stream::connect(&url, IO_TIMEOUT).map_err(|e| e.to_string())?;
    for attempt in 1..=4 {
        let line = format!("attach-{handler}-{attempt}");
        s.send_stdin(format!("{line}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        match s.wait_for("an echo", IO_TIMEOUT / 4, |o| {
            o.stdout_text().contains("echo:")
        }) {
            Ok(_) => break,
            Err(StreamError::Timeout { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = s.close();
    let text = out.stdout_text();
    text.lines()
        .find_map(|l| l.strip_prefix("echo:"))
        .map(str::to_string)
        .ok_or_else(|| format!("no echo in {:?} after 4 lines: {out}", IO_TIMEOUT))
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_exec_and_attach_streams() {
    let (mut cri, base) = cri();
    let mut r = Report::default();
    for handler in &handlers() {
        let handler = handler.as_str();
        let started = Instant::now();
        let mut fx = PodFixture::new(&base, handler, &format!("stream-{handler}"), false, None);
        let mut echo = container_config(
            "echo",
            IMAGE,
            &["sh", "-c", "while read l; do echo \"echo:$l\"; done"],
            &[],
            false,
            None,
        );
        echo.stdin = true;
        echo.stdin_once = false;
        let Some((pod, id, _)) = fx.start(&mut cri, &mut r, "start the pod", &echo) else {
            continue;
        };

        let step = Instant::now();
        if let Some((out, code)) =
            r.result(handler, "Exec with stdin", exec_with_stdin(&mut cri, &id))
        {
            r.check(
                handler,
                (out.stdout_text().as_str(), out.stderr_text().as_str(), code)
                    == ("got hello\n", "oops\n", 3),
                format!(
                    "Exec with stdin (no tty): want stdout \"got hello\", stderr \"oops\", \
                     exit 3; got {out}, exit {code} ({:.1} s)",
                    step.elapsed().as_secs_f64()
                ),
            );
        }

        let step = Instant::now();
        if let Some((out, code)) =
            r.result(handler, "Exec with a tty", exec_with_tty(&mut cri, &id))
        {
            let text = out.stdout_text();
            r.check(
                handler,
                text.contains("/dev/pts/")
                    && text.contains("30 100")
                    && text.contains("got hi")
                    && out.stderr.is_empty()
                    && code == 0,
                format!(
                    "Exec with a tty: want a /dev/pts path, size \"30 100\", \"got hi\", \
                     exit 0; got {out}, exit {code} ({:.1} s)",
                    step.elapsed().as_secs_f64()
                ),
            );
        }

        let step = Instant::now();
        if let Some(line) = r.result(handler, "Attach", attach_echo(&mut cri, &id, handler)) {
            r.check(
                handler,
                true,
                format!(
                    "Attach: stdin line {line:?} echoed on stdout ({:.1} s)",
                    step.elapsed().as_secs_f64()
                ),
            );
            let want = ("stdout".to_string(), format!("echo:{line}"));
            let lines = wait_for_log_line(&fx.logs.join("echo.log"), &want);
            r.check(
                handler,
                lines.contains(&want),
                format!("Attach: the echoed line {want:?} is in the CRI log: {lines:?}"),
            );
            let st = r.result(handler, "ContainerStatus", cri.container_status(&id));
            r.check(
                handler,
                st.as_ref()
                    .is_some_and(|s| s.state == ContainerState::ContainerRunning as i32),
                format!(
                    "Attach: the container runs on after the client detached: {:?}",
                    st.map(|s| (s.state, s.exit_code))
                ),
            );
        }
        stdin_once(&mut cri, &mut r, handler, &pod, &fx.config, &fx.logs);
        fx.teardown(&mut cri, &mut r);
        println!(
            "[{handler}] streaming scenario: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    r.finish(&shim_log());
}

/// Step 4: `stdin_once` (as `kubectl run -i`): once the attached client
/// detaches, containerd closes the container's stdin (CloseIO), the
/// container reads its end and exits 0, its last line in the CRI log.
fn stdin_once(
    cri: &mut Cri,
    r: &mut Report,
    handler: &str,
    pod: &str,
    pod_config: &PodSandboxConfig,
    logs: &Path,
) {
    let mut once = container_config(
        "once",
        IMAGE,
        &[
            "sh",
            "-c",
            "while read l; do echo \"echo:$l\"; done; echo stdin-closed",
        ],
        &[],
        false,
        None,
    );
    once.stdin = true;
    once.stdin_once = true;
    let Some(id) = r
        .result(
            handler,
            "CreateContainer once",
            cri.create_container(pod, &once, pod_config),
        )
        .filter(|id| {
            r.result(handler, "StartContainer once", cri.start_container(id))
                .is_some()
        })
    else {
        return;
    };
    let step = Instant::now();
    if r.result(
        handler,
        "Attach (stdin_once)",
        attach_echo(cri, &id, handler),
    )
    .is_none()
    {
        return;
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut st = None;
    while Instant::now() < deadline {
        st = r.result(handler, "ContainerStatus once", cri.container_status(&id));
        if st
            .as_ref()
            .is_none_or(|s| s.state == ContainerState::ContainerExited as i32)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let want = ("stdout".to_string(), "stdin-closed".to_string());
    let lines = wait_for_log_line(&logs.join("once.log"), &want);
    r.check(
        handler,
        st.as_ref()
            .is_some_and(|s| s.state == ContainerState::ContainerExited as i32 && s.exit_code == 0)
            && lines.contains(&("stdout".into(), "stdin-closed".into())),
        format!(
            "Attach (stdin_once): detaching closed the container's stdin, it exited 0 \
             with \"stdin-closed\" in its log: state/exit {:?}, log {lines:?} ({:.1} s)",
            st.map(|s| (s.state, s.exit_code)),
            step.elapsed().as_secs_f64()
        ),
    );
}
