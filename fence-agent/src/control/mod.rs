//! The agent's local socket: one JSON request line, one JSON answer line (see [`protocol`]).
//! The server only reads, checks who asks and hands the request to the policy service, which
//! answers; the client side is what `fence-agent exec`, `identities` and `status` use.

pub mod attest;
pub mod protocol;
pub mod replies;

use std::{io, path::Path, time::Duration};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use crate::{broker::Broker, service::ServiceHandle};
pub use protocol::Request;

/// Longest request accepted.
const MAX_REQUEST: u64 = 4096;
/// Connections answered at once on one socket.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Who asked, from the socket's peer credentials (and, for the requests that need it, the
/// process attested by the kernel: see [`attest`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The caller's cgroup v2 path, when attested.
    pub cgroup: Option<String>,
    /// The caller's executable, when attested.
    pub exe: Option<String>,
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another fence-agent is already answering on {0}")]
    InUse(String),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: io::Error },
}

/// Binds the socket (0666 in a 0755 directory) after checking no other agent answers on it.
pub async fn listen(path: &Path) -> Result<UnixListener, ControlError> {
    let shown = path.display().to_string();
    let err = |source| ControlError::Listen { path: shown.clone(), source };
    if UnixStream::connect(path).await.is_ok() {
        return Err(ControlError::InUse(shown));
    }
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// `[control] socket`: operators (root-only requests are checked per request).
    Admin,
    /// `[control] workload_socket`: only what a fenced workload may ask.
    Workload,
}

/// Accepts connections until `stop` is cancelled; every request goes to the policy service
/// (secrets through the broker, which asks the service).
pub async fn serve(
    listener: UnixListener,
    service: ServiceHandle,
    broker: std::sync::Arc<Broker>,
    stop: CancellationToken,
    socket: Socket,
) {
    // At most this many connections answered at once per socket; the next wait in the
    // listen backlog (a workload opening thousands cannot make the agent run thousands).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        let broker = broker.clone();
        let accepted_boot_ns = attest::boot_ns();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handle(stream, service, &broker, socket, accepted_boot_ns).await {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    service: ServiceHandle,
    broker: &Broker,
    socket: Socket,
    accepted_boot_ns: u64,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let mut peer = Peer { pid: cred.pid().unwrap_or(0) as u32, uid: cred.uid(), gid: cred.gid(), ..Peer::default() };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let limited = tokio::io::AsyncReadExt::take(BufReader::new(read), MAX_REQUEST);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async move {
        let mut limited = limited;
        limited.read_line(&mut line).await.map(|_| line)
    })
    .await;
    let refuse = |why: String| zeroize::Zeroizing::new(protocol::encode::<()>(&Err(why)));
    let answer = match read {
        Err(_) => refuse(format!("no request within {} s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => refuse(format!("reading the request: {e}")),
        Ok(Ok(line)) => match Request::parse(line.trim()) {
            Err(e) => refuse(e),
            Ok(request) if peer.pid == 0 => refuse(format!("no peer credentials for {request:?}")),
            Ok(request) if socket == Socket::Workload && !request.for_workloads() => refuse(
                "this socket answers workloads' grant and secret requests only; operators use the agent's control socket"
                    .into(),
            ),
            Ok(Request::Secret(protocol::SecretOp::Get { .. } | protocol::SecretOp::File { .. }))
                if socket == Socket::Admin =>
            {
                refuse("secrets are handed out on the workload socket only ([control] workload_socket)".into())
            }
            Ok(request) if request.root_only() && peer.uid != 0 => refuse(root_only(&request)),
            // Who is asking, from the kernel (the pid pinned, or its start time checked against
            // the accept), for the requests that need it only: the others do not read /proc.
            Ok(request) if request.needs_attestation() => match attest_peer(&write, accepted_boot_ns) {
                Ok(a) => {
                    peer.cgroup = Some(a.cgroup.clone());
                    peer.exe = a.exe.as_ref().map(|e| e.display().to_string());
                    peer.pid = a.pid;
                    match request {
                        Request::Secret(op) => crate::broker::answer::answer(op, peer, &service, broker).await,
                        request => zeroize::Zeroizing::new(service.control(request, peer).await),
                    }
                }
                Err(e) => {
                    let why = format!("cannot tell which process is asking: {e}");
                    match request {
                        Request::Secret(
                            protocol::SecretOp::Get { name } | protocol::SecretOp::File { name, .. },
                        ) => crate::broker::answer::unattested(&name, &peer, why, &service, broker),
                        _ => refuse(why),
                    }
                }
            },
            Ok(Request::Secret(op)) => crate::broker::answer::answer(op, peer, &service, broker).await,
            Ok(request) => zeroize::Zeroizing::new(service.control(request, peer).await),
        },
    };
    write.write_all(&answer).await
}

/// Attests the peer of the connection `write` is the write half of.
fn attest_peer(
    write: &tokio::net::unix::OwnedWriteHalf,
    accepted_boot_ns: u64,
) -> Result<attest::Attested, attest::AttestError> {
    use std::os::fd::AsFd as _;
    let stream: &UnixStream = write.as_ref();
    attest::attest(stream.as_fd(), accepted_boot_ns)
}

fn root_only(request: &Request) -> String {
    match request {
        Request::Identities => "only root may list identities",
        Request::Status => "only root may read the status",
        Request::Reload => "only root may reload the policy",
        _ => "only root may ask this",
    }
    .to_owned()
}

/// Why a call to the agent gave no answer.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("the fence agent is not running (cannot connect to {path}: {source})")]
    NotRunning { path: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    /// The agent answered with a refusal.
    #[error("{0}")]
    Refused(String),
    /// The answer is not what the protocol says.
    #[error("{0}")]
    Invalid(String),
}

/// Client side: one request, one typed answer (blocking; used by `fence-agent exec`,
/// `identities`, `status` and `uninstall`).
pub fn call<T: serde::de::DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, CallError> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|source| CallError::NotRunning { path: socket.display().to_string(), source })?;
    let io = |what| move |source| CallError::Io { what, source };
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io("setting a timeout"))?;
    stream.write_all(&request.to_line()).map_err(io("sending to the agent"))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).map_err(io("reading the agent's answer"))?;
    protocol::decode(answer.trim())
}

/// Whether an agent answers on `socket` (any answer, a refusal included).
pub fn agent_answers(socket: &Path) -> bool {
    matches!(call::<serde::de::IgnoredAny>(socket, &Request::Status), Ok(_) | Err(CallError::Refused(_)))
}
