//! The credential broker, with a real OpenBao (KV v2, a token role, per-identity vault
//! policies, the database secrets engine) and a real PostgreSQL: a fenced process gets its own
//! identity's secrets and nothing else; refusals are events and audit lines; a dynamic
//! credential dies with the grant it depends on; no value reaches a log, an event, the audit
//! log or the agent's environment.

use std::{fs, os::unix::fs::MetadataExt as _, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::{
    agent::{Agent, agent_binary},
    bao::random_hex,
    env::{TestCgroup, slow_factor, wait_for},
    harness::Test,
    helper,
    postgres::Postgres,
    vault_sync::{HOST, Setup},
};

pub const TESTS: &[Test] = &[Test { name: "broker_refusals_attested_by_the_kernel", run: refusals_attested }];

/// Host tier only: they need OpenBao (and PostgreSQL), which the vm tier's guest does not hold.
pub const VAULT_TESTS: &[Test] = &[
    Test { name: "broker_kv_own_identity_only_no_leaks", run: kv_own_identity_only },
    Test { name: "broker_dynamic_postgres_ends_with_grant", run: dynamic_postgres_ends_with_grant },
];

fn wait(secs: u64) -> Duration {
    Duration::from_secs(secs * u64::from(slow_factor().max(1)))
}

/// `fence-agent ARGS` in cgroup `cg` (or unfenced): exit code, stdout, stderr.
fn agent_in(cg: Option<&TestCgroup>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match cg {
        Some(cg) => {
            let mut c = Command::new(std::env::current_exe().expect("current_exe"));
            c.args(["helper", "--cgroup"]).arg(&cg.dir).arg("exec").arg(agent_binary());
            c
        }
        None => Command::new(agent_binary()),
    };
    let out = cmd.args(args).output().expect("fence-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn get(agent: &Agent, cg: Option<&TestCgroup>, name: &str) -> (i32, String, String) {
    agent_in(cg, &["secret", "get", name, "--socket", &agent.workload.display().to_string()])
}

/// The `secret-get` event for `name` that satisfies `pred`.
fn refused_event(agent: &Agent, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_event(&format!("secret-refused for {name}"), |e| {
        e["fence"]["operation"] == "secret-get" && e["fence"]["target"]["path"] == name && pred(e)
    })
}

fn audit_lines(agent: &Agent, action: &str, name: &str) -> Vec<Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"]["action"] == action && l["fence"]["secret"]["name"] == name)
        .collect()
}

pub(crate) fn identity(name: &str, cg: &TestCgroup, sections: &str) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: broker test\n    selectors: [{{cgroup: \"{}\"}}]\n{sections}",
        cg.rel
    )
}

/// Without a vault the broker still decides who may ask: the requests that pass are refused
/// only at the fetch; the others are refused first, each with an event and an audit line.
fn refusals_attested() {
    let a = TestCgroup::new("broker-a");
    let b = TestCgroup::new("broker-b");
    let policy = format!(
        "schema: 1\nidentities:\n{}{}",
        identity("bot-a", &a, "    secrets:\n      - {name: key, kv: {path: apps/a, key: api_key}}\n"),
        identity("bot-b", &b, "    secrets:\n      - {name: b-only, kv: {path: apps/b, key: api_key}}\n"),
    );
    let agent = Agent::start("broker-refusals", &policy);

    // bot-a, attested, asks for its own secret: past the policy, refused only for want of a vault.
    let (code, out, err) = get(&agent, Some(&a), "key");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("no [vault]"), "the caller was taken as bot-a: {err}");

    // bot-a asks for bot-b's secret: not in its policy.
    let (code, _, err) = get(&agent, Some(&a), "b-only");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no secret named \"b-only\""), "{err}");
    let e = refused_event(&agent, "b-only", |e| e["fence"]["identity"] == "bot-a");
    assert_eq!(e["fence"]["verdict"], "denied", "{e:#}");
    assert_eq!(e["fence"]["reason"], "secret-not-allowed", "{e:#}");
    assert_eq!(e["fence"]["mechanism"], "fence/broker", "{e:#}");
    assert_eq!(e["event"]["category"][0], "iam", "{e:#}");
    assert_eq!(audit_lines(&agent, "secret-refused", "b-only").len(), 1);

    // An unfenced process (root on the host) is refused too.
    let (code, _, err) = get(&agent, None, "key");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only a fenced process"), "{err}");
    let e = refused_event(&agent, "key", |e| e["fence"]["identity"] == "");
    assert_eq!(e["fence"]["reason"], "secret-not-allowed", "{e:#}");

    // A caller gone (its pid free for reuse) when the agent asks the kernel who it is.
    let line = json!({"op": "secret-get", "name": "key"}).to_string();
    let o = helper::run(Some(&a), &["request-after-exit", &agent.workload.display().to_string(), &line]);
    o.assert_ok("request-after-exit");
    let answer: Value = serde_json::from_str(o.raw["answer"].as_str().unwrap_or_default()).expect("an answer line");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("cannot tell which process"), "{answer}");
    let exited = o.raw["exited"].as_u64().expect("the exited pid");
    let e = refused_event(&agent, "key", |e| e["process"]["pid"] == exited);
    assert_eq!(e["fence"]["identity"], "", "a dead caller is nobody's: {e:#}");
    let refused = audit_lines(&agent, "secret-refused", "key");
    assert!(refused.iter().any(|l| l["fence"]["secret"]["requester"]["pid"] == exited), "{refused:#?}");

    // The workload socket still answers what it answers (a grant list).
    let (code, _, err) = agent_in(Some(&a), &["grant", "list", "--socket", &agent.workload.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    // Every line written, the broker's included, follows the published schema.
    crate::flood::validated_lines(&agent.events);
}

/// The vault side of the broker: the agent's AppRole may make tokens through the role
/// `fence-broker`, whose tokens carry only `fence-identity-*` policies; each identity's
/// policy reads its own paths.
pub(crate) fn broker_vault(setup: &Setup, identities: &[(&str, &str)]) {
    let bao = &setup.bao;
    bao.write_policy(
        "fence-agent",
        r#"path "secret/data/fence/*" { capabilities = ["read"] }
path "secret/metadata/fence/*" { capabilities = ["read", "list"] }
path "secret/data/fence/status/*" { capabilities = ["create", "update", "read"] }
path "secret/data/fence/grants/requests/*" { capabilities = ["create", "update", "read"] }
path "auth/token/create/fence-broker" { capabilities = ["update"] }"#,
    );
    bao.root(
        "POST",
        "/v1/auth/token/roles/fence-broker",
        Some(&json!({
            "allowed_policies_glob": ["fence-identity-*"],
            "orphan": true,
            "token_explicit_max_ttl": "8h",
        })),
    );
    for (name, hcl) in identities {
        bao.write_policy(&format!("fence-identity-{name}"), hcl);
    }
}

/// OpenBao's database secrets engine over `pg`: the role `ai-readonly` makes login roles.
pub(crate) fn database_engine(bao: &crate::bao::Bao, pg: &Postgres) {
    bao.root("POST", "/v1/sys/mounts/database", Some(&json!({ "type": "database" })));
    bao.root(
        "POST",
        "/v1/database/config/pg",
        Some(&json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
            "username": pg.admin,
            "password": pg.admin_password.expose(),
            "allowed_roles": ["ai-readonly"],
        })),
    );
    bao.root(
        "POST",
        "/v1/database/roles/ai-readonly",
        Some(&json!({
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            "default_ttl": "1h",
            "max_ttl": "4h",
        })),
    );
}

/// Pushes `identities` (YAML list items) to the vault for this host and waits until the agent
/// enforces them (`cg` has a fenced process's view).
pub(crate) fn push(setup: &Setup, agent: &Agent, identities: &str, names: &[&str]) {
    fs::write(setup.policies.join("broker.yaml"), format!("schema: 1\nidentities:\n{identities}")).unwrap();
    fs::write(
        setup.policies.join("assignments.yaml"),
        format!(
            "schema: 1\nassignments:\n  - name: test\n    hosts: [\"{HOST}\"]\n    identities: [{}]\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let out = setup.push(&setup.policies);
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    wait_for(wait(30), || {
        let s = agent.status();
        names.iter().all(|n| s.policy.iter().any(|p| p.identity == *n)).then_some(())
    })
    .expect("the vault's policy is enforced");
}

/// Values must appear nowhere the agent writes: its (TRACE) log, events, audit log, and not in
/// its environment or command line.
fn assert_no_leak(agent: &Agent, values: &[&str]) {
    let places = [
        ("the agent's log (trace)", agent.stderr_text()),
        ("the agent's stdout", fs::read_to_string(&agent.stdout).unwrap_or_default()),
        ("the events file", fs::read_to_string(&agent.events).unwrap_or_default()),
        ("the audit log", fs::read_to_string(&agent.audit).unwrap_or_default()),
        (
            "the agent's environment",
            String::from_utf8_lossy(&fs::read(format!("/proc/{}/environ", agent.pid())).unwrap_or_default())
                .into_owned(),
        ),
        (
            "the agent's command line",
            String::from_utf8_lossy(&fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap_or_default())
                .into_owned(),
        ),
    ];
    for (what, text) in &places {
        for v in values {
            assert!(!text.contains(v), "a secret value is in {what}");
        }
    }
    let log = agent.stderr_text();
    assert!(log.contains(" TRACE ") && log.contains("secret issued"), "the log checked is the trace-level one");
}

fn kv_own_identity_only() {
    let setup = Setup::new("broker-kv");
    let (value_a, value_b) = (format!("sk-a-{}", random_hex(16)), format!("sk-b-{}", random_hex(16)));
    setup.bao.kv_put("apps/a", &json!({ "api_key": value_a }));
    setup.bao.kv_put("apps/b", &json!({ "api_key": value_b }));
    broker_vault(
        &setup,
        &[
            ("bot-a", r#"path "secret/data/apps/a" { capabilities = ["read"] }"#),
            ("bot-b", r#"path "secret/data/apps/b" { capabilities = ["read"] }"#),
        ],
    );
    let a = TestCgroup::new("broker-kv-a");
    let b = TestCgroup::new("broker-kv-b");
    let files = crate::env::TempDir::new("broker-files");
    let config = format!(
        "{}[broker]\ncache_ttl = \"1h\"\nfiles_dir = {:?}\n",
        setup.agent_config,
        files.path("secrets").display().to_string()
    );
    let agent = Agent::start_logged("broker-kv", "schema: 1\nidentities: []\n", &config, "trace");
    // bot-a's "wrong" is a mapping mistake in the policy: bot-b's path. The vault refuses it,
    // because bot-a's token carries bot-a's vault policy only.
    let identities = format!(
        "{}{}",
        identity(
            "bot-a",
            &a,
            "    secrets:\n      - {name: key, kv: {path: apps/a, key: api_key}}\n      - {name: wrong, kv: {path: apps/b, key: api_key}}\n"
        ),
        identity("bot-b", &b, "    secrets:\n      - {name: key, kv: {path: apps/b, key: api_key}}\n"),
    );
    push(&setup, &agent, &identities, &["bot-a", "bot-b"]);

    let (code, out, err) = get(&agent, Some(&a), "key");
    assert_eq!(code, 0, "bot-a gets its key: {err}");
    assert_eq!(out, format!("{value_a}\n"));
    let (code, out, err) = get(&agent, Some(&b), "key");
    assert_eq!(code, 0, "bot-b gets its key: {err}");
    assert_eq!(out, format!("{value_b}\n"));
    // Again: from the cache, and said so in the audit log.
    let (code, out, _) = get(&agent, Some(&a), "key");
    assert_eq!((code, out), (0, format!("{value_a}\n")));
    let issued = audit_lines(&agent, "secret-issued", "key");
    assert_eq!(issued.len(), 3, "{issued:#?}");
    assert_eq!(issued.iter().filter(|l| l["fence"]["secret"]["cached"] == true).count(), 1, "{issued:#?}");
    assert!(issued.iter().all(|l| l["fence"]["secret"]["requester"]["pid"].as_u64().is_some()), "{issued:#?}");

    // To a descriptor the caller opened, without a newline.
    let file = setup.bao.dir.path("fd-out");
    let script = format!(
        "exec 3>{f}; {agent} secret get key --fd 3 --socket {s}",
        f = file.display(),
        agent = agent_binary().display(),
        s = agent.workload.display()
    );
    let (code, _, err) = {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["helper", "--cgroup"])
            .arg(&a.dir)
            .args(["exec", "/bin/sh", "-c", &script])
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), (), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), value_a);

    // To a file only bot-a may read: 0400, the caller's uid; bot-b (same uid) is refused it by
    // the kernel, with an event.
    let (code, out, err) =
        agent_in(Some(&a), &["secret", "file", "key", "--socket", &agent.workload.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let path = out.trim().to_owned();
    assert_eq!(path, files.path("secrets").join("bot-a").join("key").display().to_string());
    let meta = fs::metadata(&path).expect("the secret file");
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o400, nix::unistd::geteuid().as_raw()));
    assert_eq!(fs::read_to_string(&path).unwrap(), value_a);
    helper::run(Some(&a), &["open", &path]).assert_ok("bot-a reads its secret file");
    let o = helper::run(Some(&b), &["open", &path]);
    o.assert_eperm("bot-b opens bot-a's secret file");
    let e = crate::kernel_fences::event_of(&agent, &o, "open");
    assert_eq!(e["fence"]["reason"], "file-protected", "{e:#}");

    // The mapping mistake: refused by the vault (403), audited, and no value.
    let (code, out, err) = get(&agent, Some(&a), "wrong");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("403"), "the vault refused bot-a's token: {err}");
    assert!(!err.contains(&value_b), "{err}");
    assert_eq!(audit_lines(&agent, "secret-refused", "wrong").len(), 1);

    // bot-a asking for a name only bot-b has is refused before the vault.
    let (code, _, err) = get(&agent, Some(&a), "b-only");
    assert_eq!(code, 2, "{err}");

    // The identities' tokens are the vault's own: each with its identity's policy only.
    let tokens: Vec<Value> =
        setup.bao.token_accessors().iter().filter_map(|acc| setup.bao.lookup_accessor(acc)).collect();
    let mine: Vec<&Value> =
        tokens.iter().filter(|t| t["display_name"].as_str().is_some_and(|d| d.contains("fence-bot-a"))).collect();
    assert!(!mine.is_empty(), "bot-a's token: {tokens:#?}");
    for t in mine {
        let policies: Vec<&str> = t["policies"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(policies.iter().all(|p| *p == "default" || *p == "fence-identity-bot-a"), "{t:#}");
    }
    assert_no_leak(&agent, &[&value_a, &value_b]);
}

fn dynamic_postgres_ends_with_grant() {
    let pg = Postgres::start();
    let setup = Setup::new("broker-pg");
    database_engine(&setup.bao, &pg);
    broker_vault(&setup, &[("pg-bot", r#"path "database/creds/ai-readonly" { capabilities = ["read"] }"#)]);
    let cg = TestCgroup::new("broker-pg");
    let files = crate::env::TempDir::new("broker-pg-files");
    let config =
        format!("{}[broker]\nfiles_dir = {:?}\n", setup.agent_config, files.path("secrets").display().to_string());
    let agent = Agent::start_logged("broker-pg", "schema: 1\nidentities: []\n", &config, "trace");
    let sections = format!(
        "    grants:\n      - {{name: db, egress: [{{to: [127.0.0.1], ports: [{}], protocol: tcp}}], approval: auto, max_ttl: 1h}}\n    \
         secrets:\n      - {{name: db, dynamic: {{role: database/creds/ai-readonly, ttl: 10m}}, grant: db}}\n      \
         - {{name: short, dynamic: {{role: database/creds/ai-readonly, ttl: 4s}}}}\n",
        pg.port
    );
    push(&setup, &agent, &identity("pg-bot", &cg, &sections), &["pg-bot"]);

    // No grant yet: refused, with the reason.
    let (code, _, err) = get(&agent, Some(&cg), "db");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only while a grant of \"db\""), "{err}");
    let e = refused_event(&agent, "db", |e| e["fence"]["identity"] == "pg-bot");
    assert_eq!(e["fence"]["reason"], "secret-needs-grant", "{e:#}");

    let (code, out, err) = agent_in(
        Some(&cg),
        &[
            "grant",
            "request",
            "db",
            "--for",
            "10m",
            "--reason",
            "broker test",
            "--json",
            "--socket",
            &agent.workload.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "grant request: {out} {err}");
    let grants: Value = serde_json::from_str(&out).expect("grant JSON");
    let grant_id = grants[0]["id"].as_str().expect("the grant's id").to_owned();
    let (code, out, err) = get(&agent, Some(&cg), "db");
    assert_eq!(code, 0, "{err}");
    let creds: Value = serde_json::from_str(out.trim()).expect("fields as JSON");
    let (user, password) =
        (creds["username"].as_str().unwrap().to_owned(), creds["password"].as_str().unwrap().to_owned());
    let (code, _, err) = agent_in(
        Some(&cg),
        &["secret", "get", "db", "--field", "password", "--socket", &agent.workload.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    pg.login(&user, &password).unwrap_or_else(|e| panic!("the credential logs in: {e}"));
    let (code, out, err) = agent_in(
        Some(&cg),
        &["secret", "file", "db", "--field", "password", "--socket", &agent.workload.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let file = out.trim().to_owned();
    assert_eq!(fs::read_to_string(&file).unwrap(), password, "the lease held, the same credential");
    let issued = audit_lines(&agent, "secret-issued", "db");
    let lease_id = issued[0]["fence"]["secret"]["lease_id"].as_str().expect("a lease id").to_owned();
    assert!(lease_id.starts_with("database/creds/ai-readonly/"), "{lease_id}");
    assert_eq!(issued[0]["fence"]["secret"]["grant"], grant_id.as_str(), "{:#}", issued[0]);

    // The grant is revoked: the lease is revoked with it, and the user can no longer log in.
    let (code, _, err) = agent_in(
        None,
        &["grant", "revoke", &grant_id, "--reason", "done", "--socket", &agent.socket.display().to_string()],
    );
    assert_eq!(code, 0, "revoke: {err}");
    wait_for(wait(20), || pg.login(&user, &password).is_err().then_some(()))
        .expect("the database user is gone once the grant is revoked");
    let ended = wait_for(wait(10), || {
        let l = audit_lines(&agent, "secret-revoked", "db");
        (!l.is_empty()).then_some(l)
    })
    .expect("the lease's end is audited");
    assert_eq!(ended[0]["fence"]["secret"]["lease_id"], lease_id.as_str(), "{:#}", ended[0]);
    assert!(!std::path::Path::new(&file).exists(), "the secret file goes with its lease");

    // A lease in use is renewed (the same credential past its ttl); one no longer asked for ends.
    let short = |agent: &Agent| -> (String, String) {
        let (code, out, err) = get(agent, Some(&cg), "short");
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(out.trim()).expect("fields as JSON");
        (v["username"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned())
    };
    let (user, password) = short(&agent);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        assert_eq!(short(&agent).0, user, "the lease in use is the same lease, renewed");
        std::thread::sleep(Duration::from_millis(700));
    }
    pg.login(&user, &password).unwrap_or_else(|e| panic!("renewed past its 4 s ttl, it still logs in: {e}"));
    let renewed = audit_lines(&agent, "secret-issued", "short");
    assert!(renewed.iter().any(|l| l["fence"]["secret"]["renewed"] == true), "{renewed:#?}");
    wait_for(wait(20), || pg.login(&user, &password).is_err().then_some(()))
        .expect("no longer asked for, the lease ends and the user is gone");
    wait_for(wait(10), || (!audit_lines(&agent, "secret-expired", "short").is_empty()).then_some(()))
        .expect("its end is audited");
    assert_no_leak(&agent, &[&password]);
}
