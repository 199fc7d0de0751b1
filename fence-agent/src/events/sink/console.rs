//! Standard output, or the systemd journal when stdout is the journal (its native protocol,
//! with fields to filter on).

use std::{
    env, io,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

use super::LineFields;

/// Standard output: plain lines, or the journal's native protocol.
pub(super) enum Console {
    Stdout,
    Journal(Journal),
}

impl Console {
    /// Writes `line` (with its newline): to the journal if that is where stdout goes, else (and
    /// whenever the journal refuses it) to `out`.
    pub(super) fn write(&mut self, line: &str, fields: &LineFields<'_>, out: &mut dyn io::Write) -> io::Result<()> {
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
pub(super) struct Journal {
    socket: UnixDatagram,
    pub(super) path: PathBuf,
    /// The last send failed (logged once until one succeeds).
    failing: bool,
}

impl Journal {
    /// The journal, when stdout is its stream: `JOURNAL_STREAM=<dev>:<ino>` names stdout's
    /// device and inode (systemd.exec(5)); otherwise stdout was redirected and stays plain.
    pub(super) fn detect() -> Option<Journal> {
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

    pub(super) fn new(path: &Path) -> io::Result<Journal> {
        Ok(Journal { socket: UnixDatagram::unbound()?, path: path.to_owned(), failing: false })
    }

    fn send(&self, json: &str, fields: &LineFields<'_>) -> io::Result<()> {
        self.socket.send_to(&journal_entry(json, fields), &self.path).map(drop)
    }
}

/// Whether `JOURNAL_STREAM`'s value names the file `dev`, `ino`.
pub(super) fn stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let parsed = value.trim().split_once(':').and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)));
    parsed == Some((dev, ino))
}

/// One journal entry: `KEY=value\n` per field; a value with a newline in it as
/// `KEY\n<u64 little-endian length><value>\n`.
pub(super) fn journal_entry(json: &str, f: &LineFields<'_>) -> Vec<u8> {
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
