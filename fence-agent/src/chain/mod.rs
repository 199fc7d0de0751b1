//! Tamper evidence for fence's own logs: the event file and the audit log.
//!
//! Every line the agent writes to them carries a link, `fence.chain`: its number in the log
//! (`seq`, one more than the line before) and the SHA-256 of the line before it (`prev`, hex,
//! of that line's bytes without the newline). Changing, removing, inserting or reordering a
//! line breaks the next line's link; the chain goes on across rotation (a rotated file's last
//! line is the live file's first line's `prev`) and across restarts (the agent reads the last
//! line back before it writes).
//!
//! The last line has no successor to vouch for it, so the agent also writes *checkpoints*: a
//! line (`event.action: log-checkpoint`) whose `fence.checkpoint` names the line before it
//! (seq and hash) and is signed with the agent's own Ed25519 key, kept in the state directory
//! (`log-signing.key`, 0600; the public key beside it in `log-signing.pub`). They are written
//! every `[integrity] checkpoint_interval` when lines were added, before a rotation and when
//! the agent stops. Once a checkpoint line is written, the agent also keeps a signed checkpoint
//! *of that line* in the state directory (`<log>-checkpoint.json`): it vouches for the log's
//! end as it was then, so that lines cut off the end, or a changed last line, are found even
//! when the checkpoint line went with them. `fence-agent logs verify` checks all of it (see
//! [`verify`]).
//!
//! What this proves: that the lines are the ones the agent wrote, in its order, up to the last
//! checkpoint. Against whom: anyone who can write the log but not read the state directory (a
//! fenced identity cannot: the state directory is a protected path). Root on the host can read
//! the key and write a new, consistent history; only checkpoints kept elsewhere (the journal,
//! a SIEM that receives the lines, a copy of the public key and the latest checkpoint) show
//! that. The README says so.

mod records;
pub mod verify;

use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub use self::records::{Checkpoint, Checkpoints, HEAD_EVERY, HeadRecord, KEY_FILE, PUBLIC_FILE, Signer};
use self::records::{CheckpointFence, CheckpointLine};
use crate::vault::sign::SignError;

/// The `prev` of the first line of a chain.
pub const GENESIS: [u8; 32] = [0; 32];
/// How far back from the end of a log the last line is looked for.
const TAIL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Error)]
pub enum ChainError {
    #[error(transparent)]
    Key(#[from] SignError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Which log a chain is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Events,
    Audit,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Events => "events",
            LogKind::Audit => "audit",
        }
    }

    /// `event.dataset` of the log's lines.
    pub fn dataset(self) -> &'static str {
        match self {
            LogKind::Events => "fence.enforcement",
            LogKind::Audit => "fence.audit",
        }
    }

    /// Where the newest checkpoint of this log is kept, in the state directory.
    pub fn checkpoint_file(self, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{}-checkpoint.json", self.as_str()))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The hash a line is linked by: SHA-256 of its bytes without the newline.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// Why a chain starts afresh (`fence.chain.start`, on its first line only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// No earlier line: a new log.
    New,
    /// The earlier lines carry no links (written by an agent before chaining).
    Unchained,
    /// The log's last line was cut short (a write that failed half way): the chain cannot
    /// vouch for it.
    Incomplete,
    /// The log ends before the last line the agent recorded writing (state directory): lines
    /// were removed while the agent was not running.
    Truncated,
    /// The log's end is not the last line the agent recorded writing: lines were changed or
    /// added while it was not running (or it crashed between writing and recording).
    Unvouched,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::New => "new",
            Start::Unchained => "unchained",
            Start::Incomplete => "incomplete",
            Start::Truncated => "truncated",
            Start::Unvouched => "unvouched",
        }
    }
}

/// A line's link: `fence.chain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: u64,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
}

/// The chain of one log, as its writer keeps it.
pub struct Chain {
    kind: LogKind,
    /// The next line's number and link.
    seq: u64,
    prev: [u8; 32],
    start: Option<Start>,
    /// Whether a line was sealed since the last checkpoint.
    unsigned: bool,
    /// The live file ends in a line cut short: the next line starts on a line of its own.
    newline_first: bool,
    /// The number and hash of the log's last whole, linked line, as found at start.
    found_end: Option<u64>,
    found_hash: Option<[u8; 32]>,
    /// Where the last line written is recorded (with checkpoints), when it last was, and
    /// whether lines were written since.
    head: Option<(File, String)>,
    head_at: Option<Instant>,
    head_pending: bool,
    last_checkpoint: Instant,
    checkpoints: Option<Checkpoints>,
}

impl Chain {
    /// A chain that goes on from the last line of the newest non-empty file of `files` (newest
    /// first: the live file, then `<file>.1`), or starts afresh saying why.
    pub fn resume(kind: LogKind, files: &[PathBuf]) -> Chain {
        let mut chain = Chain {
            kind,
            seq: 0,
            prev: GENESIS,
            start: Some(Start::New),
            unsigned: false,
            newline_first: false,
            found_end: None,
            found_hash: None,
            head: None,
            head_at: None,
            head_pending: false,
            last_checkpoint: Instant::now(),
            checkpoints: None,
        };
        for (i, path) in files.iter().enumerate() {
            match last_line(path) {
                Ok(None) => continue,
                Ok(Some(Tail::Incomplete(whole))) => {
                    chain.start = Some(Start::Incomplete);
                    chain.newline_first = i == 0;
                    chain.found_end = whole.as_deref().and_then(link_of).map(|l| l.seq);
                }
                Ok(Some(Tail::Line(line))) => match link_of(&line) {
                    Some(link) if link.seq < u64::MAX => {
                        chain.seq = link.seq + 1;
                        chain.prev = line_hash(&line);
                        chain.start = None;
                        chain.found_end = Some(link.seq);
                        chain.found_hash = Some(chain.prev);
                    }
                    _ => chain.start = Some(Start::Unchained),
                },
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "reading the log's last line failed; its chain starts afresh");
                    chain.start = Some(Start::Incomplete);
                }
            }
            break;
        }
        chain
    }

    /// Signs checkpoints and records every write from now on. The chain goes on from the log's
    /// end only if that is the last line the agent recorded writing; otherwise a new chain
    /// starts, marked `truncated` (the log ends before it) or `unvouched` (another end), and
    /// the agent says so. Without a record (first start with checkpoints) the newest kept
    /// checkpoint is the reference.
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Chain {
        let state_dir = checkpoints.state_file.parent().map(Path::to_path_buf).unwrap_or_default();
        let head_path = HeadRecord::path(self.kind, &state_dir);
        let file_id = HeadRecord::file_id(&checkpoints.log_file);
        let recorded = match HeadRecord::read(&head_path) {
            Ok(h) => h.filter(|h| h.file == file_id).map(|h| (h.seq, Some(h.hash))),
            Err(e) => {
                tracing::error!(error = %e, "the log's head record cannot be read; the kept checkpoint is the reference");
                None
            }
        };
        let reference = recorded.or_else(|| {
            let kept = fs::read_to_string(&checkpoints.state_file).ok()?;
            let kept = serde_json::from_str::<Checkpoint>(&kept).ok()?;
            (kept.log == self.kind.as_str() && kept.file.as_ref().is_none_or(|f| *f == checkpoints.log_file))
                .then_some((kept.seq, Some(kept.hash)))
        });
        if let Some((seq, hash)) = reference {
            let same = self.found_end == Some(seq) && hash.as_deref() == self.found_hash.map(|h| hex(&h)).as_deref();
            let verdict = if self.found_end.is_none_or(|end| end < seq) {
                Some(Start::Truncated)
            } else if !same && self.start != Some(Start::Incomplete) {
                Some(Start::Unvouched)
            } else {
                None
            };
            if let Some(start) = verdict {
                tracing::error!(
                    log = self.kind.as_str(),
                    recorded_line = seq,
                    log_ends_at = ?self.found_end,
                    start = start.as_str(),
                    "the log's end is not the last line the agent wrote: lines were removed, changed or added while it was stopped; a new chain starts"
                );
                (self.seq, self.prev, self.start) = (0, GENESIS, Some(start));
            }
        }
        match fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&head_path) {
            Ok(f) => self.head = Some((f, file_id)),
            Err(e) => {
                tracing::error!(file = %head_path.display(), error = %e, "recording the log's last line is not possible")
            }
        }
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Records that every line sealed so far is written (the writer calls it after a write):
    /// at once if the last record is [`HEAD_EVERY`] old, else by [`Chain::record_head`] within
    /// that time (a storm writes one record per interval, not one per batch).
    pub fn written(&mut self) {
        self.head_pending = true;
        if self.head_at.is_none_or(|at| at.elapsed() >= HEAD_EVERY) {
            self.record_head();
        }
    }

    /// How long until a pending record of the last line is due (None: none pending).
    pub fn until_head(&self) -> Option<Duration> {
        self.head_pending.then(|| self.head_at.map_or(Duration::ZERO, |at| HEAD_EVERY.saturating_sub(at.elapsed())))
    }

    /// Writes the pending record of the last line written, now.
    pub fn record_head(&mut self) {
        if !std::mem::take(&mut self.head_pending) {
            return;
        }
        self.head_at = Some(Instant::now());
        let Some(seq) = self.seq.checked_sub(1) else { return };
        let Some((file, id)) = &self.head else { return };
        let record = HeadRecord { seq, hash: hex(&self.prev), file: id.clone() };
        if let Err(e) = std::os::unix::fs::FileExt::write_all_at(file, &record.encode(), 0) {
            tracing::error!(error = %e, "recording the log's last line failed");
        }
    }

    /// A write failed part way: what follows starts on a line of its own, in a new chain
    /// marked `incomplete` (the lines the chain counted were not all written).
    pub fn broken(&mut self) {
        (self.seq, self.prev, self.start, self.newline_first) = (0, GENESIS, Some(Start::Incomplete), true);
    }

    /// Appends `json` (one JSON object, no newline) with its link and a newline to `out`. The
    /// link goes into the line's last member when that is an object (every fence line ends
    /// with `fence`), else into the line itself.
    pub fn seal(&mut self, json: &str, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.newline_first) {
            out.push(b'\n');
        }
        let begin = out.len();
        let trimmed = json.trim_end();
        let (body, closing) = match trimmed.strip_suffix("}}") {
            Some(body) => (body, "}}"),
            None => (trimmed.strip_suffix('}').unwrap_or(trimmed), "}"),
        };
        out.extend_from_slice(body.as_bytes());
        if !body.ends_with('{') {
            out.push(b',');
        }
        out.extend_from_slice(b"\"chain\":{\"seq\":");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        out.extend_from_slice(hex(&self.prev).as_bytes());
        out.push(b'"');
        if let Some(start) = self.start.take() {
            out.extend_from_slice(b",\"start\":\"");
            out.extend_from_slice(start.as_str().as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        out.extend_from_slice(closing.as_bytes());
        self.prev = line_hash(&out[begin..]);
        out.push(b'\n');
        self.seq += 1;
        self.unsigned = true;
    }

    /// Whether checkpoints are signed.
    pub fn signs(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Whether lines were sealed since the last checkpoint (and checkpoints are signed).
    pub fn has_unsigned(&self) -> bool {
        self.checkpoints.is_some() && self.unsigned
    }

    /// How long until a checkpoint is due; None while none will be (nothing to sign, no key).
    pub fn until_checkpoint(&self, now: Instant) -> Option<Duration> {
        let c = self.checkpoints.as_ref().filter(|_| self.unsigned)?;
        Some(c.interval.saturating_sub(now.duration_since(self.last_checkpoint)))
    }

    /// Whether a checkpoint is due: lines were added and the interval has passed.
    pub fn checkpoint_due(&self, now: Instant) -> bool {
        self.checkpoints
            .as_ref()
            .is_some_and(|c| self.unsigned && now.duration_since(self.last_checkpoint) >= c.interval)
    }

    /// A checkpoint line for the last line sealed (None: no key, or nothing sealed yet), to
    /// be sealed and written like any other; then [`Chain::keep`].
    pub fn checkpoint(&mut self, reason: &str, now: Timestamp) -> Option<String> {
        let c = self.checkpoints.as_ref()?;
        if self.seq == 0 || self.start.is_some() {
            return None;
        }
        let at = crate::audit::timestamp(now);
        let cp = c.signer.sign(self.kind.as_str(), self.seq - 1, &hex(&self.prev), &at, reason);
        let line = CheckpointLine {
            head: crate::audit::Head::new(
                now,
                &c.host,
                format!(
                    "log checkpoint ({reason}): {} log up to line {} signed by key {}",
                    self.kind.as_str(),
                    cp.seq,
                    cp.key_id
                ),
            ),
            event: crate::audit::AuditEvent {
                kind: "event",
                category: ["configuration"],
                event_type: ["info"],
                action: "log-checkpoint",
                outcome: "success",
                module: "fence",
                dataset: self.kind.dataset(),
            },
            fence: CheckpointFence { schema_version: crate::events::record::EVENT_SCHEMA_VERSION, checkpoint: cp },
        };
        let json = serde_json::to_string(&line).ok()?;
        self.last_checkpoint = Instant::now();
        Some(json)
    }

    /// Once the checkpoint line is written (it is the last line sealed): keeps a checkpoint of
    /// that line itself in the state directory, signed too, so that the log's end, checkpoint
    /// line included, is vouched for outside the log.
    pub fn keep(&mut self, reason: &str) {
        self.unsigned = false;
        let Some(c) = &self.checkpoints else { return };
        let Some(seq) = self.seq.checked_sub(1) else { return };
        let at = crate::audit::timestamp(Timestamp::now());
        let kept = Checkpoint {
            file: Some(c.log_file.clone()),
            ..c.signer.sign(self.kind.as_str(), seq, &hex(&self.prev), &at, reason)
        };
        let tmp = c.state_file.with_extension("json.tmp");
        let text = serde_json::to_string(&kept).unwrap_or_default() + "\n";
        let written = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &c.state_file));
        if let Err(e) = written {
            tracing::error!(file = %c.state_file.display(), error = %e, "keeping the newest log checkpoint failed");
        }
    }

    /// The next line's number.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }
}

/// The link of a line (`fence.chain`; `unmapped.chain` in an OCSF line; `chain` for a line
/// whose last member is not an object), if it has one.
pub fn link_of(line: &[u8]) -> Option<Link> {
    link_in(&serde_json::from_slice(line).ok()?)
}

/// The same, of a parsed line.
pub fn link_in(value: &serde_json::Value) -> Option<Link> {
    let link = ["fence", "unmapped"]
        .iter()
        .find_map(|last| value.get(last).and_then(|f| f.get("chain")))
        .or_else(|| value.get("chain"))?;
    serde_json::from_value(link.clone()).ok()
}

/// `line` without its link (for tests that compare what was written with what was meant).
#[cfg(test)]
pub fn unlinked(line: &str) -> String {
    let Some(at) = line.find("\"chain\":{") else { return line.to_owned() };
    let end = at + line[at..].find('}').map_or(line.len() - at, |i| i + 1);
    let begin = if line[..at].ends_with(',') { at - 1 } else { at };
    format!("{}{}", &line[..begin], &line[end..])
}

enum Tail {
    Line(Vec<u8>),
    /// Cut short; the whole line before it, if any.
    Incomplete(Option<Vec<u8>>),
}

/// The last line of `path` (without its newline); None for a missing or empty file.
fn last_line(path: &Path) -> io::Result<Option<Tail>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((len - from) as usize);
    file.read_to_end(&mut buf)?;
    let whole = buf.last() == Some(&b'\n');
    if !whole {
        // Keep what is before the piece cut short.
        let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        buf.truncate(end);
    }
    let line = match buf.pop() {
        Some(_) => {
            let begin = match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => Some(i + 1),
                // The whole tail is one line only if it starts at the start of the file.
                None => (from == 0).then_some(0),
            };
            begin.map(|b| buf[b..].to_vec())
        }
        None => None,
    };
    Ok(Some(match (whole, line) {
        (true, Some(line)) => Tail::Line(line),
        (true, None) => Tail::Incomplete(None),
        (false, line) => Tail::Incomplete(line),
    }))
}

#[cfg(test)]
mod tests;
