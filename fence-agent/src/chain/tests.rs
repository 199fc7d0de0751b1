use std::{fs, path::PathBuf, sync::Arc, time::Duration};

use super::{
    verify::{Reference, verify},
    *,
};
use crate::{audit::AuditLog, events::sink::rotated_path, vault::sign::PublicKey};

/// A log written the way the writers do: lines sealed, a checkpoint line every `every` lines
/// (and kept), in `files` rotated by hand.
struct Writer {
    chain: Chain,
    dir: tempfile::TempDir,
}

fn record(n: u64) -> String {
    format!(
        r#"{{"@timestamp":"2026-11-30T10:00:00Z","message":"m{n}","event":{{"action":"connect"}},"fence":{{"identity":"ci","n":{n}}}}}"#
    )
}

impl Writer {
    fn new() -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer { chain: Chain::resume(LogKind::Events, &[]), dir };
        w.with_chain(|c, dir| c.with_checkpoints(checkpoints(dir)))
    }

    fn with_chain(mut self, f: impl FnOnce(Chain, &Path) -> Chain) -> Writer {
        let chain = std::mem::replace(&mut self.chain, Chain::resume(LogKind::Events, &[]));
        self.chain = f(chain, self.dir.path());
        self
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    fn append(&mut self, json: &str) {
        let mut out = Vec::new();
        self.chain.seal(json, &mut out);
        let mut f = fs::OpenOptions::new().append(true).create(true).open(self.log()).unwrap();
        io::Write::write_all(&mut f, &out).unwrap();
        self.chain.written();
        self.chain.record_head();
    }

    fn lines(&mut self, from: u64, to: u64) {
        for n in from..to {
            self.append(&record(n));
        }
    }

    fn checkpoint(&mut self, reason: &str) {
        let json = self.chain.checkpoint(reason, Timestamp::now()).expect("a checkpoint");
        self.append(&json);
        self.chain.keep(reason);
    }

    fn rotate(&mut self) {
        self.checkpoint("rotation");
        fs::rename(self.log(), rotated_path(&self.log(), 1)).unwrap();
    }

    fn key(&self) -> PublicKey {
        PublicKey::parse(&fs::read_to_string(self.dir.path().join(PUBLIC_FILE)).unwrap()).unwrap()
    }

    fn kept(&self) -> Checkpoint {
        serde_json::from_str(&fs::read_to_string(LogKind::Events.checkpoint_file(self.dir.path())).unwrap()).unwrap()
    }

    fn check(&self, files: &[PathBuf]) -> verify::Report {
        let head = HeadRecord::read(&HeadRecord::path(LogKind::Events, self.dir.path())).unwrap().unwrap();
        verify(files, Some(&self.key()), &[Reference::kept(&self.kept()), Reference::head(&head)]).unwrap()
    }

    /// Rewrites the live file through `f` over its lines.
    fn edit(&self, f: impl FnOnce(&mut Vec<String>)) {
        let text = fs::read_to_string(self.log()).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        f(&mut lines);
        fs::write(self.log(), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }
}

fn checkpoints(dir: &Path) -> Checkpoints {
    Checkpoints {
        signer: Arc::new(Signer::open(dir).unwrap()),
        interval: Duration::from_secs(300),
        state_file: LogKind::Events.checkpoint_file(dir),
        log_file: dir.join("events.jsonl"),
        host: "h".into(),
    }
}

fn what(r: &verify::Report) -> String {
    r.findings.iter().map(|f| format!("{}: {}", f.line, f.what)).collect::<Vec<_>>().join("; ")
}

/// A whole log: 10 lines, a checkpoint, 5 lines, a checkpoint.
fn written() -> Writer {
    let mut w = Writer::new();
    w.lines(0, 10);
    w.checkpoint("interval");
    w.lines(10, 15);
    w.checkpoint("stop");
    w
}

#[test]
fn a_sealed_line_is_the_same_json_with_its_link_under_fence() {
    let mut chain = Chain::resume(LogKind::Events, &[]);
    let mut out = Vec::new();
    chain.seal(&record(1), &mut out);
    chain.seal(&record(2), &mut out);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["fence"]["identity"], "ci", "the record's own fields stay");
    assert_eq!(first["fence"]["chain"], serde_json::json!({"seq": 0, "prev": hex(&GENESIS), "start": "new"}));
    let second = link_of(lines[1].as_bytes()).unwrap();
    assert_eq!(second, Link { seq: 1, prev: hex(&line_hash(lines[0].as_bytes())), start: None });
    // A line whose last member is not an object gets the link at the top.
    let mut out = Vec::new();
    chain.seal(r#"{"a":1}"#, &mut out);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["chain"]["seq"], 2);
    let mut out = Vec::new();
    chain.seal(r#"{"fence":{}}"#, &mut out);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["fence"]["chain"]["seq"], 3, "an empty last object: {}", String::from_utf8_lossy(&out));
}

#[test]
fn every_line_kind_the_agent_writes_gets_its_link_under_fence() {
    // Where the link goes depends on `fence` being the line's last member (a line kind that
    // moved it would get its link at the top, where the schemas do not allow it). Grant and
    // secret audit lines are Head, event, fence like the identity lines.
    let mut w = Writer::new();
    w.lines(0, 1);
    let checkpoint = w.chain.checkpoint("interval", Timestamp::now()).unwrap();
    let set = crate::policy::PolicySet { identities: vec![crate::compile::tests::identity("a", vec![])] };
    let audit = crate::audit::changes(None, &set, &crate::audit::Trigger::new("startup"), "h", Timestamp::now());
    let crate::cmd::logs::Line::Event(event) =
        crate::cmd::logs::fixtures::line(&crate::cmd::logs::fixtures::denied_connect())
    else {
        panic!("not an event")
    };
    let now = Timestamp::now();
    let summary = crate::events::summary::dropped_record(now, "h", "ring-buffer-full", 3, Duration::from_secs(10));
    let lines = [
        checkpoint,
        serde_json::to_string(&audit[0]).unwrap(),
        serde_json::to_string(&*event).unwrap(),
        serde_json::to_string(&summary).unwrap(),
    ];
    for json in lines {
        let mut out = Vec::new();
        w.chain.seal(&json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("chain").is_none() && v["fence"]["chain"]["seq"].is_u64(), "{}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn an_untouched_log_verifies_across_rotations_and_restarts() {
    let mut w = written();
    w.rotate();
    // A restart: the chain is read back from the files.
    w = w.with_chain(|_, dir| {
        Chain::resume(LogKind::Events, &[dir.join("events.jsonl"), rotated_path(&dir.join("events.jsonl"), 1)])
            .with_checkpoints(checkpoints(dir))
    });
    w.lines(15, 20);
    w.checkpoint("stop");
    let files = [rotated_path(&w.log(), 1), w.log()];
    let r = w.check(&files);
    assert!(r.intact(), "{}", what(&r));
    assert_eq!((r.first_seq, r.last_seq, r.checkpoints, r.signed), (Some(0), Some(23), 4, 4));
    assert_eq!(r.after_last_checkpoint, 0);
    // The set in the order a shell glob gives: sorted oldest first.
    let mut globbed = vec![w.log(), rotated_path(&w.log(), 1)];
    verify::oldest_first(&mut globbed);
    assert_eq!(globbed, files);
    // Only the live file (the older one rotated away): what is there still checks out.
    let r = w.check(&files[1..]);
    assert!(r.intact(), "{}", what(&r));
}

#[test]
fn a_changed_line_is_found_at_the_line_after_it() {
    let w = written();
    w.edit(|l| l[4] = l[4].replace("\"m4\"", "\"m4 (edited)\""));
    let r = w.check(&[w.log()]);
    assert_eq!(r.findings.len(), 1, "{}", what(&r));
    assert_eq!(r.findings[0].line, 6);
    assert!(r.findings[0].what.contains("does not follow the line before it"), "{}", what(&r));
}

#[test]
fn removed_inserted_and_reordered_lines_are_found() {
    let w = written();
    let original = fs::read_to_string(w.log()).unwrap();
    type Edit = fn(&mut Vec<String>);
    let cases: [(&str, Edit); 4] = [
        ("removed", |l| {
            l.remove(3);
        }),
        ("reordered", |l| l.swap(2, 3)),
        ("inserted", |l| l.insert(5, record(99))),
        ("a copy of another line", |l| {
            let copy = l[2].clone();
            l.insert(3, copy);
        }),
    ];
    for (case, f) in cases {
        fs::write(w.log(), &original).unwrap();
        w.edit(f);
        let r = w.check(&[w.log()]);
        assert!(!r.intact(), "{case}: not found");
        assert!((3..=7).contains(&r.findings[0].line), "{case}: {}", what(&r));
    }
}

#[test]
fn the_end_of_the_log_is_vouched_for_by_the_kept_checkpoint() {
    let w = written();
    let original = fs::read_to_string(w.log()).unwrap();
    // The last line (the stop checkpoint) changed: its own checkpoint is kept outside.
    w.edit(|l| {
        let last = l.len() - 1;
        l[last] = l[last].replace("log checkpoint", "log checkpoint!");
    });
    let r = w.check(&[w.log()]);
    assert!(what(&r).contains("differs from the newest checkpoint"), "{}", what(&r));
    // Whole lines cut off the end, the checkpoint line with them.
    fs::write(w.log(), &original).unwrap();
    w.edit(|l| l.truncate(8));
    let r = w.check(&[w.log()]);
    assert!(what(&r).contains("lines were cut off the end"), "{}", what(&r));
    // Cut in the middle of a line.
    fs::write(w.log(), &original.as_bytes()[..original.len() - 30]).unwrap();
    let r = w.check(&[w.log()]);
    assert!(what(&r).contains("cut short"), "{}", what(&r));
    // An empty file.
    fs::write(w.log(), "").unwrap();
    let r = w.check(&[w.log()]);
    assert!(what(&r).contains("holds no linked line"), "{}", what(&r));
}

#[test]
fn a_chain_without_a_signed_checkpoint_is_not_vouched_for() {
    // What anyone could write: linked lines, no signature.
    let mut w = Writer::new();
    w.lines(0, 5);
    let r = verify(&[w.log()], Some(&w.key()), &[]).unwrap();
    assert!(what(&r).contains("no signed checkpoint"), "{}", what(&r));
    w.checkpoint("interval");
    assert!(verify(&[w.log()], Some(&w.key()), &[]).unwrap().intact());
}

#[test]
fn checkpoints_signed_by_another_key_or_altered_do_not_verify() {
    let w = written();
    let other = tempfile::tempdir().unwrap();
    Signer::open(other.path()).unwrap();
    let other_key = PublicKey::parse(&fs::read_to_string(other.path().join(PUBLIC_FILE)).unwrap()).unwrap();
    let r = verify(&[w.log()], Some(&other_key), &[]).unwrap();
    assert_eq!(r.signed, 0);
    assert!(what(&r).contains("does not verify"), "{}", what(&r));
    // A checkpoint moved to vouch for another line: its signature no longer matches.
    let mut cp = w.kept();
    cp.seq -= 1;
    assert!(!cp.verifies(&w.key()));
}

#[test]
fn a_restarted_writer_goes_on_and_a_log_cut_while_it_was_stopped_is_marked() {
    let mut w = written();
    let log = w.log();
    let resumed =
        |dir: &Path| Chain::resume(LogKind::Events, &[dir.join("events.jsonl")]).with_checkpoints(checkpoints(dir));
    // Goes on where it stopped.
    w = w.with_chain(|_, dir| resumed(dir));
    assert_eq!(w.chain.next_seq(), 17);
    // Lines cut off while it was stopped: a new chain, marked, and verify says so.
    w.edit(|l| l.truncate(12));
    w = w.with_chain(|_, dir| resumed(dir));
    assert_eq!(w.chain.next_seq(), 0);
    w.lines(100, 102);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.lines().nth(12).unwrap().contains(r#""start":"truncated""#), "{text}");
    w.checkpoint("stop");
    let r = w.check(std::slice::from_ref(&log));
    assert!(what(&r).contains("shorter than what it had written"), "{}", what(&r));

    // Linked lines forged onto the end while it was stopped (anyone can compute the links):
    // it does not adopt them, and verify says so.
    let mut w = written();
    let mut forger = Chain::resume(LogKind::Events, &[w.log()]);
    let mut forged = Vec::new();
    forger.seal(&record(666), &mut forged);
    fs::OpenOptions::new().append(true).open(w.log()).and_then(|mut f| io::Write::write_all(&mut f, &forged)).unwrap();
    w = w.with_chain(|_, dir| resumed(dir));
    assert_eq!(w.chain.next_seq(), 0, "a new chain");
    w.lines(0, 1);
    let text = fs::read_to_string(w.log()).unwrap();
    assert!(text.lines().last().unwrap().contains(r#""start":"unvouched""#), "{text}");
    w.checkpoint("stop");
    assert!(what(&w.check(&[w.log()])).contains("had not written last"));

    // A crash in the middle of a write: the last line cut short, never recorded as written.
    // The next line starts on a line of its own, in a new chain marked incomplete.
    let mut w = written();
    fs::OpenOptions::new()
        .append(true)
        .open(w.log())
        .and_then(|mut f| io::Write::write_all(&mut f, b"{\"n\":"))
        .unwrap();
    w = w.with_chain(|_, dir| resumed(dir));
    w.lines(0, 1);
    let text = fs::read_to_string(w.log()).unwrap();
    assert!(text.lines().last().unwrap().contains(r#""start":"incomplete""#), "{text}");
    // Deleting the record does not help: the kept checkpoint is the reference then.
    let mut w = written();
    w.edit(|l| l.truncate(12));
    fs::remove_file(HeadRecord::path(LogKind::Events, w.dir.path())).unwrap();
    w = w.with_chain(|_, dir| resumed(dir));
    assert_eq!(w.chain.next_seq(), 0, "a new chain: the log ends before the kept checkpoint");
}

#[test]
fn a_log_of_lines_without_links_or_signatures_is_not_vouched_for() {
    let w = written();
    let kept = Reference::kept(&w.kept());
    // Replaced by unlinked lines.
    fs::write(w.log(), format!("{}\n{}\n", record(1), record(2))).unwrap();
    let r = verify(&[w.log()], Some(&w.key()), std::slice::from_ref(&kept)).unwrap();
    assert!(what(&r).contains("no signed checkpoint") && what(&r).contains("holds no linked line"), "{}", what(&r));
    let r = verify(&[w.log()], Some(&w.key()), &[]).unwrap();
    assert!(what(&r).contains("no signed checkpoint"), "{}", what(&r));
    // A line number that would overflow is a finding, not a crash.
    let big = format!(r#"{{"fence":{{"chain":{{"seq":{},"prev":"{}"}}}}}}"#, u64::MAX, hex(&GENESIS));
    fs::write(w.log(), format!("{big}\n{}\n", big.replace("\"seq\":18446744073709551615", "\"seq\":0"))).unwrap();
    assert!(!verify(&[w.log()], Some(&w.key()), &[]).unwrap().intact());
}

#[test]
fn the_audit_log_is_chained_and_checkpointed_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let kept = LogKind::Audit.checkpoint_file(dir.path());
    let cps = || Checkpoints {
        signer: Arc::new(Signer::open(dir.path()).unwrap()),
        interval: Duration::from_secs(300),
        state_file: kept.clone(),
        log_file: path.clone(),
        host: "h".into(),
    };
    for round in 0..2 {
        let mut log = AuditLog::open(&path).unwrap();
        log.checkpoints(cps());
        let set = crate::policy::PolicySet {
            identities: vec![crate::compile::tests::identity(&format!("a{round}"), vec![])],
        };
        let records = crate::audit::changes(None, &set, &crate::audit::Trigger::new("startup"), "h", Timestamp::now());
        log.write(&records).unwrap();
        assert!(log.until_checkpoint().is_some(), "a line waits for a checkpoint");
        // Dropped: the stop checkpoint.
    }
    let key = PublicKey::parse(&fs::read_to_string(dir.path().join(PUBLIC_FILE)).unwrap()).unwrap();
    let kept: Checkpoint = serde_json::from_str(&fs::read_to_string(&kept).unwrap()).unwrap();
    let r = verify(std::slice::from_ref(&path), Some(&key), &[Reference::kept(&kept)]).unwrap();
    assert!(r.intact(), "{}", what(&r));
    assert_eq!((r.lines, r.checkpoints, r.log.as_deref()), (4, 2, Some("audit")));
    // The append-only file system flag aside (tmpfs), a rewritten line is found.
    let text = fs::read_to_string(&path).unwrap().replacen("a0", "b0", 1);
    let _ = crate::audit::append_only_flag(&fs::File::open(&path).unwrap(), false);
    fs::write(&path, text).unwrap();
    assert!(!verify(&[path], Some(&key), &[Reference::kept(&kept)]).unwrap().intact());
}

#[test]
fn checkpoint_and_linked_lines_follow_the_schemas_and_ecs() {
    let validator = |schema: &str| jsonschema::validator_for(&serde_json::from_str(schema).unwrap()).unwrap();
    let events = validator(include_str!("../../schema/event.schema.json"));
    let audit = validator(include_str!("../../schema/audit.schema.json"));
    let check = |v: &jsonschema::Validator, line: &str| {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:?}\n{line}");
        assert!(crate::events::record::fields_not_in_ecs(&value).is_empty(), "{line}");
        assert!(crate::events::record::types_not_expected(&value).is_empty(), "{line}");
    };
    // The event file's checkpoint lines (its events with links: the record tests).
    let w = written();
    let text = fs::read_to_string(w.log()).unwrap();
    let checkpoints: Vec<&str> = text.lines().filter(|l| l.contains("log-checkpoint")).collect();
    assert_eq!(checkpoints.len(), 2);
    for line in checkpoints {
        check(&events, line);
    }
    // The audit log's lines, its checkpoint included.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    {
        let mut log = AuditLog::open(&path).unwrap();
        log.checkpoints(Checkpoints {
            signer: Arc::new(Signer::open(dir.path()).unwrap()),
            interval: Duration::from_secs(300),
            state_file: LogKind::Audit.checkpoint_file(dir.path()),
            log_file: path.clone(),
            host: "h".into(),
        });
        let set = crate::policy::PolicySet { identities: vec![crate::compile::tests::identity("a", vec![])] };
        log.write(&crate::audit::changes(None, &set, &crate::audit::Trigger::new("startup"), "h", Timestamp::now()))
            .unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    for line in text.lines() {
        check(&audit, line);
    }
}

#[test]
fn the_schemas_know_every_start_of_a_chain() {
    let all = [Start::New, Start::Unchained, Start::Incomplete, Start::Truncated, Start::Unvouched];
    let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    for file in ["event.schema.json", "audit.schema.json"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema").join(file);
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut found = Vec::new();
        find_start_enums(&schema, &mut found);
        assert!(!found.is_empty(), "{file}: no chain start enum");
        for e in found {
            assert_eq!(e, names, "{file}");
        }
    }
}

/// Every `"start": {"enum": [...]}` in a schema.
fn find_start_enums(v: &serde_json::Value, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(list) = m.get("start").and_then(|s| s["enum"].as_array()) {
                out.push(list.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
            }
            m.values().for_each(|x| find_start_enums(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_start_enums(x, out)),
        _ => {}
    }
}
