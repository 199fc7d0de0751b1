//! Console approval of just-in-time grants through a real OpenBao: the agent publishes the
//! request, a console signs a decision for it, and the agent acts on it at its next poll;
//! decisions signed by an unknown key, moved from another host's path, or replayed are
//! refused, audited, and change nothing.

use std::{fs, net::TcpListener, process::Command, time::Duration};

use fence_agent::vault::{
    layout::grants::{Decision, Verdict, decision_path},
    sign::SigningKey,
};
use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TestCgroup, slow_factor, wait_for},
    harness::Test,
    helper,
    vault_sync::{HOST, Setup},
};

pub const TESTS: &[Test] = &[Test { name: "vault_grant_console_approval", run: console_approval }];

fn wait(secs: u64) -> Duration {
    Duration::from_secs(secs * u64::from(slow_factor().max(1)))
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_binary()).args(args).output().expect("fence-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn grant_state(agent: &Agent, id: &str) -> String {
    let (_, out, _) = cli(&["grant", "show", id, "--json", "--socket", &agent.workload.display().to_string()]);
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v[0]["phase"]["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn refusals(agent: &Agent, id: &str) -> usize {
    agent
        .audit_lines()
        .iter()
        .filter(|l| l["fence"]["grant"]["id"] == id && l["event"]["action"] == "grant-decision-refused")
        .count()
}

fn console_approval() {
    let setup = Setup::new("vault-grants");
    let cg = TestCgroup::new("vault-grants");
    let target = TcpListener::bind("127.0.0.44:0").expect("listener");
    let to = target.local_addr().unwrap().to_string();
    fs::write(
        setup.policies.join("grant-bot.yaml"),
        format!(
            "schema: 1\nidentities:\n  - name: grant-bot\n    owner: fence-tests\n    purpose: console approval\n    \
             selectors: [{{cgroup: \"{}\"}}]\n    grants:\n      - name: ops\n        egress: [{{to: [127.0.0.44], ports: [{}], protocol: tcp}}]\n",
            cg.rel,
            target.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    fs::write(
        setup.policies.join("assignments.yaml"),
        format!("schema: 1\nassignments:\n  - name: test\n    hosts: [\"{HOST}\"]\n    identities: [grant-bot]\n"),
    )
    .unwrap();
    let agent = setup.start_agent("vault-grants");
    let out = setup.push(&setup.policies);
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    wait_for(wait(30), || (helper::run(Some(&cg), &["tcp-connect", &to]).errno == Some(libc::EPERM)).then_some(()))
        .expect("the vault's policy is enforced");

    // The workload asks; the request waits for a person and is published for consoles.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["helper", "--cgroup", &cg.dir.display().to_string(), "exec", &agent_binary().display().to_string()])
        .args(["grant", "request", "ops", "--for", "10m", "--reason", "incident 42", "--json", "--socket"])
        .arg(&agent.workload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "request: {}", String::from_utf8_lossy(&out.stderr));
    let g: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = g[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(g[0]["phase"]["state"], "pending");
    let console = setup.console.display().to_string();
    wait_for(wait(15), || cli(&["grant", "list", "-c", &console]).1.contains(&id).then_some(()))
        .expect("the request is published in the vault");

    // A decision signed by a key the agents do not know: refused.
    let stranger = setup.dir.path("stranger.key");
    SigningKey::generate().unwrap().save(&stranger).unwrap();
    let (code, _, err) = cli(&["grant", "approve", &id, "-c", &console, "--key", &stranger.display().to_string()]);
    assert_eq!(code, 0, "the console writes it: {err}");
    wait_for(wait(15), || (refusals(&agent, &id) >= 1).then_some(())).expect("the unknown key's decision is refused");
    assert_eq!(grant_state(&agent, &id), "pending");
    helper::run(Some(&cg), &["tcp-connect", &to]).assert_eperm("nothing granted by an unknown key");

    // A decision signed for another host's path, copied to this host's: refused.
    let key = SigningKey::load(&setup.key).unwrap();
    let decision = |host: &str, verdict: Verdict| Decision {
        id: id.clone(),
        host: host.to_owned(),
        identity: "grant-bot".into(),
        target: "ops".into(),
        ttl_seconds: 600,
        verdict,
        reason: String::new(),
        not_after: jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(3600)).unwrap().to_string(),
    };
    let elsewhere = decision_path("other-host", &id).unwrap();
    let forged = key.sign(&elsewhere, 99, &serde_json::to_string(&decision("other-host", Verdict::Approve)).unwrap());
    let here = decision_path(HOST, &id).unwrap();
    setup.bao.kv_put(&format!("fence/{here}"), &forged.to_kv());
    wait_for(wait(15), || (refusals(&agent, &id) >= 2).then_some(())).expect("another host's decision is refused");
    assert_eq!(grant_state(&agent, &id), "pending");

    // The console approves: active at the next poll.
    let (code, out, err) = cli(&["grant", "approve", &id, "-c", &console, "--key", &setup.key.display().to_string()]);
    assert_eq!(code, 0, "approve: {out}{err}");
    wait_for(wait(15), || (grant_state(&agent, &id) == "active").then_some(())).expect("approved through the vault");
    helper::run(Some(&cg), &["tcp-connect", &to]).assert_ok("the target, granted by the console");
    let approved_line = agent
        .audit_lines()
        .into_iter()
        .find(|l| l["fence"]["grant"]["id"] == id.as_str() && l["event"]["action"] == "grant-approved")
        .expect("the approval is audited");
    assert!(approved_line["fence"]["grant"]["approver"].as_str().is_some_and(|a| a.starts_with("console key ")));

    // The same approval written again (a replay): refused, the grant is not renewed.
    let current = setup.bao.root("GET", &format!("/v1/secret/data/fence/{here}"), None);
    setup.bao.kv_put(&format!("fence/{here}"), &current["data"]["data"]);
    wait_for(wait(15), || (refusals(&agent, &id) >= 3).then_some(())).expect("the replayed approval is refused");
    assert_eq!(grant_state(&agent, &id), "active");

    // The console revokes it.
    let (code, out, err) =
        cli(&["grant", "revoke", &id, "-c", &console, "--key", &setup.key.display().to_string(), "--reason", "done"]);
    assert_eq!(code, 0, "revoke: {out}{err}");
    wait_for(wait(15), || (grant_state(&agent, &id) == "revoked").then_some(())).expect("revoked through the vault");
    helper::run(Some(&cg), &["tcp-connect", &to]).assert_eperm("after the console's revocation");
}
