//! The agent's local socket: one JSON request line, one JSON response line.
//!
//! - `{"op":"enter","identity":NAME}`: move the caller (by its SO_PEERCRED pid) into the
//!   identity's managed cgroup. Anyone may ask (entering a fence only takes abilities away),
//!   but a process that is already fenced cannot change identity.
//! - `{"op":"identities"}`: the identities and their state (root only: it reveals policy).
//! - `{"op":"status"}`: where the policy came from, its versions, the vault sync state (root).
//!
//! The server only parses and answers; the policy manager decides (see `cmd::run`).

use std::{io, path::Path};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Longest request accepted.
const MAX_REQUEST: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Enter { identity: String },
    Identities,
    Status,
}

/// The wire form, checked strictly by [`Request::parse`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
}

impl Request {
    /// Parses one request line; the error names the field and the reason.
    pub fn parse(line: &str) -> Result<Request, String> {
        let w: Wire = serde_json::from_str(line).map_err(|e| format!("not a valid request: {e}"))?;
        match (w.op.as_str(), w.identity) {
            ("enter", Some(identity)) if !identity.is_empty() => Ok(Request::Enter { identity }),
            ("enter", _) => Err("op \"enter\" needs a non-empty \"identity\"".into()),
            ("identities", None) => Ok(Request::Identities),
            ("identities", Some(_)) => Err("op \"identities\" takes no \"identity\"".into()),
            ("status", None) => Ok(Request::Status),
            ("status", Some(_)) => Err("op \"status\" takes no \"identity\"".into()),
            (other, _) => Err(format!("unknown op {other:?} (expected \"enter\", \"identities\" or \"status\")")),
        }
    }

    fn to_line(&self) -> Vec<u8> {
        let w = match self {
            Request::Enter { identity } => Wire { op: "enter".into(), identity: Some(identity.clone()) },
            Request::Identities => Wire { op: "identities".into(), identity: None },
            Request::Status => Wire { op: "status".into(), identity: None },
        };
        let mut line = serde_json::to_vec(&w).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Who asked, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

/// A request for the manager, with where to send the answer.
pub struct Call {
    pub request: Request,
    pub peer: Peer,
    pub reply: oneshot::Sender<serde_json::Value>,
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

/// Accepts connections until the task is cancelled; every request goes to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls).await {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer { pid: cred.pid().unwrap_or(0) as u32, uid: cred.uid() };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::take(BufReader::new(read), MAX_REQUEST).read_line(&mut line),
    )
    .await;
    let answer = match read {
        Err(_) => error("no request within 5 s"),
        Ok(Err(e)) => error(&format!("reading the request: {e}")),
        Ok(Ok(_)) => match Request::parse(line.trim()) {
            Err(e) => error(&e),
            Ok(request) if peer.pid == 0 => error(&format!("no peer credentials for {request:?}")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(Call { request, peer, reply: tx }).await.is_err() {
                    error("the agent is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| error("the agent dropped the request"))
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

pub fn error(message: &str) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": message})
}

/// Client side: one request, one answer (blocking; used by `fence-agent exec` and
/// `fence-agent identities`).
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("the fence agent is not running (cannot connect to {}: {e})", socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(|e| e.to_string())?;
    stream.write_all(&request.to_line()).map_err(|e| format!("sending to the agent: {e}"))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).map_err(|e| format!("reading the agent's answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("the agent's answer is not JSON ({e}): {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            Request::parse(r#"{"op":"enter","identity":"ci"}"#).unwrap(),
            Request::Enter { identity: "ci".into() }
        );
        assert_eq!(Request::parse(r#"{"op":"identities"}"#).unwrap(), Request::Identities);
        assert!(Request::parse(r#"{"op":"enter"}"#).unwrap_err().contains("needs a non-empty \"identity\""));
        assert!(Request::parse(r#"{"op":"enter","identity":""}"#).is_err());
        assert!(Request::parse(r#"{"op":"become-root"}"#).unwrap_err().contains("unknown op"));
        assert!(Request::parse(r#"{"op":"identities","x":1}"#).unwrap_err().contains("unknown field `x`"));
        assert!(Request::parse("not json").is_err());
        for r in [Request::Enter { identity: "a".into() }, Request::Identities] {
            let line = r.to_line();
            assert_eq!(Request::parse(std::str::from_utf8(&line).unwrap().trim()).unwrap(), r);
        }
    }
}
