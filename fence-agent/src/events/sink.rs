//! Where event lines go: stdout (or, when stdout is the systemd journal, the journal's native
//! socket with fields to filter on) and/or an append-only file rotated by size. Lines for the
//! file are gathered and written whole, many to one write(2) (at most [`BATCH_BYTES`], and
//! whenever the writer has emptied the ring buffer: [`Sinks::flush`]), so concurrent writers
//! and readers never see half a line and a denial storm costs one system call per batch, not
//! per line.
//!
//! Rotation (`[events] max_bytes`, `keep`): before a line would take the live file past
//! `max_bytes` (and it is not empty), `<file>.<keep>` is removed, `<file>.N` renamed to
//! `<file>.N+1`, the live file renamed to `<file>.1` and a new live file opened. Nothing is
//! ever truncated; a failed rotation is logged and the line goes to the current file.

mod console;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

pub use self::console::JOURNAL_SOCKET;
use self::console::{Console, Journal};
#[cfg(test)]
use self::console::{journal_entry, stream_is};
use super::record::Record;
use crate::{
    chain::{Chain, Checkpoints, LogKind},
    config::{EventFormat, EventsConfig},
};

/// Lines for the file are written when this many bytes are waiting (or at [`Sinks::flush`]).
pub const BATCH_BYTES: usize = 64 * 1024;
/// What a line's link (`fence.chain`) adds to it, about: `,"chain":{"seq":N,"prev":"<64 hex>"}`.
const LINK_BYTES: u64 = 100;
/// A checkpoint line, at most about (its signature, hashes, key id, times and a host name).
const CHECKPOINT_BYTES: u64 = 1024;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot open event file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing to {sink} failed ({lines} lines lost): {source}")]
    Write { sink: String, source: io::Error, lines: u64 },
}

/// What the journal gets besides the line itself (journald indexes these fields:
/// `journalctl FENCE_IDENTITY=ci-runner FENCE_VERDICT=denied`). Empty values are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineFields<'a> {
    /// `fence.identity`
    pub identity: &'a str,
    /// `fence.verdict`: denied, killed, would-deny (for summaries, the verdict they count).
    pub verdict: &'a str,
    /// `fence.operation`
    pub operation: &'a str,
    /// `event.action`: the operation, or `events-suppressed` / `events-dropped`.
    pub action: &'a str,
    /// The first `event.category` (network, file, process, configuration, iam, host).
    pub category: &'a str,
    /// `process.pid` of an enforcement record (0: none); the journal's `FENCE_PID`.
    pub pid: u32,
}

/// The journal's `MESSAGE_ID` of each kind of record (`journalctl MESSAGE_ID=...`).
pub const MESSAGE_IDS: &[(&str, &str)] = &[
    ("network", "1ded2c976b3c4dae8e0a78a524f31906"),
    ("file", "c454fb6f1b524dfc9afa5064e7467907"),
    ("process", "441419c413604ede90f41322f0ccb941"),
    ("configuration", "7839324395ac41db9a057c671e4698ea"),
    ("iam", "3efa136e06414a66ad7e69724782917c"),
    ("events-suppressed", "c86ca90a306e4fa899d51ec47fa608e8"),
    ("events-dropped", "10dd9d8258264427b4f7cb61ed2fba5c"),
];

impl<'a> LineFields<'a> {
    /// The fields of an enforcement record.
    pub fn of(record: &'a Record) -> LineFields<'a> {
        LineFields {
            identity: &record.fence.identity,
            verdict: record.fence.verdict.as_str(),
            operation: record.fence.operation.as_str(),
            action: &record.event.action,
            category: record.event.category.first().map_or("", |c| c.as_ref()),
            pid: record.process.pid,
        }
    }

    /// `MESSAGE_ID`: per kind of summary, else per category of the enforcement record.
    pub fn message_id(&self) -> &'static str {
        let kind = if self.action.starts_with("events-") { self.action } else { self.category };
        MESSAGE_IDS.iter().find(|(k, _)| *k == kind).map_or("", |(_, id)| id)
    }

    /// syslog priority: 4 (warning) for what was denied or killed, 5 (notice) for would-deny
    /// and for summaries.
    pub fn priority(&self) -> u8 {
        let summary = self.action.starts_with("events-");
        if !summary && matches!(self.verdict, "denied" | "killed") { 4 } else { 5 }
    }
}

/// Size-based rotation of the event file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file past this size; 0: never.
    pub max_bytes: u64,
    /// Rotated files kept (at least 1).
    pub keep: u32,
}

impl Rotation {
    pub const NEVER: Rotation = Rotation { max_bytes: 0, keep: 1 };
}

/// `<path>.<n>`: the n-th newest rotated file.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// The lines of one event: its ECS line, and its OCSF line where a sink wants one (see
/// [`Sinks::wants_ocsf`]). Each is one JSON object without a newline.
#[derive(Debug, Clone, Copy)]
pub struct EventLines<'a> {
    pub ecs: &'a str,
    pub ocsf: Option<&'a str>,
}

impl<'a> EventLines<'a> {
    /// The lines a sink of `format` gets, in order: ECS first. An OCSF line that could not be
    /// made is left out.
    fn for_format(&self, format: EventFormat) -> impl Iterator<Item = &'a str> {
        let ecs = format.ecs().then_some(self.ecs);
        let ocsf = if format.ocsf() { self.ocsf } else { None };
        ecs.into_iter().chain(ocsf)
    }
}

pub struct Sinks {
    console: Option<Console>,
    file: Option<EventFile>,
    /// What stdout and the file get: `[events] format`, `file_format`.
    console_format: EventFormat,
    file_format: EventFormat,
}

impl Sinks {
    /// Opens the configured sinks. The file is opened O_APPEND and created 0640 (its directory
    /// 0750) if missing; it is never truncated, and never rotated (see [`Sinks::open_rotating`]).
    pub fn open(stdout: bool, file: Option<&Path>) -> Result<Sinks, SinkError> {
        Sinks::open_rotating(stdout, file, Rotation::NEVER)
    }

    /// The sinks of `[events]`: stdout (the journal when stdout is the journal) and the file,
    /// rotated as configured.
    pub fn from_config(events: &EventsConfig) -> Result<Sinks, SinkError> {
        let rotation = Rotation { max_bytes: events.max_bytes, keep: events.keep };
        let sinks = Sinks::open_rotating(events.stdout, events.file.as_deref(), rotation)?;
        Ok(sinks.formats(events.format, events.file_format()))
    }

    /// Writes `console` lines to stdout and `file` lines to the file (both ECS unless set).
    pub fn formats(mut self, console: EventFormat, file: EventFormat) -> Sinks {
        (self.console_format, self.file_format) = (console, file);
        self
    }

    /// Whether a sink writes OCSF lines (the writer makes them only then).
    pub fn wants_ocsf(&self) -> bool {
        (self.console.is_some() && self.console_format.ocsf()) || (self.file.is_some() && self.file_format.ocsf())
    }

    /// Opens the sinks with `rotation` for the file. With `stdout`, events go to the journal's
    /// socket instead when stdout is connected to the journal.
    pub fn open_rotating(stdout: bool, file: Option<&Path>, rotation: Rotation) -> Result<Sinks, SinkError> {
        let file = file.map(|path| EventFile::open(path, rotation)).transpose()?;
        let console = stdout.then(|| match Journal::detect() {
            Some(j) => {
                tracing::info!(socket = %j.path.display(), "stdout is the journal: events go to it with FENCE_* fields");
                Console::Journal(j)
            }
            None => Console::Stdout,
        });
        Ok(Sinks { console, file, console_format: EventFormat::Ecs, file_format: EventFormat::Ecs })
    }

    /// Writes one event (`json`, its ECS line without a newline) to every sink. A failing sink
    /// does not stop the others.
    pub fn write_event(&mut self, json: &str, fields: &LineFields<'_>) -> Result<(), Vec<SinkError>> {
        self.write_lines(EventLines { ecs: json, ocsf: None }, fields)
    }

    /// Writes one event to every sink, as the lines its format names (ECS, OCSF or both, ECS
    /// first). A failing sink does not stop the others.
    pub fn write_lines(&mut self, lines: EventLines<'_>, fields: &LineFields<'_>) -> Result<(), Vec<SinkError>> {
        let mut errors = Vec::new();
        if let Some(console) = &mut self.console {
            for json in lines.for_format(self.console_format) {
                let mut line = String::with_capacity(json.len() + 1);
                line.push_str(json);
                line.push('\n');
                if let Err(source) = console.write(&line, fields, &mut io::stdout().lock()) {
                    errors.push(SinkError::Write { sink: "stdout".into(), source, lines: 1 });
                }
            }
        }
        if let Some(f) = &mut self.file {
            for json in lines.for_format(self.file_format) {
                if let Err((source, lines)) = f.write(json) {
                    errors.push(SinkError::Write { sink: f.path.display().to_string(), source, lines });
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Signs checkpoints of the event file's chain from now on (see [`crate::chain`]).
    pub fn checkpoints(&mut self, checkpoints: Checkpoints) {
        if let Some(f) = &mut self.file {
            let chain = std::mem::replace(&mut f.chain, Chain::resume(LogKind::Events, &[]));
            f.chain = chain.with_checkpoints(checkpoints);
        }
    }

    /// Writes the file's checkpoint if one is due (the writer calls this as it waits).
    pub fn checkpoint_if_due(&mut self) -> Result<(), SinkError> {
        match &mut self.file {
            Some(f) if f.chain.checkpoint_due(std::time::Instant::now()) => f
                .checkpoint_or_rotate("interval")
                .map_err(|(source, lines)| SinkError::Write { sink: f.path.display().to_string(), source, lines }),
            _ => Ok(()),
        }
    }

    /// How long until the file's checkpoint, or the record of its last line, is due (None:
    /// neither is).
    pub fn until_checkpoint(&self) -> Option<std::time::Duration> {
        let f = self.file.as_ref()?;
        let checkpoint = f.chain.until_checkpoint(std::time::Instant::now());
        match (checkpoint, f.chain.until_head()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the record of the file's last line if it is due.
    pub fn record_head_if_due(&mut self) {
        if let Some(f) = &mut self.file
            && f.chain.until_head().is_some_and(|d| d.is_zero())
        {
            f.chain.record_head();
        }
    }

    /// Writes the lines waiting for the file.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        match &mut self.file {
            Some(f) => f.flush().map_err(|(source, lines)| SinkError::Write {
                sink: f.path.display().to_string(),
                source,
                lines,
            }),
            None => Ok(()),
        }
    }
}

/// The live event file and its rotation.
struct EventFile {
    path: PathBuf,
    file: File,
    /// Bytes in the live file (what was there at open counts).
    size: u64,
    rotation: Rotation,
    /// The last rotation failed: retried once the file has grown by another `max_bytes`.
    failing: bool,
    retry_at: u64,
    /// Whole lines not written yet, and how many.
    pending: Vec<u8>,
    pending_lines: u64,
    /// Each line's link to the one before, across rotations and restarts.
    chain: Chain,
}

impl Drop for EventFile {
    fn drop(&mut self) {
        if self.chain.has_unsigned()
            && let Err((e, _)) = self.checkpoint_or_rotate("stop")
        {
            tracing::error!(file = %self.path.display(), error = %e, "writing the event file's last checkpoint failed");
        }
        if let Err((e, lines)) = self.flush() {
            tracing::error!(file = %self.path.display(), error = %e, lines, "writing the last event lines failed");
        }
        self.chain.record_head();
    }
}

impl EventFile {
    fn open(path: &Path, rotation: Rotation) -> Result<EventFile, SinkError> {
        let open_err = |source| SinkError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(open_err)?;
        }
        let chain = Chain::resume(LogKind::Events, &[path.to_owned(), rotated_path(path, 1)]);
        let file = open_append(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(EventFile {
            chain,
            path: path.to_owned(),
            file,
            size,
            rotation,
            failing: false,
            retry_at: 0,
            pending: Vec::with_capacity(BATCH_BYTES + 4096),
            pending_lines: 0,
        })
    }

    /// Adds `json` (one JSON object) as a line, with its link, to the batch; rotation is
    /// decided per line, as if each were written at once. An error: what failed and the lines
    /// it lost.
    fn write(&mut self, json: &str) -> Result<(), (io::Error, u64)> {
        // The link adds the sequence number and a hash: about this much.
        if let Err((e, lines)) = self.rotate_if_due(json.len() as u64 + LINK_BYTES) {
            return Err((e, lines + 1));
        }
        self.chain.seal(json, &mut self.pending);
        self.pending_lines += 1;
        if self.pending.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Rotates the file if `len` more bytes would take it past `max_bytes`. With checkpoints,
    /// room for one is kept: the rotation's checkpoint, written into the file it closes, keeps
    /// it within `max_bytes` too. Whether it rotated.
    fn rotate_if_due(&mut self, len: u64) -> Result<bool, (io::Error, u64)> {
        let max = self.rotation.max_bytes;
        let size = self.size + self.pending.len() as u64;
        let reserve = if self.chain.signs() { CHECKPOINT_BYTES } else { 0 };
        if max > 0 && size > 0 && size + len + reserve > max && (!self.failing || size >= self.retry_at) {
            // The lines before this one belong to the current file, and a checkpoint vouches
            // for them before it is rotated.
            self.checkpoint("rotation")?;
            self.flush()?;
            match self.rotate() {
                Ok(()) if self.failing => {
                    self.failing = false;
                    tracing::info!(file = %self.path.display(), "event file rotation works again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !self.failing {
                        tracing::error!(file = %self.path.display(), error = %e, "rotating the event file failed; writing on to the current file (retried after another max_bytes)");
                    }
                    self.failing = true;
                    self.retry_at = self.size.saturating_add(max);
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the waiting lines: one write(2) (O_APPEND puts them at the end together), or
    /// more if the kernel takes part of it.
    fn flush(&mut self) -> Result<(), (io::Error, u64)> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.pending);
        let lines = std::mem::take(&mut self.pending_lines);
        if written.is_ok() {
            self.size += self.pending.len() as u64;
            self.chain.written();
        } else {
            // Some of the lines the chain counted may be missing, or cut short.
            self.chain.broken();
        }
        self.pending.clear();
        written.map_err(|e| (e, lines))
    }

    /// A checkpoint at the interval or the stop: unless the file is rotated first (whose own
    /// checkpoint then vouches for everything), the same in the live file.
    fn checkpoint_or_rotate(&mut self, reason: &str) -> Result<(), (io::Error, u64)> {
        if self.rotate_if_due(0)? {
            return Ok(());
        }
        self.checkpoint(reason)
    }

    /// Writes a checkpoint line for what is in the file (and the batch) and keeps it.
    fn checkpoint(&mut self, reason: &str) -> Result<(), (io::Error, u64)> {
        let Some(json) = self.chain.checkpoint(reason, jiff::Timestamp::now()) else { return Ok(()) };
        self.chain.seal(&json, &mut self.pending);
        self.pending_lines += 1;
        self.flush()?;
        self.chain.record_head();
        // On disk before the state directory says so (a power loss must not make the kept
        // checkpoint name lines the disk never got).
        let _ = self.file.sync_data();
        self.chain.keep(reason);
        Ok(())
    }

    /// Shifts the rotated files up by one, the live file to `.1`, and opens a new live file.
    /// If the new file cannot be opened, the current descriptor (now `.1`) stays in use.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.keep.max(1);
        let gone_ok = |r: io::Result<()>| match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        gone_ok(fs::remove_file(rotated_path(&self.path, keep)))?;
        for n in (1..keep).rev() {
            gone_ok(fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)))?;
        }
        // Missing: an earlier rotation moved it but could not open a new one.
        gone_ok(fs::rename(&self.path, rotated_path(&self.path, 1)))?;
        let file = open_append(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests;
