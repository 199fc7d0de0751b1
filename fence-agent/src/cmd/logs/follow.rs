//! Reading an event file and its rotated files as one stream, every line once, while the sink
//! keeps writing and rotating them.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, Read as _},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::events::sink::rotated_path;

/// A file's identity, to tell the live file from what a rotation left under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId { dev: m.dev(), ino: m.ino() }
    }
}

/// Reads an event file and its rotated files (`<file>.N`, N = 1 the newest) in order, each
/// line once: starts at the oldest file; at the end of a file that is no longer the live one
/// it moves on to the next newer one. Files are told apart by device and inode, and held open
/// once seen, so a rotation while reading loses nothing; a line without its newline yet stays
/// buffered until the rest arrives.
pub struct Follower {
    path: PathBuf,
    file: File,
    id: FileId,
    /// Newer files already opened, oldest first.
    queue: VecDeque<(FileId, File)>,
    pending: Vec<u8>,
    /// Times the files rotated so fast that one was removed before it was seen: events may be
    /// missing.
    pub gaps: u64,
}

impl Follower {
    /// Opens the set of files of `path`, at the start of the oldest.
    pub fn open(path: &Path) -> io::Result<Follower> {
        let mut chain: VecDeque<_> = chain(path)?.into();
        let Some((id, file)) = chain.pop_front() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file (nor rotated files of it)"));
        };
        Ok(Follower { path: path.to_owned(), file, id, queue: chain, pending: Vec::new(), gaps: 0 })
    }

    /// Reads every complete line there is now, up to the end of the live file, and gives each
    /// (without its newline) to `line`; stops early when `line` returns false.
    pub fn read_available(&mut self, line: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
        loop {
            if !self.read_to_end(line)? {
                return Ok(());
            }
            if self.queue.is_empty() {
                if !self.look_for_newer()? {
                    return Ok(());
                }
                // Rotated since the read above: what the writer put there before it rotated.
                if !self.read_to_end(line)? {
                    return Ok(());
                }
            }
            // The current file was rotated before the newer ones were seen, and has been read
            // since: it is complete. A last line without its newline will not get one.
            if !self.pending.is_empty() {
                let keep_going = line(&self.pending);
                self.pending.clear();
                if !keep_going {
                    return Ok(());
                }
            }
            if let Some((id, file)) = self.queue.pop_front() {
                self.id = id;
                self.file = file;
            }
        }
    }

    /// The unterminated last line, if any (for a reader that stops at the end).
    pub fn take_partial(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    /// Reads the current file to its end; false if `line` asked to stop.
    fn read_to_end(&mut self, line: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut chunk = &buf[..n];
            while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                let keep_going = if self.pending.is_empty() {
                    line(&chunk[..end])
                } else {
                    self.pending.extend_from_slice(&chunk[..end]);
                    let go = line(&self.pending);
                    self.pending.clear();
                    go
                };
                chunk = &chunk[end + 1..];
                if !keep_going {
                    return Ok(false);
                }
            }
            self.pending.extend_from_slice(chunk);
        }
    }

    /// Queues the files newer than the current one, if it has been rotated; true if any.
    fn look_for_newer(&mut self) -> io::Result<bool> {
        if fs::metadata(&self.path).is_ok_and(|m| FileId::of(&m) == self.id) {
            return Ok(false);
        }
        let mut chain = chain(&self.path)?;
        match chain.iter().position(|(id, _)| *id == self.id) {
            Some(i) => self.queue.extend(chain.drain(i + 1..)),
            None => {
                // Removed (rotated past `keep`): every file written since it was last changed
                // is newer; some between may have gone with it.
                let changed = self.file.metadata()?.modified()?;
                let newer = chain
                    .into_iter()
                    .filter(|(_, f)| f.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= changed));
                let before = self.queue.len();
                self.queue.extend(newer);
                if self.queue.len() > before {
                    self.gaps += 1;
                }
            }
        }
        Ok(!self.queue.is_empty())
    }
}

/// The files of `path`, oldest first (`<file>.N` … `<file>.1`, then `<file>`), opened, as one
/// consistent view: retried while a rotation renames them under the reader.
fn chain(path: &Path) -> io::Result<Vec<(FileId, File)>> {
    for attempt in 0..200u64 {
        let names = chain_names(path)?;
        let mut opened = Vec::with_capacity(names.len());
        for name in &names {
            match File::open(name) {
                Ok(f) => {
                    let id = FileId::of(&f.metadata()?);
                    opened.push((id, f));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", name.display()))),
            }
        }
        let same = opened.len() == names.len()
            && chain_names(path)? == names
            && names.iter().zip(&opened).all(|(n, (id, _))| fs::metadata(n).is_ok_and(|m| FileId::of(&m) == *id));
        if same {
            return Ok(opened);
        }
        std::thread::sleep(Duration::from_millis(1 + attempt.min(20)));
    }
    Err(io::Error::other("the files keep being renamed while they are read"))
}

/// The names of `path` and its rotated files that exist, oldest first.
fn chain_names(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?.as_bytes();
    let mut rotated = Vec::new();
    let mut live = false;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.as_bytes();
        if name == base {
            live = true;
        } else if let Some(n) =
            name.strip_prefix(base).and_then(|rest| rest.strip_prefix(b".")).and_then(rotation_index)
        {
            rotated.push(n);
        }
    }
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let mut names: Vec<PathBuf> = rotated.into_iter().map(|n| rotated_path(path, n)).collect();
    if live {
        names.push(path.to_owned());
    }
    Ok(names)
}

/// `N` of a rotated file's suffix: a positive number without leading zeros.
fn rotation_index(suffix: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(suffix).ok()?;
    let n: u32 = text.parse().ok()?;
    (n >= 1 && n.to_string() == text).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fence-logs-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write as _;
        fs::OpenOptions::new().append(true).create(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    /// What the sink does: `.keep` removed, `.N` -> `.N+1`, live -> `.1`, a new live file.
    fn rotate(path: &Path, keep: u32) {
        let _ = fs::remove_file(rotated_path(path, keep));
        for n in (1..keep).rev() {
            let _ = fs::rename(rotated_path(path, n), rotated_path(path, n + 1));
        }
        fs::rename(path, rotated_path(path, 1)).unwrap();
        append(path, "");
    }

    fn read(f: &mut Follower) -> Vec<String> {
        let mut lines = Vec::new();
        f.read_available(&mut |l| {
            lines.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        lines
    }

    #[test]
    fn follower_reads_every_line_once_across_rotations() {
        let dir = Dir::new("follow");
        let path = dir.0.join("events.jsonl");
        append(&path, "a1\na2\n");
        rotate(&path, 10);
        append(&path, "b1\n");
        let mut f = Follower::open(&path).unwrap();
        assert_eq!(read(&mut f), ["a1", "a2", "b1"], "history, oldest first");
        assert_eq!(read(&mut f), Vec::<String>::new());
        // A line split across two writes waits for its newline.
        append(&path, "b2\nb3-par");
        assert_eq!(read(&mut f), ["b2"]);
        append(&path, "tial\n");
        assert_eq!(read(&mut f), ["b3-partial"]);
        // Written, then rotated, before the reader looks: read from the old file first.
        append(&path, "b4\n");
        rotate(&path, 10);
        append(&path, "c1\n");
        assert_eq!(read(&mut f), ["b4", "c1"]);
        // Several rotations between two reads.
        for r in 0..4 {
            append(&path, &format!("d{r}\n"));
            rotate(&path, 10);
        }
        append(&path, "e1\n");
        assert_eq!(read(&mut f), ["d0", "d1", "d2", "d3", "e1"]);
        // Mid-rotation: the live file renamed to `.1`, the new one not created yet: wait.
        append(&path, "e2\n");
        rotate(&path, 10);
        fs::remove_file(&path).unwrap();
        assert_eq!(read(&mut f), ["e2"]);
        assert_eq!(read(&mut f), Vec::<String>::new());
        append(&path, "e3\n");
        assert_eq!(read(&mut f), ["e3"]);
        assert_eq!(f.gaps, 0);
    }

    #[test]
    fn follower_holds_what_it_has_seen_and_reports_gaps() {
        let dir = Dir::new("gaps");
        let path = dir.0.join("events.jsonl");
        append(&path, "a\n");
        rotate(&path, 2);
        append(&path, "b\n");
        rotate(&path, 2);
        append(&path, "c\n");
        // Opened: all three files are held; rotating them away does not lose them.
        let mut f = Follower::open(&path).unwrap();
        for n in 0..4 {
            rotate(&path, 2);
            append(&path, &format!("x{n}\n"));
        }
        // a, b and c were seen (held); x0's file was removed before the reader looked.
        assert_eq!(read(&mut f), ["a", "b", "c", "x1", "x2", "x3"]);
        assert_eq!(f.gaps, 1);
    }

    #[test]
    fn follower_keeps_up_with_the_sink() {
        use crate::events::sink::{LineFields, Rotation, Sinks};
        let dir = Dir::new("sink");
        let path = dir.0.join("events.jsonl");
        let mut sinks = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 640, keep: 50 }).unwrap();
        let mut f = Follower::open(&path).unwrap();
        let mut got = Vec::new();
        let mut written = Vec::new();
        for n in 0..500 {
            let line = format!("{{\"n\":{n}}}");
            sinks.write_event(&line, &LineFields::default()).unwrap();
            sinks.flush().unwrap();
            written.push(line);
            if n % 37 == 0 {
                got.extend(read(&mut f));
            }
        }
        got.extend(read(&mut f));
        let got: Vec<String> = got.iter().map(|l| crate::chain::unlinked(l)).collect();
        assert_eq!(got, written);
        assert!(rotated_path(&path, 50).exists());
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = Dir::new("missing");
        let e = Follower::open(&dir.0.join("events.jsonl")).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(rotation_index(b"3"), Some(3));
        assert_eq!(rotation_index(b"03"), None);
        assert_eq!(rotation_index(b"0"), None);
        assert_eq!(rotation_index(b"gz"), None);
    }
}
