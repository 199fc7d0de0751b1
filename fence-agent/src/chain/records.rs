//! What the agent keeps beside a log to vouch for it: signed checkpoints, its signing key, the
//! record of the last line it wrote, and the checkpoint line's shape.

use std::{
    fs, io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{ChainError, LogKind, hex};
use crate::vault::sign::{PublicKey, SignError, SigningKey};

/// The agent's log-signing key and its public half, in the state directory.
pub const KEY_FILE: &str = "log-signing.key";
pub const PUBLIC_FILE: &str = "log-signing.pub";
/// What a checkpoint's signature covers starts with this (never a policy document's prefix).
const CHECKPOINT_DOMAIN: &[u8] = b"fence-log-checkpoint-v1\0";

/// A signed checkpoint: `fence.checkpoint`, and the state directory's copy of the newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `events` or `audit`.
    pub log: String,
    /// The line it vouches for (the one before the checkpoint line).
    pub seq: u64,
    /// That line's hash (hex).
    pub hash: String,
    pub at: String,
    /// `interval`, `rotation`, `stop` or `start`.
    pub reason: String,
    pub key_id: String,
    /// Ed25519 (base64) over [`Checkpoint::message`].
    pub signature: String,
    /// The kept checkpoint's log file (not signed, not in log lines): a log written at another
    /// path (the configuration changed) is not measured against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl Checkpoint {
    fn message(log: &str, seq: u64, hash: &str, at: &str, reason: &str) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        for part in [log, &seq.to_string(), hash, at, reason] {
            m.extend_from_slice(part.as_bytes());
            m.push(0);
        }
        m
    }

    pub fn verifies(&self, key: &PublicKey) -> bool {
        key.key_id() == self.key_id
            && key.verifies_other(
                &Checkpoint::message(&self.log, self.seq, &self.hash, &self.at, &self.reason),
                &self.signature,
            )
    }
}

/// The agent's log-signing key.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl Signer {
    /// Loads `<state_dir>/log-signing.key`, or makes it (0600) and `log-signing.pub` (0644) the
    /// first time.
    pub fn open(state_dir: &Path) -> Result<Signer, ChainError> {
        let path = state_dir.join(KEY_FILE);
        let key = match SigningKey::load(&path) {
            Ok(k) => k,
            Err(SignError::KeyFile { .. }) if !path.exists() => {
                fs::create_dir_all(state_dir)
                    .map_err(|source| ChainError::Io { path: state_dir.to_owned(), source })?;
                let key = SigningKey::generate()?;
                key.save(&path)?;
                key
            }
            Err(e) => return Err(e.into()),
        };
        // Written again each start, so that a removed or altered copy is put right.
        let public = state_dir.join(PUBLIC_FILE);
        let text = format!("{}\n", key.public());
        if fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
            let tmp = state_dir.join(format!(".{PUBLIC_FILE}.tmp"));
            let _ = fs::remove_file(&tmp);
            let write = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .and_then(|mut f| io::Write::write_all(&mut f, text.as_bytes()))
                .and_then(|()| fs::rename(&tmp, &public));
            write.map_err(|source| ChainError::Io { path: public.clone(), source })?;
        }
        let key_id = key.public().key_id();
        Ok(Signer { key, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(super) fn sign(&self, log: &str, seq: u64, hash: &str, at: &str, reason: &str) -> Checkpoint {
        Checkpoint {
            log: log.to_owned(),
            seq,
            hash: hash.to_owned(),
            at: at.to_owned(),
            reason: reason.to_owned(),
            key_id: self.key_id.clone(),
            signature: self.key.sign_other(&Checkpoint::message(log, seq, hash, at, reason)),
            file: None,
        }
    }
}

/// Checkpoints of one chain: the key, how often, and where the newest is kept.
pub struct Checkpoints {
    pub signer: Arc<Signer>,
    pub interval: Duration,
    pub state_file: PathBuf,
    /// The live log file.
    pub log_file: PathBuf,
    pub host: String,
}

/// The last line the agent wrote to a log, recorded in the state directory after every write
/// (`<log>-head`: one fixed-size record rewritten in place, not signed: only root reads or
/// writes the state directory). At start the agent goes on from the log's end only if it is
/// that line; `logs verify` checks the log still holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRecord {
    pub seq: u64,
    pub hash: String,
    /// Hex of the first 8 bytes of SHA-256 of the log's path (a log moved elsewhere by the
    /// configuration is not measured against another's head).
    pub file: String,
}

/// Size of the head record on disk.
const HEAD_BYTES: usize = 128;
/// The record of the last line written lags the log by at most this much (a crash in that
/// window makes the next start a chain marked `unvouched`).
pub const HEAD_EVERY: Duration = Duration::from_millis(50);

impl HeadRecord {
    pub fn path(kind: LogKind, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{}-head", kind.as_str()))
    }

    pub fn file_id(log_file: &Path) -> String {
        hex(&Sha256::digest(log_file.as_os_str().as_encoded_bytes())[..8])
    }

    pub fn read(path: &Path) -> io::Result<Option<HeadRecord>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut parts = text.split_whitespace();
        let parsed = (|| {
            let seq = parts.next()?.parse().ok()?;
            let hash = parts.next().filter(|h| h.len() == 64)?.to_owned();
            let file = parts.next()?.to_owned();
            Some(HeadRecord { seq, hash, file })
        })();
        parsed.map(Some).ok_or_else(|| io::Error::other(format!("{}: not a head record", path.display())))
    }

    pub(super) fn encode(&self) -> [u8; HEAD_BYTES] {
        let mut buf = [b' '; HEAD_BYTES];
        let text = format!("{} {} {}", self.seq, self.hash, self.file);
        let n = text.len().min(HEAD_BYTES - 1);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        buf[HEAD_BYTES - 1] = b'\n';
        buf
    }
}

#[derive(Serialize)]
pub(super) struct CheckpointLine {
    #[serde(flatten)]
    pub head: crate::audit::Head,
    pub event: crate::audit::AuditEvent,
    pub fence: CheckpointFence,
}

#[derive(Serialize)]
pub(super) struct CheckpointFence {
    pub schema_version: u32,
    pub checkpoint: Checkpoint,
}
