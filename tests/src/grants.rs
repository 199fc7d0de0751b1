//! Just-in-time grants, end to end: the real agent, a fenced workload running the real
//! `fence-agent grant request` from inside its cgroup, the kernel refusing before the grant,
//! allowing during it and refusing after its end, with the agent alive and killed, connections
//! torn down at a revocation, and every step in the audit log. Each test starts one agent (the
//! second restarts it once) and checks several things with it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, slow_factor, test_tier, wait_for},
    harness::Test,
    helper::{self, Outcome},
    kernel_fences::{Programs, assert_exec_denied, exec, exec_mechanism, file_mechanism, open, s},
    persist::Pins,
};

pub const TESTS: &[Test] = &[
    Test { name: "grants_egress_requested_expired_revoked_refused", run: egress_requested_expired_revoked_refused },
    Test { name: "grants_exec_and_file_and_agent_killed", run: exec_and_file_and_agent_killed },
];

pub(crate) fn slow() -> u64 {
    u64::from(slow_factor().max(1))
}

fn connect(cg: &TestCgroup, addr: &str) -> Outcome {
    helper::run(Some(cg), &["tcp-connect", addr])
}

/// What `fence-agent grant ...` run inside `cg` (or on the host) printed, and its exit code.
pub(crate) struct Cli {
    pub(crate) code: i32,
    pub(crate) out: String,
    pub(crate) err: String,
}

impl Cli {
    /// The grant of a `--json` answer.
    pub(crate) fn grant(&self) -> Value {
        let v: Value =
            serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("grant JSON ({e}): {}\n{}", self.out, self.err));
        v.as_array().and_then(|a| a.last().cloned()).unwrap_or_else(|| panic!("no grant in {}", self.out))
    }
}

/// Runs `fence-agent grant ARGS` inside `cg` (moved there before exec, as a workload would
/// run it), or unfenced.
pub(crate) fn grant_cli(agent: &Agent, cg: Option<&TestCgroup>, args: &[&str]) -> Cli {
    let admin = matches!(args.first(), Some(&("approve" | "deny" | "revoke")));
    let socket = if admin { &agent.socket } else { &agent.workload };
    let mut full: Vec<String> = vec!["grant".into()];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    full.extend(["--socket".into(), socket.display().to_string()]);
    let mut cmd = match cg {
        Some(cg) => {
            let mut c = Command::new(std::env::current_exe().expect("current_exe"));
            c.args(["helper", "--cgroup", &s(&cg.dir), "exec", &s(&agent_binary())]);
            c
        }
        None => Command::new(agent_binary()),
    };
    let out = cmd.args(&full).output().expect("running fence-agent grant");
    Cli {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The grant lifecycle actions of the audit log for grant `id`.
pub(crate) fn audited(agent: &Agent, id: &str) -> Vec<String> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|l| l["fence"]["grant"]["id"] == id)
        .filter_map(|l| l["event"]["action"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `f` holds (within `secs` scaled by the slow factor).
#[track_caller]
pub(crate) fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    if wait_for(Duration::from_secs(secs * slow()), || f().then_some(())).is_none() {
        panic!("{what}: did not happen in time");
    }
}

fn identity(name: &str, cg: &TestCgroup, body: &str) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: just-in-time grants\n    mode: enforce\n    \
         selectors: [{{cgroup: \"{}\"}}]\n{body}",
        cg.rel
    )
}

fn egress_requested_expired_revoked_refused() {
    let db = TcpListener::bind("127.0.0.40:0").expect("listener");
    let port = db.local_addr().unwrap().port();
    let ops = TcpListener::bind(("127.0.0.42", port)).expect("listener");
    let _standing = TcpListener::bind(("127.0.0.41", port)).expect("listener");
    let (cg, other) = (TestCgroup::new("grant-a"), TestCgroup::new("grant-b"));
    let body = format!(
        "    egress:\n      - to: [127.0.0.41]\n        ports: [{port}]\n        protocol: tcp\n    grants:\n      \
         - name: db\n        egress: [{{to: [127.0.0.40], ports: [{port}], protocol: tcp}}]\n        max_ttl: 1h\n        \
         approval: auto\n      - name: ops\n        egress: [{{to: [127.0.0.42], ports: [{port}], protocol: tcp}}]\n"
    );
    let policy =
        format!("schema: 1\nidentities:\n{}{}", identity("grant-a", &cg, &body), identity("grant-b", &other, ""));
    let agent = Agent::start("grants-egress", &policy);
    let db_addr = format!("127.0.0.40:{port}");
    let ops_addr = format!("127.0.0.42:{port}");

    // Without a grant the target is denied, with an event.
    let o = connect(&cg, &db_addr);
    o.assert_eperm("the grantable target before any grant");
    agent.wait_event("for the connect before the grant", |e| e["process"]["pid"] == o.pid);

    // The workload asks for itself; `auto` is in force at once.
    let ttl = 4 * slow();
    let r = grant_cli(
        &agent,
        Some(&cg),
        &["request", "db", "--for", &format!("{ttl}s"), "--reason", "schema migration", "--json"],
    );
    assert_eq!(r.code, 0, "grant request: {}{}", r.out, r.err);
    let g = r.grant();
    let id = g["id"].as_str().expect("id").to_owned();
    assert_eq!(g["phase"]["state"], "active", "{g:#}");
    assert_eq!(g["identity"], "grant-a", "the identity comes from the kernel: {g:#}");
    assert!(g["requester"]["cgroup"].as_str().is_some_and(|c| c.ends_with(cg.rel.trim_start_matches('/'))), "{g:#}");
    connect(&cg, &db_addr).assert_ok("the granted target");
    connect(&other, &db_addr).assert_eperm("another identity gets nothing from the grant");
    let listed = grant_cli(&agent, None, &["list", "--json"]);
    let uses = serde_json::from_str::<Value>(&listed.out).expect("list JSON")[0]["uses"].as_u64();
    assert!(uses.is_some_and(|u| u >= 1), "the kernel counts uses: {}", listed.out);
    // `identities --json`: the grant in force and the grantable target as values.
    let out =
        Command::new(agent_binary()).args(["identities", "--json", "--socket"]).arg(&agent.socket).output().unwrap();
    let ids: Value = serde_json::from_slice(&out.stdout).expect("identities JSON");
    let a = ids.as_array().unwrap().iter().find(|i| i["name"] == "grant-a").expect("grant-a listed");
    assert_eq!(a["granted"][0]["id"], id.as_str(), "{a:#}");
    assert_eq!(a["granted"][0]["target"], "db", "{a:#}");
    assert!(a["granted"][0]["seconds_left"].as_u64().is_some_and(|s| s <= ttl), "{a:#}");
    assert_eq!(a["grantable"][0]["name"], "db", "{a:#}");
    assert_eq!(a["grantable"][0]["approval"], "auto", "{a:#}");

    // The kernel ends it on time; the audit log has the whole life.
    eventually("the grant's end", ttl + 10, || connect(&cg, &db_addr).errno == Some(libc::EPERM));
    eventually("the expired line", 10, || audited(&agent, &id).contains(&"grant-expired".to_owned()));
    assert_eq!(audited(&agent, &id), ["grant-requested", "grant-active", "grant-expired"]);
    connect(&cg, &format!("127.0.0.41:{port}")).assert_ok("the standing rule, throughout");

    // Refusals: another identity, a ttl over the max, an unknown target; nothing granted.
    let r = grant_cli(&agent, Some(&cg), &["request", "db", "--for", "1m", "--reason", "x", "--identity", "grant-b"]);
    assert_eq!(r.code, 2, "a fenced process naming another identity: {}{}", r.out, r.err);
    assert!(r.err.contains("its own identity"), "{}", r.err);
    let r = grant_cli(&agent, Some(&cg), &["request", "db", "--for", "2h", "--reason", "x"]);
    assert!(r.code == 2 && r.err.contains("longer than"), "{}", r.err);
    let r = grant_cli(&agent, Some(&cg), &["request", "prod", "--for", "1m", "--reason", "x"]);
    assert!(r.code == 2 && r.err.contains("may request: db, ops"), "{}", r.err);
    let r = grant_cli(&agent, Some(&other), &["approve", "g-0000000000000000"]);
    assert_ne!(r.code, 0, "a workload cannot approve: {}{}", r.out, r.err);

    // `console`: pending until root approves; --wait says it is still pending (exit 4).
    let r = grant_cli(
        &agent,
        Some(&cg),
        &["request", "ops", "--for", "10m", "--reason", "incident", "--wait", "1s", "--json"],
    );
    assert_eq!(r.code, 4, "still pending after --wait: {}{}", r.out, r.err);
    let ops_id = r.grant()["id"].as_str().expect("id").to_owned();
    connect(&cg, &ops_addr).assert_eperm("a pending grant allows nothing");
    let r = grant_cli(&agent, None, &["approve", &ops_id, "--json"]);
    assert_eq!(r.code, 0, "approve: {}{}", r.out, r.err);
    assert_eq!(r.grant()["phase"]["approver"], "uid 0 (local)");

    revocation_tears_down(&agent, &cg, &ops, &ops_addr, &ops_id);

    // A denied request.
    let r = grant_cli(&agent, Some(&cg), &["request", "ops", "--for", "1m", "--reason", "again", "--json"]);
    let denied_id = r.grant()["id"].as_str().expect("id").to_owned();
    assert_eq!(grant_cli(&agent, None, &["deny", &denied_id, "--reason", "no"]).code, 0);
    let r = grant_cli(&agent, Some(&cg), &["show", &denied_id, "--json"]);
    assert_eq!(r.grant()["phase"]["state"], "denied", "{}", r.out);
    let r = grant_cli(&agent, Some(&other), &["show", &denied_id]);
    assert_eq!(r.code, 2, "another identity cannot see the grant: {}{}", r.out, r.err);

    wall_clock_changes_neither_end_nor_extend(&agent, &cg, &db_addr);
    drop(db);
}

/// Revocation: new connects denied at once, an established connection under the grant torn
/// down (the workload's read fails or ends, and so does its peer's), the life audited.
fn revocation_tears_down(agent: &Agent, cg: &TestCgroup, ops: &TcpListener, ops_addr: &str, ops_id: &str) {
    let mut hold = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["helper", "--cgroup", &s(&cg.dir), "tcp-hold", ops_addr, "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcp-hold");
    let mut lines = BufReader::new(hold.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("connected"), "the held connection under the grant");
    let (mut peer, _) = ops.accept().expect("the server side of the held connection");
    let r = grant_cli(agent, None, &["revoke", ops_id, "--reason", "incident closed"]);
    assert_eq!(r.code, 0, "revoke: {}{}", r.out, r.err);
    let revoked_at = Instant::now();
    let last = lines.last().and_then(Result::ok).unwrap_or_default();
    let _ = hold.wait();
    let held: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("tcp-hold's report {last:?}: {e}"));
    assert_ne!(held["ended"], "timeout", "the connection must be torn down: {held}");
    assert!(revoked_at.elapsed() < Duration::from_secs(10 * slow()), "{held}");
    // The peer sees the connection end too (a reset, or end of file).
    peer.set_read_timeout(Some(Duration::from_secs(5 * slow()))).expect("read timeout");
    match std::io::Read::read(&mut peer, &mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the peer should see the torn-down connection end, got {other:?}"),
    }
    connect(cg, ops_addr).assert_eperm("a new connect after the revocation");
    assert_eq!(audited(agent, ops_id), ["grant-requested", "grant-approved", "grant-active", "grant-revoked"]);
}

/// Only in the vm tier (the guest's clock is the test's own): a grant survives the wall clock
/// jumping forward and ends on time after it jumps back.
fn wall_clock_changes_neither_end_nor_extend(agent: &Agent, cg: &TestCgroup, db_addr: &str) {
    if test_tier() != "vm" {
        println!("the wall clock is not changed on a shared host: checked in the vm tier");
        return;
    }
    let ttl = 6 * slow();
    // Before the request: the grant's clock starts when the agent approves it, which is
    // before the request returns (an instant taken after it made "ended early" fail when the
    // end was seen at once).
    let started = Instant::now();
    let r = grant_cli(agent, Some(cg), &["request", "db", "--for", &format!("{ttl}s"), "--reason", "clock", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    shift_wall_clock(3 * 3600);
    connect(cg, db_addr).assert_ok("the wall clock three hours ahead does not end the grant");
    shift_wall_clock(-2 * 3 * 3600);
    connect(cg, db_addr).assert_ok("nor does it three hours back");
    eventually("the grant's end with the wall clock behind", ttl + 10, || {
        connect(cg, db_addr).errno == Some(libc::EPERM)
    });
    shift_wall_clock(3 * 3600);
    assert!(started.elapsed() >= Duration::from_secs(ttl), "ended early");
}

fn shift_wall_clock(seconds: i64) {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointers to a timespec.
    unsafe {
        assert_eq!(libc::clock_gettime(libc::CLOCK_REALTIME, &mut now), 0);
        now.tv_sec += seconds;
        assert_eq!(libc::clock_settime(libc::CLOCK_REALTIME, &now), 0, "setting the wall clock");
    }
}

fn exec_and_file_and_agent_killed() {
    let exec_mech = exec_mechanism();
    file_mechanism();
    let programs = Programs::new("grants-exec");
    let dir = TempDir::new("grants-files");
    let secret = dir.path("token");
    fs::write(&secret, "s3cret").expect("the protected file");
    let db = TcpListener::bind("127.0.0.43:0").expect("listener");
    let db_addr = db.local_addr().unwrap().to_string();
    let cg = TestCgroup::new("grant-x");
    let helper_bin = std::env::current_exe().expect("current_exe");
    let body = format!(
        "    exec:\n      allow: [{:?}, {:?}, {:?}]\n    grants:\n      - name: tool\n        exec: [{:?}]\n        \
         approval: auto\n      - name: token\n        files: [{:?}]\n        approval: auto\n      - name: db\n        \
         egress: [{{to: [127.0.0.43], ports: [{}], protocol: tcp}}]\n        approval: auto\n",
        s(&helper_bin),
        s(&agent_binary()),
        s(&programs.allowed),
        s(&programs.denied),
        s(&secret),
        db.local_addr().unwrap().port(),
    );
    let policy = format!("schema: 1\nidentities:\n{}", identity("grant-x", &cg, &body));
    let state = TempDir::new("grants-state");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/fence-grants-test-{}", std::process::id()));
    let _pins = Pins(pin_dir.clone());
    let config = format!(
        "[protect]\ndefaults = false\npaths = [{:?}]\n[persist]\nenabled = true\npin_dir = {:?}\nstate_dir = {:?}\n",
        s(&secret),
        s(&pin_dir),
        s(&state.0)
    );
    let mut agent = Agent::start_with("grants-exec", &policy, &config);
    let ttl = 5 * slow();
    let request = |agent: &Agent, target: &str| {
        let r = grant_cli(
            agent,
            Some(&cg),
            &["request", target, "--for", &format!("{ttl}s"), "--reason", "task", "--json"],
        );
        assert_eq!(r.code, 0, "request {target}: {}{}", r.out, r.err);
        r.grant()["id"].as_str().expect("id").to_owned()
    };

    // Exec: denied, granted, denied again after the end, with the mechanism this kernel has.
    assert_exec_denied(&exec(&cg, &programs.denied), &exec_mech, "the grantable program before the grant");
    let tool = request(&agent, "tool");
    exec(&cg, &programs.denied).assert_ok("the granted program");
    // Files: the same.
    open(Some(&cg), &secret).assert_eperm("the protected file before the grant");
    let token = request(&agent, "token");
    open(Some(&cg), &secret).assert_ok("the granted file");
    eventually("the exec grant's end", ttl + 10, || !exec(&cg, &programs.denied).ok());
    eventually("the file grant's end", 10, || open(Some(&cg), &secret).errno == Some(libc::EPERM));
    assert_exec_denied(&exec(&cg, &programs.denied), &exec_mech, "the program after the grant");
    eventually("the audit lines", 10, || {
        audited(&agent, &tool).contains(&"grant-expired".to_owned())
            && audited(&agent, &token).contains(&"grant-expired".to_owned())
    });

    // The agent is killed with a grant in force: the kernel still ends it on time.
    let db_id = request(&agent, "db");
    connect(&cg, &db_addr).assert_ok("the granted target");
    nix::sys::signal::kill(agent.pid(), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    agent.wait_exit(Duration::from_secs(10));
    connect(&cg, &db_addr).assert_ok("the grant holds with the agent gone");
    let r = grant_cli(&agent, Some(&cg), &["request", "db", "--for", "1m", "--reason", "agent down"]);
    assert!(r.code == 1 && r.err.contains("not running"), "a request while the agent is down: {}{}", r.out, r.err);
    eventually("the grant's end with no agent", ttl + 10, || connect(&cg, &db_addr).errno == Some(libc::EPERM));
    // The next run knows it ended, and says so.
    let restarted = Agent::start_with("grants-exec-2", &policy, &config);
    let r = grant_cli(&restarted, None, &["show", &db_id, "--json"]);
    eventually("the restarted agent records the end", 10, || {
        grant_cli(&restarted, None, &["show", &db_id, "--json"]).grant()["phase"]["state"] == "expired"
    });
    assert!(r.code == 0, "{}{}", r.out, r.err);
    assert!(audited(&restarted, &db_id).contains(&"grant-expired".to_owned()));
    connect(&cg, &db_addr).assert_eperm("still denied after the restart");
    drop(db);
    let _ = Path::new(&pin_dir);
}
