//! `event.sequence` and `event.id`: every record the agent writes gets the next number of the
//! boot, across agent restarts, so that a shipper or SIEM can order records, find duplicates
//! and see gaps. The numbers are reserved in blocks in a small file in the state directory
//! (`<boot id> <first number not yet reserved>`): a run writes the file before it uses a block,
//! so a run that is killed loses the rest of its block (a gap) but the next run never repeats
//! a number. A new boot (another boot id) starts at 1. `event.id` is
//! `<boot id>-<run>-<sequence>`, `<run>` random per agent run: unique across hosts, boots and
//! runs without coordination, even where the sequence cannot be kept (persistence off, the
//! file unreadable or unwritable) and starts again.

use std::{fs, io, path::PathBuf};

/// Numbers reserved at a time: one small file write per this many records.
const BLOCK: u64 = 1 << 16;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub struct Sequencer {
    /// `<boot id>-<run>`: the prefix of every `event.id` of this run.
    prefix: String,
    boot_id: String,
    next: u64,
    /// The first number not covered by the reservation on disk.
    reserved: u64,
    file: Option<PathBuf>,
    /// Set after a failed write, so that the failure is logged once.
    failed: bool,
}

impl Sequencer {
    /// A sequence kept in memory only (numbers repeat after a restart).
    pub fn in_memory() -> Sequencer {
        let boot_id = boot_id();
        Sequencer { prefix: prefix(&boot_id), boot_id, next: 1, reserved: u64::MAX, file: None, failed: false }
    }

    /// A sequence that continues where the boot's last run left off, reserved in `file`.
    pub fn persistent(file: PathBuf) -> Sequencer {
        let boot_id = boot_id();
        let next = match fs::read_to_string(&file) {
            Ok(text) => parse(&text, &boot_id).unwrap_or_else(|| {
                tracing::warn!(file = %file.display(), "the event sequence file is not readable; numbering starts at 1");
                1
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "the event sequence file is not readable; numbering starts at 1");
                1
            }
        };
        Sequencer { prefix: prefix(&boot_id), boot_id, next, reserved: next, file: Some(file), failed: false }
    }

    /// The next record's (`event.id`, `event.sequence`).
    pub fn take(&mut self) -> (String, u64) {
        if self.next >= self.reserved {
            self.reserve();
        }
        let n = self.next;
        self.next += 1;
        (format!("{}-{n}", self.prefix), n)
    }

    fn reserve(&mut self) {
        let upto = self.next.saturating_add(BLOCK);
        let Some(file) = &self.file else {
            self.reserved = u64::MAX;
            return;
        };
        match crate::persist::write_private(file, format!("{} {upto}\n", self.boot_id).as_bytes()) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::error!(
                    file = %file.display(), error = %e,
                    "the event sequence cannot be saved: numbers may repeat after the agent's next start"
                );
            }
            Err(_) => {}
        }
        // Numbering goes on either way: a failed save costs uniqueness across a restart, not
        // the events.
        self.reserved = upto;
    }
}

/// The next number from a sequence file written in the boot `boot_id`.
fn parse(text: &str, boot_id: &str) -> Option<u64> {
    let (boot, upto) = text.trim_end().split_once(' ')?;
    let upto: u64 = upto.parse().ok()?;
    Some(if boot == boot_id { upto.max(1) } else { 1 })
}

/// `<boot id>-<run>`, `<run>` 8 random hex digits (the kernel's random UUID source).
fn prefix(boot_id: &str) -> String {
    let run: String = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    let run = if run.len() == 8 { run } else { format!("{:08x}", std::process::id()) };
    format!("{boot_id}-{run}")
}

fn boot_id() -> String {
    fs::read_to_string(BOOT_ID).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "no-boot-id".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_continues_past_the_reservation_and_never_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("event-sequence");
        let mut first = Sequencer::persistent(file.clone());
        let (id, n) = first.take();
        assert_eq!(n, 1);
        assert!(id.ends_with("-1") && id.len() > 40, "{id}");
        // Two runs of one boot: ids differ even where the numbers are the same.
        let (other, m) = Sequencer::in_memory().take();
        assert_eq!(m, 1);
        assert_ne!(other, Sequencer::in_memory().take().0);
        for _ in 0..10 {
            first.take();
        }
        // Killed here: the next run starts after the whole block.
        let mut second = Sequencer::persistent(file.clone());
        assert_eq!(second.take().1, 1 + BLOCK);
        // A run that used more than a block reserves again before going past it.
        for _ in 0..BLOCK {
            second.take();
        }
        let third = Sequencer::persistent(file).take().1;
        assert!(third > 1 + 2 * BLOCK, "{third}");
    }

    #[test]
    fn another_boot_or_a_damaged_file_starts_at_one() {
        assert_eq!(parse("other-boot 500\n", "this-boot"), Some(1));
        assert_eq!(parse("this-boot 500\n", "this-boot"), Some(500));
        assert_eq!(parse("this-boot x\n", "this-boot"), None);
        assert_eq!(parse("", "this-boot"), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("event-sequence");
        fs::write(&file, "garbage").unwrap();
        assert_eq!(Sequencer::persistent(file).take().1, 1);
    }

    #[test]
    fn an_unwritable_file_still_numbers_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let mut s = Sequencer::persistent(not_a_dir.join("event-sequence"));
        assert_eq!(s.take().1, 1);
        assert_eq!(s.take().1, 2);
        assert_eq!(Sequencer::in_memory().take().1, 1);
    }
}
