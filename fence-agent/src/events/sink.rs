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

use std::{
    env,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, OpenOptionsExt as _},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::record::Record;
use crate::config::EventsConfig;

/// Lines for the file are written when this many bytes are waiting (or at [`Sinks::flush`]).
pub const BATCH_BYTES: usize = 64 * 1024;

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

pub struct Sinks {
    console: Option<Console>,
    file: Option<EventFile>,
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
        Sinks::open_rotating(events.stdout, events.file.as_deref(), rotation)
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
        Ok(Sinks { console, file })
    }

    /// Writes one event (`json`, one line without its newline) to every sink. A failing sink
    /// does not stop the others.
    pub fn write_event(&mut self, json: &str, fields: &LineFields<'_>) -> Result<(), Vec<SinkError>> {
        let mut line = String::with_capacity(json.len() + 1);
        line.push_str(json);
        line.push('\n');
        let mut errors = Vec::new();
        if let Some(console) = &mut self.console
            && let Err(source) = console.write(&line, fields, &mut io::stdout().lock())
        {
            errors.push(SinkError::Write { sink: "stdout".into(), source, lines: 1 });
        }
        if let Some(f) = &mut self.file
            && let Err((source, lines)) = f.write(line.as_bytes())
        {
            errors.push(SinkError::Write { sink: f.path.display().to_string(), source, lines });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
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
}

impl Drop for EventFile {
    fn drop(&mut self) {
        if let Err((e, lines)) = self.flush() {
            tracing::error!(file = %self.path.display(), error = %e, lines, "writing the last event lines failed");
        }
    }
}

impl EventFile {
    fn open(path: &Path, rotation: Rotation) -> Result<EventFile, SinkError> {
        let open_err = |source| SinkError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(open_err)?;
        }
        let file = open_append(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(EventFile {
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

    /// Adds `line` to the batch; rotation is decided per line, as if each were written at
    /// once. An error: what failed and the lines it lost.
    fn write(&mut self, line: &[u8]) -> Result<(), (io::Error, u64)> {
        let len = line.len() as u64;
        let max = self.rotation.max_bytes;
        let size = self.size + self.pending.len() as u64;
        if max > 0 && size > 0 && size + len > max && (!self.failing || size >= self.retry_at) {
            // The lines before this one belong to the current file.
            if let Err((e, lines)) = self.flush() {
                return Err((e, lines + 1));
            }
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
                }
            }
        }
        self.pending.extend_from_slice(line);
        self.pending_lines += 1;
        if self.pending.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
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
        }
        self.pending.clear();
        written.map_err(|e| (e, lines))
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

/// Standard output: plain lines, or the journal's native protocol.
enum Console {
    Stdout,
    Journal(Journal),
}

impl Console {
    /// Writes `line` (with its newline): to the journal if that is where stdout goes, else (and
    /// whenever the journal refuses it) to `out`.
    fn write(&mut self, line: &str, fields: &LineFields<'_>, out: &mut dyn io::Write) -> io::Result<()> {
        if let Console::Journal(j) = self {
            match j.send(line.trim_end_matches('\n'), fields) {
                Ok(()) => {
                    j.failing = false;
                    return Ok(());
                }
                Err(e) => {
                    if !j.failing {
                        tracing::warn!(socket = %j.path.display(), error = %e, "the journal refused an event; writing it to stdout instead");
                    }
                    j.failing = true;
                }
            }
        }
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// journald's native protocol (systemd's `sd_journal_send`): one datagram per entry.
struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    /// The last send failed (logged once until one succeeds).
    failing: bool,
}

impl Journal {
    /// The journal, when stdout is its stream: `JOURNAL_STREAM=<dev>:<ino>` names stdout's
    /// device and inode (systemd.exec(5)); otherwise stdout was redirected and stays plain.
    fn detect() -> Option<Journal> {
        let stream = env::var("JOURNAL_STREAM").ok()?;
        let st = nix::sys::stat::fstat(io::stdout()).ok()?;
        if !stream_is(&stream, st.st_dev, st.st_ino) {
            return None;
        }
        match Journal::new(Path::new(JOURNAL_SOCKET)) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!(error = %e, "stdout is the journal but no datagram socket could be made; events stay plain lines");
                None
            }
        }
    }

    fn new(path: &Path) -> io::Result<Journal> {
        Ok(Journal { socket: UnixDatagram::unbound()?, path: path.to_owned(), failing: false })
    }

    fn send(&self, json: &str, fields: &LineFields<'_>) -> io::Result<()> {
        self.socket.send_to(&journal_entry(json, fields), &self.path).map(drop)
    }
}

/// Whether `JOURNAL_STREAM`'s value names the file `dev`, `ino`.
fn stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let parsed = value.trim().split_once(':').and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)));
    parsed == Some((dev, ino))
}

/// One journal entry: `KEY=value\n` per field; a value with a newline in it as
/// `KEY\n<u64 little-endian length><value>\n`.
fn journal_entry(json: &str, f: &LineFields<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(json.len() + 160);
    let priority = f.priority().to_string();
    let pid = if f.pid == 0 { String::new() } else { f.pid.to_string() };
    let fields = [
        ("MESSAGE", json),
        ("MESSAGE_ID", f.message_id()),
        ("PRIORITY", priority.as_str()),
        ("SYSLOG_IDENTIFIER", "fence-agent"),
        // Not OBJECT_PID: journald would add the process's command line (OBJECT_CMDLINE),
        // where workloads pass tokens, and a replayed event's pid may be reused by then.
        ("FENCE_PID", pid.as_str()),
        ("FENCE_IDENTITY", f.identity),
        ("FENCE_VERDICT", f.verdict),
        ("FENCE_OPERATION", f.operation),
        ("FENCE_EVENT_ACTION", f.action),
    ];
    for (key, value) in fields {
        if value.is_empty() && key != "MESSAGE" {
            continue;
        }
        buf.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            buf.push(b'\n');
            buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            buf.push(b'=');
        }
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    const FIELDS: LineFields<'static> = LineFields {
        identity: "ci-runner",
        verdict: "denied",
        operation: "connect",
        action: "connect",
        category: "network",
        pid: 42,
    };

    #[test]
    fn appends_and_never_truncates() {
        let guard = temp_dir();
        let dir = guard.path().to_path_buf();
        let path = dir.join("sub/events.jsonl");
        {
            let mut s = Sinks::open(false, Some(&path)).unwrap();
            s.write_event("{\"a\":1}", &FIELDS).unwrap();
        }
        {
            let mut s = Sinks::open(false, Some(&path)).unwrap();
            s.write_event("{\"a\":2}", &FIELDS).unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let guard = temp_dir();
        let dir = guard.path().to_path_buf();
        let path = dir.join("events.jsonl");
        // An existing live file counts towards the limit.
        fs::write(&path, "{\"n\":-1}\n").unwrap();
        let mut s = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 30, keep: 3 }).unwrap();
        // Each line is 9 bytes with its newline: 3 per file.
        for n in 0..14 {
            s.write_event(&format!("{{\"n\":{n:02}}}"), &FIELDS).unwrap();
        }
        // Lines wait for the writer's flush; rotation was decided line by line all the same.
        s.flush().unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "{\"n\":11}\n{\"n\":12}\n{\"n\":13}\n");
        assert_eq!(read(&rotated_path(&path, 1)), "{\"n\":08}\n{\"n\":09}\n{\"n\":10}\n");
        assert_eq!(read(&rotated_path(&path, 2)), "{\"n\":05}\n{\"n\":06}\n{\"n\":07}\n");
        assert_eq!(read(&rotated_path(&path, 3)), "{\"n\":02}\n{\"n\":03}\n{\"n\":04}\n");
        assert!(!rotated_path(&path, 4).exists(), "only `keep` rotated files are kept");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        // A line larger than max_bytes goes to a file of its own, whole.
        let big = format!("{{\"big\":\"{}\"}}", "x".repeat(100));
        s.write_event(&big, &FIELDS).unwrap();
        s.flush().unwrap();
        assert_eq!(read(&path), format!("{big}\n"));
        s.write_event("{\"n\":14}", &FIELDS).unwrap();
        s.flush().unwrap();
        assert_eq!(read(&path), "{\"n\":14}\n");
        assert_eq!(read(&rotated_path(&path, 1)), format!("{big}\n"));
    }

    #[test]
    fn lines_wait_for_the_flush_or_a_full_batch_and_none_is_lost_on_drop() {
        let guard = temp_dir();
        let path = guard.path().join("events.jsonl");
        let read = || fs::read_to_string(&path).unwrap();
        let mut s = Sinks::open(false, Some(&path)).unwrap();
        s.write_event("{\"a\":1}", &FIELDS).unwrap();
        assert_eq!(read(), "", "one line waits for the flush");
        s.flush().unwrap();
        assert_eq!(read(), "{\"a\":1}\n");
        // A full batch is written without a flush, whole lines only.
        let line = format!("{{\"x\":\"{}\"}}", "x".repeat(1000));
        let mut n = 0;
        while read().lines().count() == 1 {
            s.write_event(&line, &FIELDS).unwrap();
            n += 1;
            assert!(n <= BATCH_BYTES / 1000 + 1, "a full batch was not written");
        }
        assert!(read().ends_with('\n'));
        s.write_event("{\"last\":1}", &FIELDS).unwrap();
        drop(s);
        let all = read();
        assert_eq!(all.lines().count(), n + 2);
        assert!(all.ends_with("{\"last\":1}\n"));
    }

    #[test]
    fn zero_max_bytes_never_rotates() {
        let guard = temp_dir();
        let dir = guard.path().to_path_buf();
        let path = dir.join("events.jsonl");
        let mut s = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 0, keep: 2 }).unwrap();
        for n in 0..100 {
            s.write_event(&format!("{{\"n\":{n}}}"), &FIELDS).unwrap();
        }
        s.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 100);
        assert!(!rotated_path(&path, 1).exists());
    }

    #[test]
    fn a_failed_rotation_loses_no_line() {
        let guard = temp_dir();
        let dir = guard.path().to_path_buf();
        let path = dir.join("events.jsonl");
        let mut s = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 20, keep: 2 }).unwrap();
        // `.2` is a non-empty directory: it cannot be removed, so rotation fails.
        fs::create_dir_all(rotated_path(&path, 2).join("x")).unwrap();
        for n in 0..6 {
            s.write_event(&format!("{{\"n\":{n}}}"), &FIELDS).unwrap();
        }
        s.flush().unwrap();
        let live = fs::read_to_string(&path).unwrap();
        assert_eq!(live.lines().count(), 6, "every line is in the live file: {live}");
        // Once the obstacle is gone, the next due rotation succeeds.
        fs::remove_dir_all(rotated_path(&path, 2)).unwrap();
        for n in 6..12 {
            s.write_event(&format!("{{\"n\":{n}}}"), &FIELDS).unwrap();
        }
        s.flush().unwrap();
        let all: usize = [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)]
            .iter()
            .map(|p| fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0))
            .sum();
        assert!(rotated_path(&path, 1).exists(), "rotation resumed");
        assert_eq!(all, 12);
    }

    #[test]
    fn journal_entries_carry_fields_and_priority() {
        let entry = String::from_utf8(journal_entry("{\"x\":1}", &FIELDS)).unwrap();
        assert_eq!(
            entry,
            "MESSAGE={\"x\":1}\nMESSAGE_ID=1ded2c976b3c4dae8e0a78a524f31906\nPRIORITY=4\n\
             SYSLOG_IDENTIFIER=fence-agent\nFENCE_PID=42\nFENCE_IDENTITY=ci-runner\nFENCE_VERDICT=denied\n\
             FENCE_OPERATION=connect\nFENCE_EVENT_ACTION=connect\n"
        );
        let would = LineFields { verdict: "would-deny", ..FIELDS };
        assert_eq!(would.priority(), 5);
        assert_eq!(LineFields { verdict: "killed", ..FIELDS }.priority(), 4);
        let summary = LineFields { action: "events-suppressed", ..FIELDS };
        assert_eq!(summary.priority(), 5);
        let dropped = LineFields { action: "events-dropped", ..LineFields::default() };
        let entry = String::from_utf8(journal_entry("{}", &dropped)).unwrap();
        assert_eq!(
            entry,
            "MESSAGE={}\nMESSAGE_ID=10dd9d8258264427b4f7cb61ed2fba5c\nPRIORITY=5\nSYSLOG_IDENTIFIER=fence-agent\n\
             FENCE_EVENT_ACTION=events-dropped\n"
        );
        // Every kind has its own id.
        let ids: std::collections::BTreeSet<&str> = MESSAGE_IDS.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), MESSAGE_IDS.len());
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        // A value with a newline: binary form.
        let entry = journal_entry("a\nb", &LineFields::default());
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert!(entry.starts_with(&want), "{entry:?}");
    }

    #[test]
    fn journal_stream_must_name_stdout() {
        assert!(stream_is("8:12345", 8, 12345));
        assert!(stream_is("8:12345\n", 8, 12345));
        assert!(!stream_is("8:12346", 8, 12345));
        assert!(!stream_is("8", 8, 12345));
        assert!(!stream_is("x:y", 8, 12345));
    }

    #[test]
    fn journal_gets_datagrams_and_stdout_gets_what_it_refuses() {
        let guard = temp_dir();
        let dir = guard.path().to_path_buf();
        let socket_path = dir.join("journal.sock");
        let receiver = UnixDatagram::bind(&socket_path).unwrap();
        let mut console = Console::Journal(Journal::new(&socket_path).unwrap());
        let mut out = Vec::new();
        console.write("{\"x\":1}\n", &FIELDS, &mut out).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = receiver.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("MESSAGE={\"x\":1}\nMESSAGE_ID="), "{got}");
        assert!(got.contains("\nPRIORITY=4\n"), "{got}");
        assert!(got.contains("\nFENCE_IDENTITY=ci-runner\n"), "{got}");
        assert!(out.is_empty(), "sent to the journal, not stdout");
        // Too large for one datagram (EMSGSIZE): the line goes to stdout, whole.
        let big = format!("{{\"big\":\"{}\"}}\n", "x".repeat(1 << 20));
        console.write(&big, &FIELDS, &mut out).unwrap();
        assert_eq!(out, big.as_bytes());
        // No journal listening: stdout.
        drop(receiver);
        fs::remove_file(&socket_path).unwrap();
        out.clear();
        console.write("{\"x\":2}\n", &FIELDS, &mut out).unwrap();
        assert_eq!(out, b"{\"x\":2}\n");
    }
}
