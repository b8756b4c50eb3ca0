//! A kubelet stand-in for Hull's tests: a blocking client of containerd's CRI
//! plugin (CRI `runtime.v1` over its Unix socket, through the `k8s-cri`
//! crate's generated gRPC client), with the pod and container configurations
//! kubelet would send. There is no kubelet or crictl on Hull's machines; the
//! lab test `lab_cri` drives pods with it for the `runc` and `hull` handlers.

pub mod net;
pub mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors of talking to the CRI socket.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot start the client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to the CRI socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {code:?}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

/// Result of CRI calls.
pub type Result<T> = std::result::Result<T, CriError>;

/// What ExecSync returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// A connection to containerd's CRI services, used as kubelet uses them.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cri")
    }
}

/// How long one CRI call may take (kubelet's `--runtime-request-timeout` is
/// 2 min; a pod start in the nested lab takes up to ~90 s, more when loaded).
/// A call past it fails with `DeadlineExceeded`, so a hung runtime fails the
/// test with its logs instead of hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// One call: its name for errors, then the request; bounded by [`CALL_TIMEOUT`].
macro_rules! call {
    ($self:ident, $client:ident . $method:ident ( $req:expr )) => {{
        let mut req = tonic::Request::new($req);
        req.set_timeout(CALL_TIMEOUT);
        let fut = $self.$client.$method(req);
        // The timer is made inside the runtime (it needs its time driver).
        match $self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
        {
            Ok(answer) => answer.map(|r| r.into_inner()).map_err(|s| CriError::Call {
                call: stringify!($method),
                code: s.code(),
                message: s.message().to_string(),
            }),
            Err(_) => Err(CriError::Call {
                call: stringify!($method),
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }};
}

impl Cri {
    /// Connects to the CRI socket at `path` (containerd's gRPC address).
    pub fn connect(path: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let socket = path.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:0")
                    .connect_timeout(Duration::from_secs(30))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    })),
            )
            .map_err(|source| CriError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The runtime's name and version (`Version`).
    pub fn version(&mut self) -> Result<VersionResponse> {
        call!(self, runtime.version(VersionRequest::default()))
    }

    /// Whether the image is known to CRI (`ImageStatus`).
    pub fn image_present(&mut self, image: &str) -> Result<bool> {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(call!(self, images.image_status(req))?.image.is_some())
    }

    /// `RunPodSandbox` with the runtime handler (RuntimeClass) `handler`; the pod id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(call!(self, runtime.run_pod_sandbox(req))?.pod_sandbox_id)
    }

    pub fn pod_status(&mut self, pod: &str) -> Result<PodSandboxStatus> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        call!(self, runtime.pod_sandbox_status(req))?
            .status
            .ok_or_else(|| missing("pod_sandbox_status", "status"))
    }

    /// `StopPodSandbox`, asked again once when the first call gets no answer in time, as
    /// kubelet asks again on its next sync. containerd 1.6 answers only once it has handled
    /// the sandbox's exit, and a handling that takes more than its 10 s bound is retried
    /// with a doubling back-off (1 s up to 5 min): in the slow nested lab that alone can
    /// outlast one [`CALL_TIMEOUT`].
    pub fn stop_pod(&mut self, pod: &str) -> Result<()> {
        let req = || StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        match call!(self, runtime.stop_pod_sandbox(req())) {
            Err(CriError::Call {
                code: tonic::Code::DeadlineExceeded,
                ..
            }) => call!(self, runtime.stop_pod_sandbox(req())).map(drop),
            other => other.map(drop),
        }
    }

    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        call!(self, runtime.remove_pod_sandbox(req)).map(drop)
    }

    /// `CreateContainer` in `pod`, whose configuration `pod_config` is (kubelet sends both).
    pub fn create_container(
        &mut self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(call!(self, runtime.create_container(req))?.container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        call!(self, runtime.start_container(req)).map(drop)
    }

    /// `StopContainer` with a grace period of `timeout_secs` (TERM, then KILL).
    pub fn stop_container(&mut self, id: &str, timeout_secs: i64) -> Result<()> {
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_secs,
        };
        call!(self, runtime.stop_container(req)).map(drop)
    }

    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        call!(self, runtime.remove_container(req)).map(drop)
    }

    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        call!(self, runtime.container_status(req))?
            .status
            .ok_or_else(|| missing("container_status", "status"))
    }

    /// `ExecSync` of `cmd` in container `id`, bounded by `timeout_secs`.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<ExecOutput> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let r = call!(self, runtime.exec_sync(req))?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            exit_code: r.exit_code,
        })
    }

    /// `Exec` of `cmd` in container `id` (stdout always; stderr unless `tty`): the
    /// streaming URL, for [`stream::Stream::connect`].
    pub fn exec(&mut self, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> Result<String> {
        let req = ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        Ok(call!(self, runtime.exec(req))?.url)
    }

    /// `Attach` to container `id`'s stdio (stdout always; stderr unless `tty`): the
    /// streaming URL, for [`stream::Stream::connect`].
    pub fn attach(&mut self, id: &str, stdin: bool, tty: bool) -> Result<String> {
        let req = AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        };
        Ok(call!(self, runtime.attach(req))?.url)
    }

    pub fn container_stats(&mut self, id: &str) -> Result<ContainerStats> {
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        call!(self, runtime.container_stats(req))?
            .stats
            .ok_or_else(|| missing("container_stats", "stats"))
    }

    pub fn pod_stats(&mut self, pod: &str) -> Result<PodSandboxStats> {
        let req = PodSandboxStatsRequest {
            pod_sandbox_id: pod.into(),
        };
        call!(self, runtime.pod_sandbox_stats(req))?
            .stats
            .ok_or_else(|| missing("pod_sandbox_stats", "stats"))
    }

    pub fn update_resources(&mut self, id: &str, linux: LinuxContainerResources) -> Result<()> {
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        call!(self, runtime.update_container_resources(req)).map(drop)
    }
}

fn missing(call: &'static str, field: &str) -> CriError {
    CriError::Call {
        call,
        code: tonic::Code::Internal,
        message: format!("the answer has no {field}"),
    }
}

/// CPU and memory of a pod or container as kubelet writes them: `cpus` CPUs
/// as a CFS quota over a 100 ms period, `memory_mib` as the memory limit.
pub fn resources(cpus: u32, memory_mib: u64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: i64::from(cpus) * 100_000,
        cpu_shares: i64::from(cpus) * 1024,
        memory_limit_in_bytes: (memory_mib << 20) as i64,
        ..Default::default()
    }
}

/// A pod as kubelet describes it: metadata, log directory, hostname, cgroup
/// parent (`cgroup_parent`, cgroupfs form), PID sharing, optional resources.
pub fn pod_config(
    name: &str,
    log_dir: &Path,
    cgroup_parent: &str,
    share_pid: bool,
    resources: Option<LinuxContainerResources>,
) -> PodSandboxConfig {
    let namespace_mode = |shared| {
        if shared {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Container as i32
        }
    };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            resources,
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: namespace_mode(share_pid),
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container as kubelet describes it: `image`, `command`, a log path
/// relative to the pod's log directory, host directories bound in `mounts`
/// (host path, container path), optional resources; PID sharing as the pod's.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    mounts: &[(&Path, &str)],
    share_pid: bool,
    resources: Option<LinuxContainerResources>,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        mounts: mounts
            .iter()
            .map(|(host, ctr)| Mount {
                host_path: host.display().to_string(),
                container_path: ctr.to_string(),
                ..Default::default()
            })
            .collect(),
        linux: Some(LinuxContainerConfig {
            resources,
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: if share_pid {
                        NamespaceMode::Pod as i32
                    } else {
                        NamespaceMode::Container as i32
                    },
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// The lines of a CRI container log file (`<time> <stream> <tag> <text>`):
/// (stream, text) each.
pub fn log_lines(content: &str) -> Vec<(String, String)> {
    content
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_time, stream, _tag) = (parts.next()?, parts.next()?, parts.next()?);
            Some((
                stream.to_string(),
                parts.next().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_split_into_stream_and_text() {
        let log = "2026-11-30T05:00:00.1Z stdout F hello world\n\
                   2026-11-30T05:00:00.2Z stderr F \nbroken\n";
        assert_eq!(
            log_lines(log),
            vec![
                ("stdout".to_string(), "hello world".to_string()),
                ("stderr".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn resources_are_a_quota_over_100ms_and_bytes() {
        let r = resources(2, 1024);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 200_000));
        assert_eq!(r.memory_limit_in_bytes, 1 << 30);
    }

    #[test]
    fn a_missing_socket_is_a_connect_error_naming_it() {
        let err = Cri::connect(Path::new("/nonexistent/cri.sock")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cri.sock"), "{err}");
    }
}
