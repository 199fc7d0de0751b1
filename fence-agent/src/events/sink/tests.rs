//! The sinks' tests: appends, rotation, batching, the journal.

use std::os::unix::net::UnixDatagram;

use super::*;

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The file's text without the lines' links (the chain's own tests check those).
fn unlinked(text: String) -> String {
    text.lines().map(|l| crate::chain::unlinked(l) + "\n").collect()
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
    assert_eq!(unlinked(fs::read_to_string(&path).unwrap()), "{\"a\":1}\n{\"a\":2}\n");
    // The second writer went on with the first one's chain.
    let text = fs::read_to_string(&path).unwrap();
    let links: Vec<_> = text.lines().map(|l| crate::chain::link_of(l.as_bytes()).unwrap().seq).collect();
    assert_eq!(links, [0, 1]);
}

#[test]
fn rotates_by_size_and_keeps_the_newest_files() {
    let guard = temp_dir();
    let dir = guard.path().to_path_buf();
    let path = dir.join("events.jsonl");
    // An existing live file counts towards the limit.
    fs::write(&path, "{\"n\":-1}\n").unwrap();
    let mut s = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 320, keep: 3 }).unwrap();
    // Each line is about 102 bytes with its link and newline: 3 per file.
    for n in 0..14 {
        s.write_event(&format!("{{\"n\":{n:02}}}"), &FIELDS).unwrap();
    }
    // Lines wait for the writer's flush; rotation was decided line by line all the same.
    s.flush().unwrap();
    let read = |p: &Path| unlinked(fs::read_to_string(p).unwrap());
    assert_eq!(read(&path), "{\"n\":11}\n{\"n\":12}\n{\"n\":13}\n");
    assert_eq!(read(&rotated_path(&path, 1)), "{\"n\":08}\n{\"n\":09}\n{\"n\":10}\n");
    assert_eq!(read(&rotated_path(&path, 2)), "{\"n\":05}\n{\"n\":06}\n{\"n\":07}\n");
    assert_eq!(read(&rotated_path(&path, 3)), "{\"n\":02}\n{\"n\":03}\n{\"n\":04}\n");
    assert!(!rotated_path(&path, 4).exists(), "only `keep` rotated files are kept");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    // A line larger than max_bytes goes to a file of its own, whole.
    let big = format!("{{\"big\":\"{}\"}}", "x".repeat(400));
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
    let read = || unlinked(fs::read_to_string(&path).unwrap());
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
    let mut s = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 225, keep: 2 }).unwrap();
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

#[test]
fn a_chained_file_set_verifies_across_rotations_and_restarts_within_max_bytes() {
    use std::{sync::Arc, time::Duration};

    use crate::chain::{Checkpoint, Checkpoints, LogKind, PUBLIC_FILE, Signer, verify::verify};
    let guard = temp_dir();
    let dir = guard.path();
    let path = dir.join("events.jsonl");
    let rotation = Rotation { max_bytes: 4096, keep: 30 };
    let signer = Arc::new(Signer::open(dir).unwrap());
    let checkpoints = || Checkpoints {
        signer: signer.clone(),
        interval: Duration::from_secs(300),
        state_file: LogKind::Events.checkpoint_file(dir),
        log_file: path.clone(),
        host: "h".into(),
    };
    let pad = "x".repeat(100);
    for (from, to) in [(0, 100), (100, 130)] {
        let mut s = Sinks::open_rotating(false, Some(&path), rotation).unwrap();
        s.checkpoints(checkpoints());
        for n in from..to {
            s.write_event(&format!(r#"{{"n":{n},"pad":"{pad}"}}"#), &FIELDS).unwrap();
        }
        s.flush().unwrap();
        // Dropped: the stop checkpoint; the next one goes on with the chain.
    }
    let mut files: Vec<PathBuf> = (1..=30).rev().map(|n| rotated_path(&path, n)).filter(|p| p.exists()).collect();
    assert!(files.len() >= 5, "rotated {} times", files.len());
    files.push(path.clone());
    for f in &files {
        assert!(fs::metadata(f).unwrap().len() <= 4096, "{} is over max_bytes with its checkpoint", f.display());
    }
    let key = crate::vault::sign::PublicKey::parse(&fs::read_to_string(dir.join(PUBLIC_FILE)).unwrap()).unwrap();
    let kept: Checkpoint =
        serde_json::from_str(&fs::read_to_string(LogKind::Events.checkpoint_file(dir)).unwrap()).unwrap();
    let head = crate::chain::HeadRecord::read(&crate::chain::HeadRecord::path(LogKind::Events, dir)).unwrap().unwrap();
    let refs = [crate::chain::verify::Reference::kept(&kept), crate::chain::verify::Reference::head(&head)];
    let r = verify(&files, Some(&key), &refs).unwrap();
    assert!(r.intact(), "{:?}", r.findings);
    assert_eq!(r.lines - r.checkpoints, 130, "every event line, once");
    assert!(r.checkpoints as usize > files.len(), "a checkpoint per rotation and stop: {}", r.checkpoints);
    assert_eq!((r.signed, r.after_last_checkpoint, r.unchained), (r.checkpoints, 0, 0));
}

#[test]
fn each_sink_gets_the_lines_of_its_format_and_the_chain_covers_them_all() {
    use crate::config::EventFormat;
    let guard = temp_dir();
    let path = guard.path().join("events.jsonl");
    let lines = EventLines { ecs: "{\"ecs\":1,\"fence\":{}}", ocsf: Some("{\"ocsf\":1,\"unmapped\":{}}") };
    for (format, want) in
        [(EventFormat::Ecs, vec!["ecs"]), (EventFormat::Ocsf, vec!["ocsf"]), (EventFormat::Both, vec!["ecs", "ocsf"])]
    {
        let s = Sinks::open(false, Some(&path)).unwrap().formats(EventFormat::Ecs, format);
        assert_eq!(s.wants_ocsf(), format.ocsf(), "{format:?}: stdout is off, the file decides");
        let mut s = s;
        let before = fs::read_to_string(&path).unwrap_or_default().lines().count();
        s.write_lines(lines, &FIELDS).unwrap();
        s.flush().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let got: Vec<String> = text
            .lines()
            .skip(before)
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone()
            })
            .collect();
        assert_eq!(got, want, "{format:?}");
    }
    // Every line, ECS or OCSF, is linked to the one before (`fence.chain`, `unmapped.chain`).
    let text = fs::read_to_string(&path).unwrap();
    let seqs: Vec<u64> = text.lines().map(|l| crate::chain::link_of(l.as_bytes()).unwrap().seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    let r = crate::chain::verify::verify(std::slice::from_ref(&path), None, &[]).unwrap();
    assert_eq!((r.lines, r.unchained), (4, 0));
    assert!(r.findings.iter().all(|f| f.what.starts_with("no signed checkpoint")), "{:?}", r.findings);
    // With no sink wanting OCSF, the writer makes no OCSF line; a missing one is left out.
    let both = Sinks::open(true, None).unwrap().formats(EventFormat::Ecs, EventFormat::Both);
    assert!(!both.wants_ocsf(), "no file: its format does not count");
    let only_ecs = EventLines { ecs: "{}", ocsf: None };
    assert_eq!(only_ecs.for_format(EventFormat::Both).collect::<Vec<_>>(), ["{}"]);
}
