//! The agent's own log lines (tracing). Under systemd, with stderr connected to the journal
//! (`JOURNAL_STREAM` names it), each line starts with its syslog priority (`<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug and trace), which journald takes as the entry's priority,
//! so `journalctl -u fence-agent -p err` shows the agent's errors; and a line with line breaks
//! (a multi-line error) stays one entry, its breaks written as `\n`. Elsewhere lines are
//! written as they are.

use std::{
    io::{self, Write},
    os::unix::fs::MetadataExt as _,
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Writes each event's line to stderr in one write, prefixed for the journal.
#[derive(Clone, Copy)]
pub struct JournalStderr;

impl<'a> MakeWriter<'a> for JournalStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { priority: 6, buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line { priority: priority(*meta.level()), buf: Vec::new() }
    }
}

fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One event's line, written when dropped.
pub struct Line {
    priority: u8,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let _ = io::stderr().lock().write_all(&journal_line(self.priority, &self.buf));
    }
}

/// `<P>` + the text with its inner line breaks escaped, + one final newline.
fn journal_line(priority: u8, text: &[u8]) -> Vec<u8> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(format!("<{priority}>").as_bytes());
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prefixed_line_per_event() {
        assert_eq!(
            journal_line(3, b"policy refused:\n  - a\n  - b\n"),
            b"<3>policy refused:\\n  - a\\n  - b\n".to_vec()
        );
        assert_eq!(journal_line(6, b"applied"), b"<6>applied\n".to_vec());
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
