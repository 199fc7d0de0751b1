//! Identities: `fence-agent exec`, units followed across restarts, descendants, expiry, the
//! lifecycle audit log, `fence-agent identities`, and no way out of a fence.

use std::{fs, net::TcpListener, process::Command, time::Duration};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, mechanism, slow_factor, wait_for},
    harness::{Test, skip},
    helper::{self, Outcome},
};

pub const TESTS: &[Test] = &[
    Test { name: "identity_exec_fenced_from_first_instruction", run: exec_fenced_from_first_instruction },
    Test { name: "identity_exec_never_runs_unfenced", run: exec_never_runs_unfenced },
    Test { name: "identity_unit_restart_is_fenced_again", run: unit_restart_is_fenced_again },
    Test { name: "identity_child_cgroup_made_by_fenced_process", run: child_cgroup_made_by_fenced_process },
    Test { name: "identity_expires_while_running", run: expires_while_running },
    Test { name: "identity_lifecycle_audit_log", run: lifecycle_audit_log },
    Test { name: "identity_listing", run: listing },
    Test { name: "identity_cgroup_namespace_hides_nothing", run: cgroup_namespace_hides_nothing },
    Test { name: "identity_no_way_out_as_root", run: no_way_out_as_root },
];

fn tcp4() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("loopback listener")
}

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

fn identity(name: &str, selectors: &str, extra: &str, egress_port: u16) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: identity tests\n{extra}    selectors:\n{selectors}    egress:\n      - to: [127.0.0.1]\n        ports: [{egress_port}]\n        protocol: tcp\n"
    )
}

fn policy(identities: &[String]) -> String {
    format!("schema: 1\nidentities:\n{}", identities.concat())
}

/// Runs `fence-agent exec` with `args` after `--`; returns (exit code, stdout).
fn fence_exec(agent: &Agent, identity: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(agent_binary())
        .args(["exec", "--socket"])
        .arg(&agent.socket)
        .args(["--identity", identity, "--"])
        .args(args)
        .output()
        .expect("running fence-agent exec");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn me() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn outcome(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("helper output {stdout:?}: {e}"))
}

fn exec_fenced_from_first_instruction() {
    let (allowed, denied) = (tcp4(), tcp4());
    let agent = Agent::start("exec-id", &policy(&[identity("runner", "      - managed: true\n", "", port(&allowed))]));
    let me = me();
    // The very first thing the program does is connect.
    let (code, out, err) =
        fence_exec(&agent, "runner", &[&me, "helper", "tcp-connect", &format!("127.0.0.1:{}", port(&denied))]);
    assert_eq!(code, Some(0), "{err}");
    let r = outcome(&out);
    assert_eq!(r["errno"], libc::EPERM, "the program's first connect must be denied: {r} {err}");
    let pid = r["pid"].as_u64().unwrap();
    let e = agent.wait_event("for the exec'd program's connect", |e| e["process"]["pid"] == pid);
    assert_eq!(e["fence"]["identity"], "runner");
    assert!(e["fence"]["cgroup"]["path"].as_str().unwrap().ends_with("/fence-managed/runner"), "{e:#}");
    let (_, out, err) =
        fence_exec(&agent, "runner", &[&me, "helper", "tcp-connect", &format!("127.0.0.1:{}", port(&allowed))]);
    assert_eq!(outcome(&out)["ok"], true, "the allowed port works through exec: {out} {err}");
    // The managed cgroup is removed (as when the unit holding it restarts) and the next exec
    // comes at once: it runs in a cgroup made again, bound and with the programs attached to
    // it before the command starts, never unfenced.
    let path = e["fence"]["cgroup"]["path"].as_str().unwrap().to_owned();
    let dir = fence_agent::cgroup::Cgroups::discover().unwrap().dir(&path);
    let old_id = fence_agent::cgroup::id_of(&dir).unwrap();
    std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
    let (code, out, err) =
        fence_exec(&agent, "runner", &[&me, "helper", "tcp-connect", &format!("127.0.0.1:{}", port(&denied))]);
    assert_eq!(code, Some(0), "{err}");
    let r = outcome(&out);
    assert_eq!(r["errno"], libc::EPERM, "first connect in the cgroup made again: {r} {err}");
    let pid = r["pid"].as_u64().unwrap();
    let e = agent.wait_event("for the connect in the cgroup made again", |e| e["process"]["pid"] == pid);
    assert_ne!(e["fence"]["cgroup"]["id"], old_id, "a new cgroup: {e:#}");
}

fn exec_never_runs_unfenced() {
    let dir = TempDir::new("exec-refusals");
    let marker = dir.path("ran");
    let touch = format!("touch {}", marker.display());
    let run = |agent: &Agent, identity: &str| fence_exec(agent, identity, &["/bin/sh", "-c", &touch]);
    let cg = TestCgroup::new("exec-refusals");
    let agent = Agent::start(
        "exec-refusals",
        &policy(&[
            identity("managed-one", "      - managed: true\n", "", 9),
            identity("plain", &format!("      - cgroup: {}\n", cg.rel), "", 9),
        ]),
    );
    for (identity, why) in [("no-such-identity", "no identity"), ("plain", "has no `managed: true` selector")] {
        let (code, _, err) = run(&agent, identity);
        assert_eq!(code, Some(125), "exit status for {identity}: {err}");
        assert!(err.contains(why), "the reason for {identity}: {err}");
        assert!(!marker.exists(), "the command ran for {identity}");
    }
    // A fenced process cannot hop to another identity.
    let hop = Command::new(me())
        .args(["helper", "--cgroup"])
        .arg(&cg.dir)
        .args(["exec", &agent_binary().display().to_string(), "exec", "--socket"])
        .arg(&agent.socket)
        .args(["--identity", "managed-one", "--", "/bin/sh", "-c", &touch])
        .output()
        .unwrap();
    assert_eq!(hop.status.code(), Some(125), "{}", String::from_utf8_lossy(&hop.stderr));
    assert!(!marker.exists(), "a fenced process changed identity");
    // No agent at all.
    let socket = agent.socket.clone();
    drop(agent);
    let out = Command::new(agent_binary())
        .args(["exec", "--socket"])
        .arg(&socket)
        .args(["--identity", "managed-one", "--", "/bin/sh", "-c", &touch])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!marker.exists(), "the command ran without an agent");
}

fn unit_restart_is_fenced_again() {
    let (allowed, denied) = (tcp4(), tcp4());
    let pid = std::process::id();
    // A unit that runs now, found in the tree; and one that is not running at start, placed
    // by its slice.
    let slice = TestCgroup::at(&format!("/fencetest{pid}.slice"));
    let running = format!("fence-unit-{pid}.service");
    let late = format!("fence-late-{pid}.service");
    let unit_cg = slice.child(&running);
    let selectors = format!("      - unit: {running}\n      - unit: {late}\n        slice: fencetest{pid}.slice\n");
    let agent = Agent::start("units", &policy(&[identity("unit-bot", &selectors, "", port(&allowed))]));
    let to = format!("127.0.0.1:{}", port(&denied));
    helper::run(Some(&unit_cg), &["tcp-connect", &to]).assert_eperm("the running unit's cgroup is fenced");
    // Restart: the cgroup goes and comes back (a new cgroup id), and a process starts at once.
    for round in 0..3 {
        let old_id = unit_cg.id();
        fs::remove_dir(&unit_cg.dir).expect("removing the unit's cgroup");
        fs::create_dir(&unit_cg.dir).expect("re-creating the unit's cgroup");
        assert_ne!(unit_cg.id(), old_id, "a new cgroup");
        let o = helper::run(Some(&unit_cg), &["tcp-connect", &to]);
        o.assert_eperm(&format!("the restarted unit's first process (round {round})"));
        let e = agent.wait_event("for the restarted unit's denial", |e| e["process"]["pid"] == o.pid);
        assert_eq!(e["fence"]["cgroup"]["id"], unit_cg.id(), "{e:#}");
        assert_eq!(e["fence"]["identity"], "unit-bot");
    }
    let late_cg = slice.child(&late);
    helper::run(Some(&late_cg), &["tcp-connect", &to]).assert_eperm("a unit started after the agent");
    helper::run(Some(&late_cg), &["tcp-connect", &format!("127.0.0.1:{}", port(&allowed))])
        .assert_ok("its allowed port");
    // The slice itself goes and comes back (a new cgroup id), the policy unchanged: the
    // programs attached at the old slice and the kernel's scope follow it, so a unit started
    // in the new slice is fenced once the agent has seen it (inotify, then an apply).
    let old_slice = slice.id();
    for dir in [&late_cg.dir, &unit_cg.dir, &slice.dir] {
        fs::remove_dir(dir).expect("removing the slice and its units' cgroups");
    }
    fs::create_dir(&slice.dir).expect("re-creating the slice");
    assert_ne!(slice.id(), old_slice, "a new slice cgroup");
    fs::create_dir(&late_cg.dir).expect("starting the late unit in the new slice");
    let fenced = wait_for(Duration::from_secs(10 * u64::from(slow_factor())), || {
        let o = helper::run(Some(&late_cg), &["tcp-connect", &to]);
        (o.errno == Some(libc::EPERM)).then_some(o)
    });
    let o = fenced.expect("the unit in the re-created slice is fenced again (without a SIGHUP)");
    let e = agent.wait_event("for the denial in the new slice", |e| e["process"]["pid"] == o.pid);
    assert_eq!(e["fence"]["identity"], "unit-bot", "{e:#}");
    helper::run(Some(&late_cg), &["tcp-connect", &format!("127.0.0.1:{}", port(&allowed))])
        .assert_ok("its allowed port, in the new slice");
}

fn child_cgroup_made_by_fenced_process() {
    let (allowed, denied) = (tcp4(), tcp4());
    let cg = TestCgroup::new("fenced-mkdir");
    let agent = Agent::start(
        "fenced-mkdir",
        &policy(&[identity("bot", &format!("      - cgroup: {}\n", cg.rel), "", port(&allowed))]),
    );
    let sub = cg.dir.join("made-by-the-workload");
    let o = helper::run(
        Some(&cg),
        &[
            "mkdir",
            &sub.display().to_string(),
            "then",
            "move-to",
            &sub.display().to_string(),
            "then",
            "tcp-connect",
            &format!("127.0.0.1:{}", port(&denied)),
        ],
    );
    o.assert_eperm("a process in a cgroup it created below its fenced cgroup");
    assert_eq!(o.raw["step"], 2, "the mkdir and the move worked; the connect was denied: {}", o.raw);
    let e = agent.wait_event("for the denial", |e| e["process"]["pid"] == o.pid);
    let sub_id = fence_agent::cgroup::id_of(&sub).expect("the workload's cgroup");
    assert_eq!(e["fence"]["cgroup"]["id"], sub_id, "{e:#}");
    assert_eq!(e["fence"]["identity"], "bot");
    let _ = fs::remove_dir(&sub);
}

fn expires_while_running() {
    let allowed = tcp4();
    let cg = TestCgroup::new("expiring");
    let policy_expiring = |secs: i64| {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
        policy(&[identity(
            "short-lived",
            &format!("      - cgroup: {}\n", cg.rel),
            &format!("    expires: {expires}\n"),
            port(&allowed),
        )])
    };
    // The agent starts with an expiry far away (its start takes as long as the machine makes
    // it); the short one comes by reload, which is quick, so "before expiry" is before it.
    let agent = Agent::start("expiring", &policy_expiring(3600));
    // Long enough for the reload to apply before the expiry (else the audit line's trigger is
    // the reload, not the expiry), with a margin for a busy machine.
    let window = 3 * i64::from(slow_factor());
    fs::write(&agent.policy, policy_expiring(window)).expect("writing the policy");
    let reloaded = std::time::Instant::now();
    agent.reload();
    let to = format!("127.0.0.1:{}", port(&allowed));
    let before = helper::run(Some(&cg), &["tcp-connect", &to]);
    assert!(
        before.ok() || reloaded.elapsed() >= Duration::from_secs(window as u64),
        "before expiry: expected success, got {}",
        before.raw
    );
    let denied = wait_for(Duration::from_secs(20 * u64::from(slow_factor())), || {
        let o = helper::run(Some(&cg), &["tcp-connect", &to]);
        (o.errno == Some(libc::EPERM)).then_some(o)
    })
    .expect("the identity must become deny-all once it expires");
    let e = agent.wait_event("for the expired identity's denial", |e| e["process"]["pid"] == denied.pid);
    assert_eq!(e["fence"]["rule"], "identity-expired");
    wait_for(Duration::from_secs(5), || {
        agent
            .audit_lines()
            .iter()
            .any(|r| r["event"]["action"] == "identity-expired" && r["fence"]["trigger"]["kind"] == "expiry")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no expiry in the audit log: {:#?}", agent.audit_lines()));
}

fn lifecycle_audit_log() {
    let cg_a = TestCgroup::new("audit-a");
    let cg_b = TestCgroup::new("audit-b");
    let a = |port| identity("alpha", &format!("      - cgroup: {}\n", cg_a.rel), "", port);
    let b = identity("beta", &format!("      - cgroup: {}\n", cg_b.rel), "", 9);
    let agent = Agent::start("audit", &policy(&[a(80), b.clone()]));
    let records = wait_for(Duration::from_secs(5), || {
        let r = agent.audit_lines();
        (r.len() >= 2).then_some(r)
    })
    .expect("creation records");
    let action = |r: &Value| {
        (r["event"]["action"].as_str().unwrap().to_owned(), r["fence"]["identity"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        records.iter().map(action).collect::<Vec<_>>(),
        vec![("identity-created".into(), "alpha".into()), ("identity-created".into(), "beta".into())]
    );
    assert_eq!(records[0]["fence"]["trigger"]["kind"], "startup");
    let v1 = records[0]["fence"]["new_policy_version"].as_str().unwrap().to_owned();
    // Change alpha, remove beta, add gamma.
    let cg_c = TestCgroup::new("audit-c");
    let c = identity("gamma", &format!("      - cgroup: {}\n", cg_c.rel), "", 9);
    fs::write(&agent.policy, policy(&[a(443), c])).unwrap();
    agent.reload();
    let records = wait_for(Duration::from_secs(5), || {
        let r = agent.audit_lines();
        (r.len() >= 5).then_some(r)
    })
    .expect("change records");
    let later: Vec<(String, String)> = records[2..].iter().map(action).collect();
    assert!(later.contains(&("identity-changed".into(), "alpha".into())), "{later:?}");
    assert!(later.contains(&("identity-created".into(), "gamma".into())), "{later:?}");
    assert!(later.contains(&("identity-removed".into(), "beta".into())), "{later:?}");
    let changed = records.iter().find(|r| r["event"]["action"] == "identity-changed").unwrap();
    assert_eq!(changed["fence"]["old_policy_version"], v1);
    assert_ne!(changed["fence"]["new_policy_version"], v1);
    assert_eq!(changed["fence"]["trigger"]["kind"], "reload");
    assert_eq!(changed["fence"]["trigger"]["by"]["pid"], std::process::id(), "the SIGHUP's sender: {changed:#}");
    assert_eq!(changed["fence"]["owner"], "fence-tests");
    assert!(changed["fence"]["source"]["file"].as_str().unwrap().ends_with("policy.yaml"));
    // Kept apart from the denial events.
    assert!(agent.events().iter().all(|e| e["event"]["dataset"] != "fence.audit"));
}

fn listing() {
    let cg = TestCgroup::new("listing");
    let agent = Agent::start(
        "listing",
        &policy(&[identity(
            "listed",
            &format!("      - cgroup: {}\n      - managed: true\n", cg.rel),
            "    expires: 2099-01-01\n",
            9,
        )]),
    );
    // A process living in the cgroup while we look, with a credential planted in its
    // environment.
    let planted = "planted-secret-value-4242";
    let mut sleeper = Command::new(me())
        .args(["helper", "--cgroup"])
        .arg(&cg.dir)
        .args(["sleep", "5"])
        .env("AWS_SECRET_ACCESS_KEY", planted)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || (crate::env::procs_in(&cg) > 0).then_some(()))
        .expect("the sleeper in its cgroup");
    let out =
        Command::new(agent_binary()).args(["identities", "--json", "--socket"]).arg(&agent.socket).output().unwrap();
    // `--check-env`: the variable's name and why, never its value; exit 3 when any is found.
    let env = Command::new(agent_binary())
        .args(["identities", "--check-env", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let env_text = String::from_utf8_lossy(&env.stdout);
    assert_eq!(env.status.code(), Some(3), "{env_text}{}", String::from_utf8_lossy(&env.stderr));
    assert!(env_text.contains("AWS_SECRET_ACCESS_KEY (known-name)") && env_text.contains("listed"), "{env_text}");
    assert!(!env_text.contains(planted) && !String::from_utf8_lossy(&env.stderr).contains(planted), "{env_text}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let i = &list[0];
    assert_eq!(i["name"], "listed");
    assert_eq!(i["mode"], "enforce");
    assert_eq!(i["processes"], 1, "{i:#}");
    assert!(i["policy_version"].as_str().unwrap().starts_with("sha256:"));
    assert!(i["expires"].as_str().unwrap().starts_with("2099-01-01"));
    assert_eq!(i["selectors"][0]["kind"], "cgroup");
    assert_eq!(i["selectors"][0]["cgroup"], cg.rel);
    assert_eq!(i["selectors"][0]["cgroup_id"], cg.id());
    assert_eq!(i["selectors"][1]["kind"], "managed");
    // Structured values, not display strings.
    assert_eq!(i["standing"]["file_exceptions"], 0, "{i:#}");
    assert_eq!(i["standing"]["egress"].as_array().map(Vec::len), Some(1), "{i:#}");
    assert!(i["exec_programs"].is_null() && i["standing"]["unix_allow"].is_null(), "{i:#}");
    assert_eq!(i["granted"], serde_json::json!([]), "{i:#}");
    let text = Command::new(agent_binary()).args(["identities", "--socket"]).arg(&agent.socket).output().unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("listed  [enforce]"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

fn cgroup_namespace_hides_nothing() {
    let denied = tcp4();
    let cg = TestCgroup::new("cgroupns");
    let agent = Agent::start("cgroupns", &policy(&[identity("bot", &format!("      - cgroup: {}\n", cg.rel), "", 9)]));
    let o =
        helper::run(Some(&cg), &["unshare-cgroupns", "then", "tcp-connect", &format!("127.0.0.1:{}", port(&denied))]);
    o.assert_eperm("still fenced inside a new cgroup namespace");
    assert_eq!(o.raw["step"], 1, "unshare worked, the connect was denied: {}", o.raw);
    agent.wait_event("for the denial", |e| e["process"]["pid"] == o.pid);
}

fn no_way_out_as_root() {
    if mechanism("no-way-out").is_none() {
        skip("leaving a fence as root is only prevented with BPF LSM, which this kernel refuses (see doctor)");
    }
    let denied = tcp4();
    let cg = TestCgroup::new("no-way-out");
    let outside = TestCgroup::new("outside");
    let agent =
        Agent::start("no-way-out", &policy(&[identity("jailed", &format!("      - cgroup: {}\n", cg.rel), "", 9)]));
    let to = format!("127.0.0.1:{}", port(&denied));
    let root_cgroup = crate::env::cgroup_root().display().to_string();
    for (what, target) in [("a sibling cgroup", outside.dir.display().to_string()), ("the root cgroup", root_cgroup)] {
        let o = helper::run(Some(&cg), &["move-to", &target, "then", "tcp-connect", &to]);
        o.assert_eperm(&format!("writing its pid into {what}'s cgroup.procs"));
        assert_eq!(o.raw["step"], 0, "the move itself must fail: {}", o.raw);
        let e = escape_event(&agent, &o, "cgroup-migrate");
        assert_eq!(e["fence"]["reason"], "leave-fence");
    }
    // Still fenced afterwards, and moving within its own subtree is fine.
    let sub = cg.child("inner");
    let o = helper::run(Some(&cg), &["move-to", &sub.dir.display().to_string(), "then", "tcp-connect", &to]);
    assert_eq!(
        (o.raw["step"].as_u64(), o.errno),
        (Some(1), Some(libc::EPERM)),
        "a move within the identity works, the connect stays denied: {}",
        o.raw
    );
    let o = helper::run(Some(&cg), &["clone-into-cgroup", &outside.dir.display().to_string()]);
    o.assert_eperm("clone3(CLONE_INTO_CGROUP) into another cgroup");
    escape_event(&agent, &o, "clone-into-cgroup");
    let agent_pid = agent.pid().as_raw().to_string();
    let o = helper::run(Some(&cg), &["kill", &agent_pid, "19"]);
    o.assert_eperm("SIGSTOP to the agent");
    assert_eq!(escape_event(&agent, &o, "signal")["fence"]["target"]["pid"], agent.pid().as_raw());
    helper::run(Some(&cg), &["ptrace-attach", &agent_pid]).assert_eperm("ptrace of the agent");
    helper::run(Some(&cg), &["bpf"]).assert_eperm("bpf(2)");
    helper::run(None, &["bpf"]).assert_ok("unfenced bpf(2)");
    assert!(agent.stderr_text().contains("fence is enforcing"), "the agent survived");
}

fn escape_event(agent: &Agent, o: &Outcome, op: &str) -> Value {
    let e = agent.wait_event(&format!("for the {op} attempt"), |e| {
        e["process"]["pid"] == o.pid && e["fence"]["operation"] == op
    });
    assert_eq!(e["fence"]["verdict"], "denied", "{e:#}");
    e
}
