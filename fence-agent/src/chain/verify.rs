//! Checking a log's chain and checkpoints (`fence-agent logs verify`). Pure over the files'
//! bytes: the caller finds the files, the public key and the newest kept checkpoint.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{Checkpoint, GENESIS, Start, hex, line_hash, link_in};
use crate::vault::sign::PublicKey;

/// Something wrong, where it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based line number in `file` (0: the file as a whole).
    pub line: u64,
    pub what: String,
}

/// What was checked and what was found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub lines: u64,
    /// Lines before the chain began (written before chaining): not covered.
    pub unchained: u64,
    /// The first and last chained line's number.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Checkpoints found, and how many of them verified.
    pub checkpoints: u64,
    pub signed: u64,
    /// The newest checkpoint line (seq it vouches for).
    pub last_checkpoint: Option<u64>,
    /// Lines after the newest checkpoint: chained, but not yet signed.
    pub after_last_checkpoint: u64,
    /// The log (`events` or `audit`), from its checkpoints.
    pub log: Option<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Orders a rotated set oldest first: `<file>.N` (the N-th newest) before `<file>.N-1`, the
/// live file last; files of other names keep their place after those.
pub fn oldest_first(files: &mut [PathBuf]) {
    let rank = |p: &Path| -> u64 {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        match name.rsplit_once('.') {
            Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().unwrap_or(0),
            _ => 0,
        }
    };
    files.sort_by_key(|p| std::cmp::Reverse(rank(p)));
}

/// A line the agent vouches for outside the log: its number and hash, and what says so.
#[derive(Debug, Clone)]
pub struct Reference {
    pub seq: u64,
    pub hash: String,
    /// "the newest checkpoint the agent kept (TIME)", "the last line the agent recorded writing".
    pub what: String,
}

impl Reference {
    pub fn kept(cp: &Checkpoint) -> Reference {
        Reference {
            seq: cp.seq,
            hash: cp.hash.clone(),
            what: format!("the newest checkpoint the agent kept ({})", cp.at),
        }
    }

    pub fn head(h: &super::HeadRecord) -> Reference {
        Reference { seq: h.seq, hash: h.hash.clone(), what: "the last line the agent recorded writing".into() }
    }
}

/// Checks `files` (oldest first) as one log: every link, every checkpoint's place and (with
/// `key`) signature, and that the log holds each of `refs` (lines cut off the end, a changed
/// last line).
pub fn verify(files: &[PathBuf], key: Option<&PublicKey>, refs: &[Reference]) -> io::Result<Report> {
    let mut r = Report { files: files.to_vec(), ..Report::default() };
    // The line before: its number (None: it had no link) and hash.
    let mut before: Option<(Option<u64>, [u8; 32])> = None;
    let mut chained = false;
    // Per reference: None not seen, Some(matches).
    let mut found: Vec<Option<bool>> = vec![None; refs.len()];
    for path in files {
        // A line at a time: a log of any size in constant memory. The piece after the last
        // newline (empty for a whole file, else a line cut short) ends the loop.
        let mut reader = io::BufReader::with_capacity(1 << 16, fs::File::open(path)?);
        let mut buf = Vec::new();
        let mut whole_lines: u64 = 0;
        let tail: Vec<u8> = loop {
            buf.clear();
            if io::BufRead::read_until(&mut reader, b'\n', &mut buf)? == 0 {
                break Vec::new();
            }
            if buf.last() != Some(&b'\n') {
                break std::mem::take(&mut buf);
            }
            buf.pop();
            let line: &[u8] = &buf;
            whole_lines += 1;
            let number = whole_lines;
            let at = |what: String| Finding { file: path.clone(), line: number, what };
            r.lines += 1;
            let hash = line_hash(line);
            let value: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            let Some(link) = value.as_ref().and_then(link_in) else {
                if chained {
                    r.findings.push(at(
                        "no chain link: a line inserted or rewritten by something other than the agent".into(),
                    ));
                } else {
                    r.unchained += 1;
                }
                before = Some((None, hash));
                continue;
            };
            match (link.start, before) {
                (Some(start), _) => {
                    if link.seq != 0 || link.prev != hex(&GENESIS) {
                        r.findings.push(at(format!("a chain start ({}) that is not line 0", start.as_str())));
                    }
                    let first = r.lines == 1;
                    let after_unchained = matches!(before, Some((None, _)));
                    match start {
                        Start::New if first => {}
                        Start::Unchained if after_unchained || first => {}
                        Start::New | Start::Unchained => r.findings.push(at(format!(
                            "the chain starts again here ({}) after chained lines: lines were removed before it",
                            start.as_str()
                        ))),
                        Start::Incomplete => r.findings.push(at(
                            "the chain starts again here: the line before was cut short (a failed write or a truncation)".into(),
                        )),
                        Start::Truncated => r.findings.push(at(
                            "the chain starts again here: the agent found the log shorter than what it had written (lines removed while it was stopped)".into(),
                        )),
                        Start::Unvouched => r.findings.push(at(
                            "the chain starts again here: the agent found the log ending in lines it had not written last (changed or added while it was stopped, or a crash between a write and its record)".into(),
                        )),
                    }
                }
                (None, Some((prev_seq, prev_hash))) => {
                    if let Some(p) = prev_seq
                        && p.checked_add(1) != Some(link.seq)
                    {
                        r.findings.push(at(format!(
                            "line {} follows line {p}: lines were removed, inserted or reordered",
                            link.seq
                        )));
                    } else if link.prev != hex(&prev_hash) {
                        r.findings.push(at(format!(
                            "line {} does not follow the line before it: that line was changed, or lines were removed, inserted or reordered",
                            link.seq
                        )));
                    }
                }
                // The first line given is not a chain's first: older files were rotated away
                // or not given. What they said cannot be checked; what follows can.
                (None, None) => {}
            }
            chained = true;
            r.first_seq.get_or_insert(link.seq);
            r.last_seq = Some(link.seq);
            r.after_last_checkpoint += 1;
            if let Some(cp) = value.as_ref().and_then(checkpoint_in) {
                r.checkpoints += 1;
                r.log.get_or_insert_with(|| cp.log.clone());
                let names_before = before.is_some_and(|(s, h)| s == Some(cp.seq) && hex(&h) == cp.hash);
                if !names_before || cp.seq.checked_add(1) != Some(link.seq) {
                    r.findings.push(at(format!("checkpoint for line {} is not right after that line", cp.seq)));
                }
                match key {
                    Some(k) if cp.verifies(k) => r.signed += 1,
                    Some(k) => r.findings.push(at(format!(
                        "checkpoint for line {}: the signature does not verify with key {} (signed by {})",
                        cp.seq,
                        k.key_id(),
                        cp.key_id
                    ))),
                    None => {}
                }
                r.last_checkpoint = Some(cp.seq);
                r.after_last_checkpoint = 0;
            }
            for (f, k) in found.iter_mut().zip(refs) {
                if k.seq == link.seq {
                    *f = Some(f.unwrap_or(false) || hex(&hash) == k.hash);
                }
            }
            before = Some((Some(link.seq), hash));
        };
        if !tail.is_empty() {
            r.lines += 1;
            r.findings.push(Finding {
                file: path.clone(),
                line: whole_lines + 1,
                what: "the last line is cut short (no newline): the file was truncated or a write failed".into(),
            });
        }
    }
    // Anyone can compute a chain of hashes: only a signature, or the agent's own record, says
    // the agent wrote it.
    if r.lines > 0 && r.checkpoints == 0 && !found.contains(&Some(true)) {
        r.findings.push(Finding {
            file: PathBuf::new(),
            line: 0,
            what: "no signed checkpoint: nothing vouches that the agent wrote these lines (it signs one every checkpoint_interval, at rotation and at stop)".into(),
        });
    }
    let whole = |what: String| Finding { file: PathBuf::new(), line: 0, what };
    for (f, k) in found.iter().zip(refs) {
        match (f, r.last_seq) {
            (Some(true), _) => {}
            (Some(false), _) => r.findings.push(whole(format!("line {} differs from {}", k.seq, k.what))),
            (None, Some(last)) if k.seq > last => r.findings.push(whole(format!(
                "the log ends at line {last}, before line {} ({}): lines were cut off the end",
                k.seq, k.what
            ))),
            (None, None) => r.findings.push(whole(format!(
                "the log holds no linked line, but {} is line {}: it was emptied or replaced",
                k.what, k.seq
            ))),
            // Before the first file given: rotated away.
            _ => {}
        }
    }
    Ok(r)
}

/// The checkpoint a line carries (`fence.checkpoint` of a `log-checkpoint` line).
pub fn checkpoint_in(value: &serde_json::Value) -> Option<Checkpoint> {
    if value.pointer("/event/action")?.as_str()? != "log-checkpoint" {
        return None;
    }
    serde_json::from_value(value.pointer("/fence/checkpoint")?.clone()).ok()
}
