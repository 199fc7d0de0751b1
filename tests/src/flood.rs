//! The log pipeline under load and its promises: a looping workload cannot flood the log (the
//! kernel's rate limit, with summaries whose counts add up exactly), the agent stays
//! responsive with bounded memory, the metrics agree with the log, every line validates
//! against the published JSON Schema, and audit mode attributes exactly what enforce mode
//! would deny to the same rules.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary, read_jsonl},
    env::{TempDir, TestCgroup, mechanism, slow_factor, wait_for},
    harness::{Test, note},
    helper,
};

pub const TESTS: &[Test] = &[
    Test { name: "flood_rate_limit_summaries_add_up", run: flood_rate_limit_summaries_add_up },
    Test { name: "flood_audit_and_enforce_same_rules", run: audit_and_enforce_same_rules },
];

/// Every line of `path` validates against the event schema and ECS; returns the lines.
#[track_caller]
pub fn validated_lines(path: &Path) -> Vec<Value> {
    let lines = read_jsonl(path);
    lines.iter().for_each(crate::schema::check_event);
    lines
}

/// A free loopback port (bound and released; the agent binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /metrics from the agent.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the metrics");
    assert!(out.starts_with("HTTP/1.1 200"), "metrics answer: {out}");
    out
}

/// `promtool check metrics` accepts what a running agent serves, without a warning. The vm
/// tier's initramfs has no promtool: there the exposition is checked by the unit and host tiers.
fn promtool_accepts(response: &str) {
    use std::process::{Command, Stdio};
    if std::env::var("FENCE_TEST_TIER").is_ok_and(|t| t == "vm") {
        note("promtool is not in the vm image; the host tier checks the exposition");
        return;
    }
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool is needed ({e}); run `./x setup`, which installs Debian's prometheus"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
}

/// The value of the series `name{labels}` (labels as rendered, in order), or 0.
fn series(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn flood_rate_limit_summaries_add_up() {
    const STORM: u64 = 100_000;
    let cg = TestCgroup::new("flood");
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = denied.local_addr().unwrap().to_string();
    let port = free_port();
    let policy = format!(
        "schema: 1\nidentities:\n  - name: flood-bot\n    owner: fence-tests\n    purpose: flood test\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    );
    let config =
        format!("rate_limit = 50\nrate_burst = 100\nsummary_interval = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let agent = Agent::start_with("flood", &policy, &config);
    let rss_before = rss_kib(agent.pid().as_raw());

    let storm = std::thread::spawn({
        let cg_dir = cg.dir.clone();
        let to = to.clone();
        move || {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["helper", "--cgroup"])
                .arg(&cg_dir)
                .args(["connect-loop", &to, &STORM.to_string()])
                .output()
                .expect("the storm");
            serde_json::from_slice::<Value>(out.stdout.trim_ascii()).expect("storm report")
        }
    });
    // The agent answers on its control socket while the storm runs.
    let mut answered = 0;
    while !storm.is_finished() {
        let out = std::process::Command::new(agent_binary())
            .args(["identities", "--json", "--socket"])
            .arg(&agent.socket)
            .output()
            .expect("fence-agent identities");
        assert!(
            out.status.success(),
            "the agent did not answer during the storm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = storm.join().unwrap();
    assert_eq!(report["denied"], STORM, "every connect of the storm is denied: {report}");

    // Every attempt is either a line or counted in a summary, exactly.
    let count = |lines: &[Value]| -> (u64, u64, u64) {
        let mine = |l: &&Value| l["fence"]["identity"] == "flood-bot" && l["fence"]["operation"] == "connect";
        let written = lines.iter().filter(mine).filter(|l| l["event"]["action"] == "connect").count() as u64;
        let suppressed: u64 = lines
            .iter()
            .filter(mine)
            .filter(|l| l["event"]["action"] == "events-suppressed")
            .map(|l| l["fence"]["suppressed"].as_u64().unwrap_or(0))
            .sum();
        let summaries =
            lines.iter().filter(mine).filter(|l| l["event"]["action"] == "events-suppressed").count() as u64;
        (written, suppressed, summaries)
    };
    let settled = wait_for(Duration::from_secs(20 * u64::from(slow_factor())), || {
        let lines = read_jsonl(&agent.events);
        let (w, s, _) = count(&lines);
        (w + s == STORM).then_some(())
    });
    let lines = validated_lines(&agent.events);
    let (written, suppressed, summaries) = count(&lines);
    assert!(settled.is_some(), "written ({written}) + suppressed ({suppressed}) should be the {STORM} denied attempts");
    assert!(summaries >= 1 && suppressed > 0, "the storm must be summarised");
    assert!(written < STORM / 10, "the rate limit must keep most of the storm out of the log ({written} lines)");
    let dropped: Vec<&Value> = lines.iter().filter(|l| l["event"]["action"] == "events-dropped").collect();
    assert!(dropped.is_empty(), "nothing may be lost at this rate: {dropped:?}");
    let first = lines.iter().find(|l| l["event"]["action"] == "events-suppressed").unwrap();
    assert!(first["event"]["reason"].as_str().unwrap_or_default().contains("similar events suppressed"), "{first}");

    // The metrics agree with the log.
    let m = scrape(port);
    let labels = r#"{identity="flood-bot",operation="connect",verdict="denied"}"#;
    assert_eq!(series(&m, &format!("fence_events_total{labels}")), written, "events_total against the log:\n{m}");
    assert_eq!(series(&m, &format!("fence_events_suppressed_total{labels}")), suppressed, "suppressed against the log");
    assert_eq!(series(&m, r#"fence_events_dropped_total{cause="ring-buffer-full"}"#), 0);
    // The mechanism gauges are labelled with the events' own fence.mechanism values.
    let denial = lines.iter().find(|l| l["event"]["action"] == "connect").expect("a connect event");
    let mechanism = denial["fence"]["mechanism"].as_str().expect("fence.mechanism");
    let gauge = format!("fence_mechanism_active{{fence=\"egress\",mechanism=\"{mechanism}\"}}");
    assert_eq!(series(&m, &gauge), 1, "{gauge} (the events' fence.mechanism) in:\n{m}");
    assert!(series(&m, "fence_policy_applies_total") >= 1);
    promtool_accepts(&m);

    // Memory stays bounded: the storm does not grow the agent.
    let rss_after = rss_kib(agent.pid().as_raw());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the agent grew from {rss_before} KiB to {rss_after} KiB during the storm"
    );
    note(format!(
        "{STORM} denied connects: {written} lines, {suppressed} suppressed in {summaries} summaries; \
         agent answered {answered} times during the storm; RSS {rss_before} -> {rss_after} KiB"
    ));
}

/// The actions of the attribution test, each with what identifies its event.
fn run_actions(cg: &TestCgroup, dir: &TempDir, to: &str) -> Vec<(helper::Outcome, &'static str)> {
    let mut done = vec![(helper::run(Some(cg), &["tcp-connect", to]), "connect")];
    if mechanism("exec").is_some() {
        let denied = dir.path("denied-prog").display().to_string();
        done.push((helper::run(Some(cg), &["exec", &denied, "helper", "noop"]), "exec"));
    }
    if mechanism("credential-files").is_some() {
        let secret = dir.path("secret").display().to_string();
        done.push((helper::run(Some(cg), &["open", &secret]), "open"));
    }
    done
}

/// What an event says about why: the same in audit and enforce mode.
fn attribution(e: &Value) -> Value {
    serde_json::json!({
        "operation": e["fence"]["operation"],
        "rule": e["fence"]["rule"],
        "reason": e["fence"]["reason"],
        "mechanism_kind": e["fence"]["mechanism"].as_str().map(|m| m.split('/').next().unwrap_or_default().to_owned()),
        "target": e["fence"]["target"]["path"],
        "destination": e["destination"],
        "policy_rule_identity": e["fence"]["identity"],
    })
}

fn audit_and_enforce_same_rules() {
    let cg = TestCgroup::new("attribution");
    let dir = TempDir::new("attribution");
    let me = std::env::current_exe().unwrap();
    for name in ["allowed-prog", "denied-prog"] {
        fs::copy(&me, dir.path(name)).unwrap();
        fs::set_permissions(dir.path(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    fs::write(dir.path("secret"), "s3cr3t").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = denied.local_addr().unwrap().to_string();
    let allowed_port = free_port();
    let policy = |mode: &str| {
        format!(
            "schema: 1\nidentities:\n  - name: attr-bot\n    owner: fence-tests\n    purpose: attribution test\n    \
             mode: {mode}\n    selectors: [{{cgroup: \"{}\"}}]\n    egress:\n      - name: local-api\n        \
             to: [127.0.0.1]\n        ports: [{allowed_port}]\n        protocol: tcp\n    exec:\n      allow: [{:?}]\n",
            cg.rel,
            dir.path("allowed-prog").display().to_string()
        )
    };
    let config = format!("[protect]\ndefaults = false\npaths = [{:?}]\n", dir.path("secret").display().to_string());
    let mut per_mode = Vec::new();
    for mode in ["enforce", "audit"] {
        let agent = Agent::start_with(&format!("attribution-{mode}"), &policy(mode), &config);
        let outcomes = run_actions(&cg, &dir, &to);
        let mut attributions = Vec::new();
        for (o, op) in &outcomes {
            if mode == "enforce" {
                assert!(!o.ok(), "enforce mode denies the {op}: {}", o.raw);
            } else {
                // Audit allows: the connect reaches the (unfenced) listener, the exec runs, the
                // file opens.
                o.assert_ok(&format!("audit mode allows the {op}"));
            }
            let e = agent.wait_event(&format!("the {op} of pid {}", o.pid), |e| {
                e["process"]["pid"] == o.pid && e["fence"]["operation"] == *op
            });
            let verdict = e["fence"]["verdict"].as_str().unwrap_or_default().to_owned();
            match mode {
                "enforce" => assert!(verdict == "denied" || verdict == "killed", "{e}"),
                _ => assert_eq!(verdict, "would-deny", "{e}"),
            }
            attributions.push(attribution(&e));
        }
        validated_lines(&agent.events);
        per_mode.push(attributions);
    }
    assert_eq!(per_mode[0], per_mode[1], "audit mode must attribute the same actions to the same rules as enforce");
    note(format!("{} actions attributed alike in both modes", per_mode[0].len()));
}
