//! `fence-agent report` on a real agent: two identities (one without an expiry; one with a
//! grant issued that the kernel ends, and a credential in a process's environment), a denial of
//! each kind, the logs checked; each is a finding with the status it deserves, and the fences
//! are reported as the agent loaded them on this kernel.

use std::{
    fs,
    os::unix::net::UnixListener,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, mechanism},
    grants::{audited, eventually, grant_cli, slow},
    harness::{Test, note},
    helper,
    kernel_fences::{Programs, assert_exec_denied, exec, exec_mechanism, file_mechanism, open, s},
};

pub const TESTS: &[Test] = &[Test { name: "report_findings_from_live_state", run: findings_from_live_state }];

fn identity(name: &str, cg: &TestCgroup, body: &str) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: compliance report\n    mode: enforce\n    \
         selectors: [{{cgroup: \"{}\"}}]\n{body}",
        cg.rel
    )
}

fn report(agent: &Agent, format: &str) -> (i32, String) {
    let out = Command::new(agent_binary())
        .args(["report", format, "-c"])
        .arg(&agent.config)
        .output()
        .expect("running fence-agent report");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.stderr.is_empty(), "report: {}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The finding on `subject` in `control`.
fn finding<'a>(r: &'a Value, control: &str, subject: &str) -> &'a Value {
    let section = r["controls"].as_array().unwrap().iter().find(|c| c["control"] == control).expect(control);
    section["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"] == subject)
        .unwrap_or_else(|| panic!("no finding on {subject} in {control}: {section:#}"))
}

#[track_caller]
fn assert_finding(r: &Value, control: &str, subject: &str, status: &str, says: &[&str]) {
    let f = finding(r, control, subject);
    assert_eq!(f["status"], status, "{control} {subject}: {f:#}");
    let reason = f["reason"].as_str().unwrap_or_default();
    for s in says {
        assert!(reason.contains(s), "{control} {subject}: {reason:?} does not say {s:?}");
    }
}

fn findings_from_live_state() {
    let exec_mech = exec_mechanism();
    file_mechanism();
    let unix = mechanism("unix-sockets").is_some();
    let dir = TempDir::new("report");
    fs::create_dir_all(dir.path(".aws")).unwrap();
    fs::write(dir.path(".aws/credentials"), "[default]\n").unwrap();
    let _docker = UnixListener::bind(dir.path("docker.sock")).unwrap();
    let programs = Programs::new("report-programs");
    let (open_cg, granted_cg) = (TestCgroup::new("report-open"), TestCgroup::new("report-granted"));
    let granted_body = "    expires: \"2099-01-01T00:00:00Z\"\n    grants:\n      - name: db\n        \
                        egress: [{to: [127.0.0.44], ports: [5432], protocol: tcp}]\n        approval: auto\n";
    let policy = format!(
        "schema: 1\nidentities:\n{}{}",
        identity(
            "report-open",
            &open_cg,
            &format!("    exec:\n      allow: [{:?}]\n    unix:\n      allow: []\n", s(&programs.allowed))
        ),
        identity("report-granted", &granted_cg, granted_body)
    );
    let config = format!(
        "[protect]\ndefaults = false\npaths = [{:?}]\n[audit]\ncheckpoint_interval = 1\n",
        s(&dir.path(".aws/credentials"))
    );
    let agent = Agent::start_with("report", &policy, &config);

    // One denial of each kind, each logged.
    let mut kinds = vec![
        ("connect", helper::run(Some(&open_cg), &["tcp-connect", "127.0.0.1:9"])),
        ("sendmsg", helper::run(Some(&open_cg), &["udp-sendto", "127.0.0.1:9"])),
        ("open", open(Some(&open_cg), &dir.path(".aws/credentials"))),
    ];
    if unix {
        kinds.push(("unix-connect", helper::run(Some(&open_cg), &["unix-connect", &s(&dir.path("docker.sock"))])));
    }
    for (what, o) in &kinds {
        o.assert_eperm(what);
    }
    let denied_exec = exec(&open_cg, &programs.denied);
    assert_exec_denied(&denied_exec, &exec_mech, "exec");
    kinds.push(("exec", denied_exec));
    for (what, o) in &kinds {
        agent.wait_event(&format!("the {what} denial"), |e| e["process"]["pid"] == o.pid);
    }
    exec(&open_cg, &programs.allowed).assert_ok("the allowed program");

    // A grant issued, used by nobody, ended by the kernel.
    let ttl = 2 * slow();
    let r = grant_cli(
        &agent,
        Some(&granted_cg),
        &["request", "db", "--for", &format!("{ttl}s"), "--reason", "report", "--json"],
    );
    assert_eq!(r.code, 0, "grant request: {}{}", r.out, r.err);
    let id = r.grant()["id"].as_str().expect("grant id").to_owned();
    eventually("the grant's end", ttl + 15, || audited(&agent, &id).contains(&"grant-expired".to_owned()));

    // A workload of report-granted with a token in its environment (exec is not restricted
    // for it: that is a finding of its own).
    let mut sleeper = Command::new(std::env::current_exe().unwrap())
        .args(["helper", "--cgroup", &s(&granted_cg.dir), "exec", "/bin/sleep", "60"])
        .env("GITHUB_TOKEN", "ghp_notarealtokenbutlongenough0000000000")
        .stdout(Stdio::null())
        .spawn()
        .expect("the sleeper");
    eventually("the sleeper in its cgroup", 10, || {
        fs::read_to_string(granted_cg.dir.join("cgroup.procs")).is_ok_and(|p| p.lines().any(|l| !l.is_empty()))
    });
    // The logs get a signed checkpoint within the interval (1 s).
    eventually("a signed checkpoint of each log", 10, || {
        agent.audit_lines().iter().any(|l| l["event"]["action"] == "log-checkpoint")
            && agent.events().iter().any(|l| l["event"]["action"] == "log-checkpoint")
    });

    let (code, json) = report(&agent, "--json");
    let (md_code, md) = report(&agent, "--markdown");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let r: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("report JSON ({e}): {json}"));
    assert_eq!(code, 3, "a finding is not met (the token in an environment): exit 3\n{json}");
    assert_eq!(r["status"], "not-met");

    assert_finding(&r, "ISO 5.16", "identity report-open", "partial", &["no expiry"]);
    assert_finding(&r, "ISO 5.16", "identity report-granted", "met", &["expires 2099-01-01"]);
    let mut denied: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    denied.sort_unstable();
    let counted: Vec<String> = denied.iter().map(|k| format!("{k} 1")).collect();
    let counted: Vec<&str> = counted.iter().map(String::as_str).collect();
    assert_finding(&r, "AC-6", "identity report-open", "met", &counted);
    assert_finding(
        &r,
        "AC-6",
        "identity report-granted",
        "partial",
        &["exec unrestricted", "grantable on request: db (auto)"],
    );
    assert_finding(
        &r,
        "AC-6",
        &format!("grant {id}"),
        "met",
        &["db for report-granted", "ended by the kernel on time", "0 use(s)"],
    );
    assert_finding(&r, "SC-7", "identity report-open", "met", &["connect 1", "sendmsg 1"]);
    assert_finding(&r, "IA-5", "identity report-granted", "not-met", &["GITHUB_TOKEN"]);
    assert!(!json.contains("ghp_"), "a value reached the report");
    assert_finding(&r, "IA-5", "identity report-open", "met", &["no process running"]);
    assert_finding(&r, "ISO 5.15", "policy", "partial", &["local policy files", "not signed"]);
    assert_finding(&r, "ISO 5.15", "identity report-open", "met", &["owner fence-tests", "purpose compliance report"]);
    assert_finding(&r, "CC6.1", "log events", "met", &["intact"]);
    assert_finding(&r, "CC6.1", "log audit", "met", &["intact"]);
    // The fences as this agent loaded them: enforced ones met (partial on a fallback the doctor
    // gives a fix for), the others not met.
    let fences = r["evidence"]["fences"].as_array().expect("fences");
    assert!(fences.len() >= 8, "{fences:#?}");
    for f in fences {
        let name = f["fence"].as_str().unwrap();
        let control = r["controls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["findings"].as_array().unwrap().iter().any(|x| x["subject"] == format!("fence {name}")));
        let control =
            control.unwrap_or_else(|| panic!("fence {name} is under no control"))["control"].as_str().unwrap();
        let want = match (f["enforced"] == true, f["remedy"].is_string()) {
            (true, false) => "met",
            (true, true) => "partial",
            (false, _) => "not-met",
        };
        assert_finding(&r, control, &format!("fence {name}"), want, &[]);
    }
    assert_eq!(fences.iter().any(|f| f["fence"] == "unix-sockets" && f["enforced"] == true), unix);

    // Markdown: a table per control.
    assert_eq!(md_code, 3);
    for must in [
        "# fence compliance report: ",
        "| Control | Framework | Title | Status |\n| --- | --- | --- | --- |\n",
        "\n## AC-6 Least privilege (NIST SP 800-53 Rev. 5): ",
        "| Status | Subject | Finding |\n| --- | --- | --- |\n",
        "| partial | identity report-open | ",
        "\n## Log integrity\n",
    ] {
        assert!(md.contains(must), "markdown lacks {must:?}:\n{md}");
    }
    note(format!(
        "{} findings in {} controls; {} fence(s) not enforced on this kernel",
        r["controls"].as_array().unwrap().iter().map(|c| c["findings"].as_array().unwrap().len()).sum::<usize>(),
        r["controls"].as_array().unwrap().len(),
        fences.iter().filter(|f| f["enforced"] != true).count()
    ));
}
