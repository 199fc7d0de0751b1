//! The event file as ops teams read it: rotated by size while `fence-agent logs -f` follows it
//! (every line once, in order), `fence-agent logs` filters on a real agent's file, and a file
//! written in OCSF too (`file_format = "both"`) or only (`"ocsf"`) is read, verified or refused.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, slow_factor, wait_for},
    harness::{Test, note},
    helper,
};

pub const TESTS: &[Test] = &[
    Test { name: "logs_follow_through_rotation", run: follow_through_rotation },
    Test { name: "logs_filters_on_a_real_file", run: filters_on_a_real_file },
    Test { name: "logs_ocsf_file_formats", run: ocsf_file_formats },
];

fn identity(name: &str, mode: &str, cg: &TestCgroup) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: logs test\n    mode: {mode}\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    )
}

/// `<file>.N` … `<file>.1`, then `<file>`: the order the sink wrote them in.
fn chain(file: &Path) -> Vec<PathBuf> {
    let mut numbers: Vec<u32> = (1..=10_000).take_while(|n| rotated(file, *n).exists()).collect();
    numbers.reverse();
    let mut files: Vec<PathBuf> = numbers.into_iter().map(|n| rotated(file, n)).collect();
    files.push(file.to_owned());
    files
}

fn rotated(file: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", file.display()))
}

fn chain_lines(file: &Path) -> Vec<String> {
    chain(file)
        .iter()
        .flat_map(|f| fs::read_to_string(f).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn logs(args: &[&str]) -> Output {
    Command::new(agent_binary()).arg("logs").args(args).output().expect("running fence-agent logs")
}

/// The stdout lines of a `logs` run that must succeed.
#[track_caller]
fn logs_ok(args: &[&str]) -> Vec<String> {
    let out = logs(args);
    assert!(out.status.success(), "logs {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

struct Follower(Option<Child>);

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // Our own child, by pid.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

fn follow_through_rotation() {
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = denied.local_addr().unwrap().to_string();
    let cg = TestCgroup::new("logs-follow");
    let policy = format!("schema: 1\nidentities:\n{}", identity("logs-follow", "enforce", &cg));
    // About 1 KiB per event: a rotation every 6 or so (room is kept for the rotation's signed
    // checkpoint), and room for ~1,200 in 200 files.
    let mut agent = Agent::start_with("logs-follow", &policy, "max_bytes = 8192\nkeep = 200\nrate_limit = 0\n");
    let dir = TempDir::new("logs-follow-out");
    let out_path = dir.path("follower.out");
    let err_path = dir.path("follower.err");
    // The whole history (-n large), so that nothing depends on when the follower started.
    let mut follower = Follower(Some(
        Command::new(agent_binary())
            .args(["logs", "-f", "-n", "1000000", "--json", "--file"])
            .arg(&agent.events)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("starting fence-agent logs -f"),
    ));

    let probe = helper::run(Some(&cg), &["probe-connect", &to, "1.2"]);
    let n = probe.raw["denied"].as_u64().unwrap();
    assert!(n >= 100 / u64::from(slow_factor()), "too few denied connects to rotate through: {}", probe.raw);
    assert_eq!(probe.raw["succeeded"], 0, "{}", probe.raw);
    let pid = u64::from(probe.pid);
    let slow = u64::from(slow_factor());
    let of_probe = |lines: &[String]| parse(lines).iter().filter(|e| e["process"]["pid"] == pid).count() as u64;
    let all = wait_for(Duration::from_secs(20 * slow), || {
        let lines = chain_lines(&agent.events);
        (of_probe(&lines) >= n).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "the files do not hold all {n} denials: {} found\n{}",
            of_probe(&chain_lines(&agent.events)),
            agent.stderr_text()
        )
    });
    assert_eq!(of_probe(&all), n, "one event per denied connect (rate_limit = 0)");
    // The files' signed checkpoints (one per rotation) are not events: `logs` leaves them out.
    let checkpoints = all.iter().filter(|l| l.contains(r#""action":"log-checkpoint""#)).count();
    let all: Vec<String> = all.into_iter().filter(|l| !l.contains(r#""action":"log-checkpoint""#)).collect();
    let rotations = chain(&agent.events).len() - 1;
    assert!(rotations >= 3, "only {rotations} rotations");
    assert!(rotations < 200, "{rotations} rotations: the oldest may have been removed; lower the load");
    for f in chain(&agent.events) {
        assert!(fs::metadata(&f).unwrap().len() <= 8192, "{} is larger than max_bytes", f.display());
    }
    let read_out = || fs::read_to_string(&out_path).unwrap_or_default();
    wait_for(Duration::from_secs(10 * slow), || (read_out().lines().count() >= all.len()).then_some(()));
    let child = follower.0.as_mut().unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_for(Duration::from_secs(5 * slow), || child.try_wait().ok().flatten())
        .expect("logs -f did not end on SIGTERM");
    follower.0 = None;
    assert!(status.success(), "logs -f ended with {status}: {}", fs::read_to_string(&err_path).unwrap_or_default());
    let got: Vec<String> = read_out().lines().map(str::to_owned).collect();
    if got != all {
        let first = got.iter().zip(&all).position(|(a, b)| a != b).unwrap_or(got.len().min(all.len()));
        panic!(
            "logs -f printed {} lines, the files hold {}; first difference at line {first}:\n got: {:?}\nwant: {:?}\nstderr: {}",
            got.len(),
            all.len(),
            got.get(first),
            all.get(first),
            fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    // Without -f: the same, oldest first; -n: the last ones.
    let file = agent.events.display().to_string();
    assert_eq!(logs_ok(&["--json", "--file", &file]), all);
    assert_eq!(logs_ok(&["--json", "-n", "5", "--file", &file]), all[all.len() - 5..]);
    assert!(checkpoints >= rotations, "{checkpoints} checkpoints for {rotations} rotations");
    note(format!("{n} denials through {rotations} rotations, every line once and in order"));
    verify_tampering(&mut agent);
}

/// Tamper evidence on the files the agent wrote: the rotated set and the audit log verify as
/// the agent left them; a copy with one line changed (a single space), removed, or moved, or
/// with its end cut off, does not, and the report names where.
fn verify_tampering(agent: &mut Agent) {
    agent.stop();
    let state = agent.config.parent().unwrap().join("state");
    let verify = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(agent_binary()).arg("logs").arg("verify").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = verify(&["-c".as_ref(), agent.config.as_os_str()]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("OK: intact").count(), 2, "the event files and the audit log: {text}");
    assert!(text.contains("vouches for line") && !text.contains("not yet signed"), "{text}");

    let files = chain(&agent.events);
    let originals: Vec<String> = files.iter().map(|f| fs::read_to_string(f).unwrap()).collect();
    let copy = TempDir::new("logs-verify-copy");
    let copies: Vec<PathBuf> = files.iter().map(|f| copy.path(f.file_name().unwrap().to_str().unwrap())).collect();
    let key = state.join("log-signing.pub");
    let kept = state.join("events-checkpoint.json");
    let check = |what: &str, which: usize, edit: &dyn Fn(&mut Vec<String>)| {
        for (i, (c, o)) in copies.iter().zip(&originals).enumerate() {
            let mut lines: Vec<String> = o.lines().map(str::to_owned).collect();
            if i == which {
                edit(&mut lines);
            }
            fs::write(c, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        }
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--key".as_ref(), key.as_os_str(), "--checkpoint".as_ref(), kept.as_os_str()];
        // In the order a shell glob gives them.
        let mut globbed = copies.clone();
        globbed.sort();
        args.extend(globbed.iter().map(|c| c.as_os_str()));
        let (code, text) = verify(&args);
        if what == "untouched" {
            assert_eq!(code, Some(0), "{what}: {text}");
        } else {
            assert_eq!(code, Some(1), "{what} was not found: {text}");
            assert!(text.contains("BROKEN"), "{what}: {text}");
        }
        text
    };
    check("untouched", 0, &|_| {});
    let middle = files.len() / 2;
    let name = copies[middle].display().to_string();
    let text = check("a changed line", middle, &|l| l[2] = l[2].replacen(':', ": ", 1));
    assert!(text.contains(&format!("{name} line 4")), "names the line after the changed one: {text}");
    check("a removed line", middle, &|l| {
        l.remove(2);
    });
    check("two lines swapped", middle, &|l| l.swap(1, 2));
    let last = files.len() - 1;
    let text = check("the end cut off", last, &|l| l.truncate(l.len().saturating_sub(2)));
    assert!(text.contains("cut off the end") || text.contains("differs"), "{text}");
    note(format!("logs verify: {} files intact; a changed, removed or moved line and a cut end found", files.len()));
}

/// A listener to connect to, and two identities, `<prefix>-enforced` (cgroup `<prefix>-a`) and
/// `<prefix>-audited` (`<prefix>-b`), that may not.
struct TwoIdentities {
    _listener: TcpListener,
    to: String,
    a: TestCgroup,
    b: TestCgroup,
    policy: String,
}

fn enforced_and_audited(prefix: &str) -> TwoIdentities {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let (a, b) = (TestCgroup::new(&format!("{prefix}-a")), TestCgroup::new(&format!("{prefix}-b")));
    let policy = format!(
        "schema: 1\nidentities:\n{}{}",
        identity(&format!("{prefix}-enforced"), "enforce", &a),
        identity(&format!("{prefix}-audited"), "audit", &b)
    );
    TwoIdentities { _listener: listener, to, a, b, policy }
}

fn filters_on_a_real_file() {
    let TwoIdentities { to, a, b, policy, _listener } = enforced_and_audited("logs");
    let agent = Agent::start_with("logs-filters", &policy, "rate_limit = 0\n");
    helper::run(Some(&a), &["tcp-connect", &to]).assert_eperm("enforced connect");
    helper::run(Some(&a), &["socket", "inet", "raw"]).assert_eperm("enforced raw socket");
    helper::run(Some(&b), &["tcp-connect", &to]).assert_ok("audited connect");
    agent.wait_event("the audited connect", |e| e["fence"]["identity"] == "logs-audited");
    agent.wait_event("the raw socket", |e| e["fence"]["operation"] == "socket");
    let events = agent.events();
    assert_eq!(events.len(), 3, "{events:#?}");

    // A copy with what the pipeline also writes: summaries, and a line that is not JSON.
    let dir = TempDir::new("logs-filters-out");
    let copy = dir.path("events.jsonl");
    let mut text = fs::read_to_string(&agent.events).unwrap();
    text.push_str(concat!(
        r#"{"@timestamp":"2030-01-01T00:00:00Z","ecs":{"version":"8.11.0"},"event":{"kind":"metric","#,
        r#""category":["network"],"type":["info"],"action":"events-suppressed","outcome":"unknown","#,
        r#""module":"fence","dataset":"fence.enforcement","reason":"1234 similar events suppressed"},"#,
        r#""host":{"hostname":"h"},"fence":{"schema_version":1,"identity":"logs-enforced","operation":"connect","#,
        r#""verdict":"denied","suppressed":1234,"interval_seconds":10.0}}"#,
        "\n",
        "this line is not JSON\n",
        r#"{"@timestamp":"2030-01-01T00:00:01Z","ecs":{"version":"8.11.0"},"event":{"kind":"metric","#,
        r#""category":["host"],"type":["info"],"action":"events-dropped","outcome":"failure","module":"fence","#,
        r#""dataset":"fence.enforcement","reason":"5 events lost: ring-buffer-full"},"host":{"hostname":"h"},"#,
        r#""fence":{"schema_version":1,"dropped":{"count":5,"cause":"ring-buffer-full"},"interval_seconds":10.0}}"#,
        "\n"
    ));
    fs::write(&copy, text).unwrap();
    let file = copy.display().to_string();
    let count = |args: &[&str]| {
        let mut all = vec!["--json", "--file", &file];
        all.extend_from_slice(args);
        parse(&logs_ok(&all))
    };
    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{}/{}/{}",
                    e["fence"]["identity"].as_str().unwrap_or("-"),
                    e["fence"]["verdict"].as_str().or(e["event"]["action"].as_str()).unwrap_or("-"),
                    e["fence"]["operation"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    assert_eq!(count(&[]).len(), 5);
    assert_eq!(
        names(&count(&["--identity", "logs-enforced"])),
        ["logs-enforced/denied/connect", "logs-enforced/denied/socket", "logs-enforced/denied/connect"]
    );
    assert_eq!(count(&["--identity", "logs-enforced", "--identity", "logs-audited"]).len(), 4);
    assert_eq!(names(&count(&["--operation", "socket"])), ["logs-enforced/denied/socket"]);
    assert_eq!(names(&count(&["--verdict", "would-deny"])), ["logs-audited/would-deny/connect"]);
    assert_eq!(count(&["--verdict", "denied"]).len(), 3, "the two denials and their suppression summary");
    assert_eq!(count(&["--verdict", "suppressed"])[0]["fence"]["suppressed"], 1234);
    assert_eq!(count(&["--verdict", "dropped"])[0]["fence"]["dropped"]["count"], 5);
    assert_eq!(
        names(&count(&["--identity", "logs-enforced", "--operation", "connect", "--verdict", "denied"])),
        ["logs-enforced/denied/connect", "logs-enforced/denied/connect"]
    );
    // --since: a time after this test's events selects only the summaries (dated 2030); on the
    // agent's own file, a time to come selects nothing and an hour back everything.
    assert_eq!(count(&["--since", "2029-12-31T23:59:59Z"]).len(), 2);
    assert_eq!(count(&["--since", "2031-01-01T00:00:00Z"]).len(), 0);
    let live = agent.events.display().to_string();
    assert!(logs_ok(&["--json", "--file", &live, "--since", "2099-01-01T00:00:00Z"]).is_empty());
    assert_eq!(logs_ok(&["--json", "--file", &live, "--since", "1h"]).len(), 3);
    assert_eq!(logs_ok(&["--json", "--file", &live, "--since", "10m", "--identity", "logs-audited"]).len(), 1);

    // The skipped line is counted once, on stderr.
    let out = logs(&["--file", &file]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 line(s) were not JSON"), "{stderr}");
    // Readable lines.
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].contains(" denied ")
            && lines[0].contains("logs-enforced")
            && lines[0].contains(&format!("-> {to}/tcp")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("rule=default-deny (cgroup/connect"), "{}", lines[0]);
    assert!(lines[1].contains("socket") && lines[1].contains("-> ipv4 icmp socket"), "{}", lines[1]);
    assert!(lines[2].contains("would-deny") && lines[2].contains("logs-audited"), "{}", lines[2]);
    assert!(lines[3].ends_with("logs-enforced: 1234 similar denied events suppressed"), "{}", lines[3]);
    assert!(lines[4].ends_with("dropped    5 events dropped (ring-buffer-full)"), "{}", lines[4]);
    assert!(!text.contains('\x1b'), "no colours when stdout is not a terminal");

    // Bad values are refused, listing the valid ones.
    for (args, valid) in [
        (["--verdict", "deny"], "would-deny"),
        (["--operation", "connect4"], "unix-connect"),
        (["--since", "yesterday"], "RFC 3339"),
    ] {
        let out = logs(&[args[0], args[1], "--file", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[1]) && stderr.contains(valid), "{args:?}: {stderr}");
    }
    // A missing file names it.
    let missing = dir.path("nothing.jsonl").display().to_string();
    let out = logs(&["--file", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing), "{}", String::from_utf8_lossy(&out.stderr));
    // `| head`: the reader going away ends it quietly.
    let mut head = Command::new(agent_binary())
        .args(["logs", "--file", &file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(head.stdout.take());
    let out = head.wait_with_output().unwrap();
    assert!(out.status.success(), "{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// The lines of the agent's event file once `n` are there.
fn wait_lines(agent: &Agent, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(10 * u64::from(slow_factor())), || {
        let lines = crate::agent::read_jsonl(&agent.events);
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|| panic!("fewer than {n} lines in the event file:\n{}", agent.stderr_text()))
}

/// `file_format = "both"`: each event as its ECS line, then its OCSF line, both valid, both
/// chained (`logs verify` passes); `logs` shows each event once. `file_format = "ocsf"`:
/// OCSF lines only, and `logs` refuses the file, saying what to set.
fn ocsf_file_formats() {
    let TwoIdentities { to, a, b, policy, _listener } = enforced_and_audited("ocsf");
    let mut agent =
        Agent::start_with("logs-ocsf-both", &policy, "rate_limit = 0\nformat = \"ecs\"\nfile_format = \"both\"\n");
    helper::run(Some(&a), &["tcp-connect", &to]).assert_eperm("enforced connect");
    wait_lines(&agent, 2);
    helper::run(Some(&b), &["tcp-connect", &to]).assert_ok("audited connect");
    let lines = wait_lines(&agent, 4);
    assert_eq!(lines.len(), 4, "two events, two lines each: {lines:#?}");
    for pair in lines.chunks(2) {
        crate::schema::check_event(&pair[0]);
        assert!(fence_agent::events::ocsf::is_ocsf(&pair[1]), "ECS, then OCSF: {pair:#?}");
        assert!(pair[1]["unmapped"]["chain"]["prev"].is_string(), "the OCSF line is chained: {}", pair[1]);
    }
    crate::schema::check_ocsf_pairs(&lines, 0);
    let (denied, would) = (&lines[1], &lines[3]);
    assert_eq!(
        (denied["class_uid"].as_u64(), denied["unmapped"]["identity"].as_str()),
        (Some(4001), Some("ocsf-enforced"))
    );
    assert_eq!((denied["action_id"].as_u64(), denied["disposition_id"].as_u64()), (Some(2), Some(2)), "blocked");
    assert_eq!(
        (would["action_id"].as_u64(), would["disposition_id"].as_u64()),
        (Some(1), Some(15)),
        "would-deny is detected, not blocked"
    );
    // The stdout of this agent is ECS only (format = "ecs").
    let out = crate::agent::read_jsonl(&agent.stdout);
    assert!(!out.is_empty() && out.iter().all(|l| !fence_agent::events::ocsf::is_ocsf(l)), "{out:#?}");
    // `logs` reads the ECS lines and skips the OCSF ones without a word.
    let file = agent.events.display().to_string();
    let out = logs(&["--json", "--file", &file]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = parse(&String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>());
    assert_eq!(shown, [lines[0].clone(), lines[2].clone()]);
    agent.stop();
    let out = Command::new(agent_binary()).args(["logs", "verify", "-c"]).arg(&agent.config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.matches("OK: intact").count(), 2, "the event file (ECS and OCSF lines) and the audit log: {text}");

    let agent =
        Agent::start_with("logs-ocsf-only", &policy, "rate_limit = 0\nformat = \"ecs\"\nfile_format = \"ocsf\"\n");
    helper::run(Some(&a), &["tcp-connect", &to]).assert_eperm("enforced connect");
    let lines = wait_lines(&agent, 1);
    assert!(lines.iter().all(fence_agent::events::ocsf::is_ocsf), "{lines:#?}");
    lines.iter().for_each(crate::schema::check_ocsf);
    let out = logs(&["--file", &agent.events.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("file_format = \"ecs\" or \"both\""), "{stderr}");
    note(
        "file_format both: ECS + OCSF lines, chained and verified, logs shows each event once; ocsf alone: logs refuses",
    );
}
