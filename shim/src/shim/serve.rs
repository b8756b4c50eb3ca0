//! Serving: bind the shim socket, register the Task service under both the
//! `containerd.task.v2` (containerd 1.6/1.7) and `v3` (2.x) names, and run
//! until the pod's last container is gone.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::{MethodHandler, Server};
use containerd_shim::{ExitSignal, Flags, Task};

use super::{logging, sandbox_id, socket_path, write_address, ShimError};
use crate::backend;
use crate::task::events::{Events, RemoteSink};
use crate::task::service::Service;
use crate::task::Pod;

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Runs the shim server (no action on the command line).
pub fn run(flags: &Flags) -> anyhow::Result<()> {
    anyhow::ensure!(!flags.socket.is_empty(), "-socket is required");
    // Daemonize: leave containerd's session and process group, so signals sent to
    // them (a Ctrl-C on a containerd in a terminal) do not reach the pod's shim.
    let _ = nix::unistd::setsid();
    let bundle = std::env::current_dir().context("current directory")?;
    logging::init(flags.debug, &sandbox_id(&bundle, &flags.id));
    let path = socket_path(&flags.socket);
    let Some(listener) = bind(path)? else {
        // Another shim of the same pod won the race: point containerd at it.
        write_address(&flags.socket)?;
        release_start_process();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let sink = RemoteSink::connect(&ttrpc_address, &flags.namespace)
        .context("connect to containerd's event service")?;
    let (events, _publisher_thread) = Events::start(sink);
    let exit = Arc::new(ExitSignal::default());
    let pod = Pod::new(
        &flags.namespace,
        events,
        Box::new(backend::select),
        exit.clone(),
    );
    let service: Arc<dyn Task + Send + Sync> = Arc::new(Service { pod });
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(ShimError::Ttrpc)?
        .register_service(create_task(service.clone()))
        .register_service(task_v2_aliases(create_task(service)));
    server.start().map_err(ShimError::Ttrpc)?;
    tracing::info!(container = %flags.id, socket = %flags.socket, "shim serving");
    release_start_process();
    exit.wait();
    tracing::info!(container = %flags.id, "shim exiting");
    // First the socket's name: a new shim of the same id (containerd starts one for the
    // next container of that name) must never find this one still listening as it goes.
    let _ = std::fs::remove_file(path);
    if !stop_server(server, SERVER_STOP_GRACE) {
        tracing::warn!(container = %flags.id, grace_secs = SERVER_STOP_GRACE.as_secs(),
            "the ttrpc server did not stop in time (a call still in a handler); exiting anyway");
    }
    Ok(())
}

/// How long the ttrpc server may take to close its connections once the shim exits.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Stops `server` (listener, then connections) within `grace`. ttrpc's shutdown waits for
/// every handler in flight to return; a handler that never does must not keep an exiting
/// shim alive, so the stop runs on a thread of its own and the shim stops waiting after
/// `grace`. Returns whether it stopped in time.
fn stop_server(server: Server, grace: Duration) -> bool {
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = done.send(());
    });
    stopped.recv_timeout(grace).is_ok()
}

/// containerd 1.6/1.7 call `/containerd.task.v2.Task/*`; the messages are the same as v3's.
fn task_v2_aliases(methods: Methods) -> Methods {
    methods
        .into_iter()
        .map(|(name, handler)| {
            (
                name.replace("/containerd.task.v3.", "/containerd.task.v2."),
                handler,
            )
        })
        .collect()
}

/// Binds the socket; `None` when a live shim already listens there.
fn bind(path: &str) -> Result<Option<UnixListener>, ShimError> {
    let io = |context: String| move |source| ShimError::Io { context, source };
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(io(format!("remove stale socket {path}")))?;
            UnixListener::bind(path)
                .map(Some)
                .map_err(io(format!("bind {path}")))
        }
        Err(e) => Err(io(format!("bind {path}"))(e)),
    }
}

/// The `start` process reads our stdout until EOF; point stdout at stderr
/// (/dev/null) so it returns once we serve.
fn release_start_process() {
    // SAFETY: dup2 on the process's own standard descriptors; no Rust object owns fd 1.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        tracing::warn!("release start process: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl containerd_shim::protos::shim::shim_ttrpc::Task for Nop {}

    /// A Task service whose State blocks until the test ends.
    struct Stuck(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);
    impl containerd_shim::protos::shim::shim_ttrpc::Task for Stuck {
        fn state(
            &self,
            _: &containerd_shim::TtrpcContext,
            _: containerd_shim::protos::api::StateRequest,
        ) -> containerd_shim::protos::ttrpc::Result<containerd_shim::protos::api::StateResponse>
        {
            let _ = self.0.lock().unwrap().recv();
            Ok(Default::default())
        }
    }

    fn serving(dir: &Path, service: Arc<dyn Task + Send + Sync>) -> (Server, UnixStream) {
        let path = dir.join("shim.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut server = Server::new()
            .add_listener(listener.into_raw_fd())
            .unwrap()
            .register_service(create_task(service));
        server.start().unwrap();
        (server, UnixStream::connect(&path).unwrap())
    }

    #[test]
    fn an_exiting_shim_does_not_wait_for_a_handler_that_never_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (release, blocked) = std::sync::mpsc::channel();
        let (server, conn) = serving(dir.path(), Arc::new(Stuck(std::sync::Mutex::new(blocked))));
        let client = hull_protocol::rpc::Client::new(conn, "test").unwrap();
        let caller = std::thread::spawn(move || {
            let mut req = ttrpc::Request::new();
            req.service = "containerd.task.v3.Task".into();
            req.method = "State".into();
            client.request(req)
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert!(
            !stop_server(server, Duration::from_millis(300)),
            "ttrpc's shutdown waited for the stuck handler"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(release);
        let _ = caller.join();
    }

    #[test]
    fn an_idle_server_stops_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _conn) = serving(dir.path(), Arc::new(Nop));
        assert!(stop_server(server, Duration::from_secs(5)));
    }

    #[test]
    fn every_v3_method_has_a_v2_alias() {
        let service: Arc<dyn Task + Send + Sync> = Arc::new(Nop);
        let v3 = create_task(service.clone());
        let v2 = task_v2_aliases(create_task(service));
        assert_eq!(v2.len(), v3.len());
        assert!(v2.contains_key("/containerd.task.v2.Task/Create"));
        assert!(v2.contains_key("/containerd.task.v2.Task/Wait"));
    }
}
