//! Central policy from a real OpenBao dev server: pushed with `fence-agent policy push`,
//! enforced by a running agent within its poll interval (measured and reported, not asserted),
//! invalid or tampered documents refused with the previous policy kept, the vault's outage and
//! return, a restart with the vault down (the last-known-good cache), and check-and-set
//! conflicts between two consoles.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use fence_agent::vault::{
    layout::{Index, IndexEntry, SignedDocument},
    sign::SigningKey,
};
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    bao::{Bao, write_private},
    env::{TempDir, TestCgroup, slow_factor, wait_for},
    harness::{Test, note},
    helper,
};

pub const TESTS: &[Test] = &[
    Test { name: "vault_push_is_enforced_and_reported", run: push_is_enforced_and_reported },
    Test { name: "vault_invalid_and_tampered_documents_refused", run: invalid_and_tampered_refused },
    Test { name: "vault_outage_return_and_restart_on_cache", run: outage_return_and_restart_on_cache },
    Test { name: "vault_push_cas_conflict_reported", run: cas_conflict_reported },
];

const POLL: u64 = 1;
pub(crate) const HOST: &str = "fence-test-host";

/// A vault with AppRole for the agent, a console token, a signing key, and the files a
/// console and an agent need.
pub struct Setup {
    pub bao: Bao,
    pub(crate) dir: TempDir,
    pub(crate) key: PathBuf,
    pub(crate) console: PathBuf,
    /// agent.toml for the vault; its last table is `[persist]` (with `state_dir`).
    pub agent_config: String,
    state: PathBuf,
    pub policies: PathBuf,
}

impl Setup {
    pub(crate) fn new(test: &str) -> Setup {
        Setup::with(test, Bao::start())
    }

    /// The same on a given server (a dev server, or one with storage that can be restarted).
    pub fn with(test: &str, bao: Bao) -> Setup {
        let dir = TempDir::new(&format!("{test}-vault"));
        bao.write_policy(
            "fence-agent",
            r#"path "secret/data/fence/*" { capabilities = ["read"] }
path "secret/metadata/fence/*" { capabilities = ["read", "list"] }
path "secret/data/fence/status/*" { capabilities = ["create", "update", "read"] }
path "secret/data/fence/grants/requests/*" { capabilities = ["create", "update", "read"] }"#,
        );
        bao.enable_approle("approle");
        bao.create_role("approle", "fence-agent", "1h", "4h", &["fence-agent"]);
        write_private(&dir.path("role-id"), bao.role_id("approle", "fence-agent").expose(), 0o600);
        write_private(&dir.path("secret-id"), bao.secret_id("approle", "fence-agent").expose(), 0o600);
        write_private(&dir.path("console-token"), bao.root_token.expose(), 0o600);
        let key = dir.path("signing.key");
        let out = Command::new(agent_binary()).args(["policy", "keygen", "--out"]).arg(&key).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let public = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("signing_keys = [\"").and_then(|r| r.strip_suffix("\"]")).map(str::to_owned))
            .expect("keygen prints the public key");
        let console = dir.path("console.toml");
        fs::write(
            &console,
            format!(
                "[vault]\naddress = {:?}\ninsecure = true\ntoken_file = {:?}\nsigning_keys = [{public:?}]\n",
                bao.addr,
                s(&dir.path("console-token"))
            ),
        )
        .unwrap();
        let state = dir.path("state");
        let agent_config = format!(
            "[vault]\naddress = {:?}\ninsecure = true\nrole_id_file = {:?}\nsecret_id_file = {:?}\n\
             signing_keys = [{public:?}]\npoll_interval = {POLL}\nfull_resync = 10\nhostname = \"{HOST}\"\ntimeout = 2\n\
             [persist]\nstate_dir = {:?}\n",
            bao.addr,
            s(&dir.path("role-id")),
            s(&dir.path("secret-id")),
            s(&state)
        );
        let policies = dir.path("policies");
        fs::create_dir_all(&policies).unwrap();
        Setup { bao, dir, key, console, agent_config, state, policies }
    }

    /// Writes the identity `name` (bound to `cg`, its egress allow-list) and an assignment
    /// of it to this host into the policies directory.
    pub fn write_identity(&self, name: &str, cg: &TestCgroup, egress: &str) {
        fs::write(
            self.policies.join(format!("{name}.yaml")),
            format!(
                "schema: 1\nidentities:\n  - name: {name}\n    owner: fence-tests\n    purpose: vault test\n    \
                 selectors: [{{cgroup: \"{}\"}}]\n    egress: {egress}\n",
                cg.rel
            ),
        )
        .unwrap();
        fs::write(
            self.policies.join("assignments.yaml"),
            format!("schema: 1\nassignments:\n  - name: test\n    hosts: [\"{HOST}\"]\n    identities: [{name}]\n"),
        )
        .unwrap();
    }

    pub fn push(&self, dir: &Path) -> std::process::Output {
        self.push_with(dir, &[])
    }

    fn push_with(&self, dir: &Path, extra: &[&str]) -> std::process::Output {
        Command::new(agent_binary())
            .args(["policy", "push", "-c"])
            .arg(&self.console)
            .arg("--key")
            .arg(&self.key)
            .args(extra)
            .arg(dir)
            .output()
            .unwrap()
    }

    pub(crate) fn start_agent(&self, test: &str) -> Agent {
        Agent::start_with(test, "schema: 1\nidentities: []\n", &self.agent_config)
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn status(agent: &Agent) -> Value {
    let out = Command::new(agent_binary())
        .args(["status", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .expect("fence-agent status");
    let st: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    // 3 while the vault sync is failing, 0 otherwise.
    let failing = st["vault"]["consecutive_failures"].as_u64().is_some_and(|n| n > 0);
    assert_eq!(
        out.status.code(),
        Some(if failing { 3 } else { 0 }),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    st
}

/// Whether a connect from `cg` to `to` is denied (EPERM).
fn denied(cg: &TestCgroup, to: &str) -> bool {
    helper::run(Some(cg), &["tcp-connect", to]).errno == Some(libc::EPERM)
}

fn wait(secs: u64) -> Duration {
    Duration::from_secs(secs * u64::from(slow_factor()))
}

fn push_is_enforced_and_reported() {
    let setup = Setup::new("vault-push");
    let cg = TestCgroup::new("vault-push");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let agent = setup.start_agent("vault-push");
    assert!(!denied(&cg, &to), "before any push the cgroup is not fenced");

    setup.write_identity("vault-bot", &cg, "[]");
    let pushed = Instant::now();
    let out = setup.push(&setup.policies);
    assert!(
        out.status.success(),
        "push: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let enforced = wait_for(wait(30), || denied(&cg, &to).then(Instant::now));
    let latency = enforced.expect("the pushed policy is enforced").duration_since(pushed);
    // The status follows the apply.
    let st = wait_for(wait(10), || Some(status(&agent)).filter(|st| st["source"] == "vault"))
        .unwrap_or_else(|| status(&agent));
    assert_eq!(st["source"], "vault", "{st:#}");
    assert!(st["vault"]["applied"]["identities/vault-bot"].as_u64().is_some(), "{st:#}");
    assert!(st["vault"]["signatures"].as_str().unwrap_or_default().starts_with("verified"), "{st:#}");
    assert!(st["vault"]["last_error"].is_null(), "{st:#}");
    // The agent reports itself to the vault for the console.
    let hosts = wait_for(wait(15), || {
        let out = Command::new(agent_binary())
            .args(["status", "--hosts", "--json", "-c"])
            .arg(&setup.console)
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().any(|h| h["hostname"] == HOST && h["source"] == "vault").then_some(())
    });
    assert!(hosts.is_some(), "status --hosts shows this host");
    // And publishes its compliance report, rewritten when the policy in force changes: the
    // console's fleet view has this host with the vault's signed policy and the identity.
    let published = wait_for(wait(20), || {
        let out = Command::new(agent_binary())
            .args(["report", "--hosts", "--json", "-c"])
            .arg(&setup.console)
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = v.as_array()?.iter().find(|r| r["host"] == HOST)?.clone();
        let iso = r["controls"].as_array()?.iter().find(|c| c["control"] == "ISO 5.15")?.clone();
        let findings = iso["findings"].as_array()?;
        let policy = findings.iter().find(|f| f["subject"] == "policy")?;
        (policy["status"] == "met" && findings.iter().any(|f| f["subject"] == "identity vault-bot"))
            .then(|| (r.clone(), out.status.code()))
    });
    let (report, code) = published.expect("report --hosts shows this host's report with the vault's policy");
    assert!(
        report["evidence"]["policy"]["signatures"].as_str().is_some_and(|s| s.starts_with("verified")),
        "{report:#}"
    );
    assert_eq!(report["controls"].as_array().map(Vec::len), Some(7), "{report:#}");
    assert!(matches!(code, Some(0 | 3)), "report --hosts exit status {code:?}");
    let md = Command::new(agent_binary())
        .args(["report", "--hosts", "--markdown", "-c"])
        .arg(&setup.console)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("| Host | Generated | Overall | AC-6 | IA-5 | SC-7 | ISO 5.15 | ISO 5.16 | CC6.1 | GDPR 5(1)(c) |"),
        "{md}"
    );
    assert!(md.contains(&format!("\n## fence compliance report: {HOST}\n")), "{md}");
    // `status --hosts` still lists hosts only (not their report folders).
    let out =
        Command::new(agent_binary()).args(["status", "--hosts", "--json", "-c"]).arg(&setup.console).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --hosts JSON");
    assert!(v.as_array().unwrap().iter().all(|h| h["hostname"].is_string()), "{v:#}");
    // The cache holds what is applied, root-only.
    let cache = setup.state.join("policy-cache.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&cache).expect("the cache").permissions());
    assert_eq!(mode & 0o777, 0o600);
    // No secret in the agent's log.
    let log = agent.stderr_text();
    for secret in [fs::read_to_string(setup.dir.path("secret-id")).unwrap(), setup.bao.root_token.expose().to_owned()] {
        assert!(!log.contains(secret.trim()), "the agent's log contains a secret");
    }
    note(format!(
        "push to first denied connect: {} ms (poll interval {POLL} s, so within 2 intervals: {})",
        latency.as_millis(),
        latency <= Duration::from_secs(2 * POLL)
    ));
}

fn invalid_and_tampered_refused() {
    let setup = Setup::new("vault-tamper");
    let cg = TestCgroup::new("vault-tamper");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let agent = setup.start_agent("vault-tamper");
    setup.write_identity("tamper-bot", &cg, "[]");
    assert!(setup.push(&setup.policies).status.success());
    assert!(wait_for(wait(30), || denied(&cg, &to).then_some(())).is_some(), "the first policy is enforced");

    // 1. An invalid document is refused by push: nothing is written.
    let bad = setup.dir.path("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(
        bad.join("broken.yaml"),
        "schema: 1\nidentities:\n  - name: broken\n    purpose: no owner\n    selectors: [{cgroup: /nope}]\n",
    )
    .unwrap();
    let out = setup.push(&bad);
    assert_eq!(out.status.code(), Some(2), "push of an invalid policy: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner"), "the error names the field");
    let meta = setup.bao.call(
        "GET",
        "/v1/secret/metadata/fence/identities/broken",
        Some(setup.bao.root_token.expose()),
        &[],
        None,
    );
    assert_eq!(meta.status, 404, "nothing written for an invalid policy");

    // 2. Written by other means: validly signed (index included), but invalid (a CIDR with
    //    host bits); the agent refuses it, keeps enforcing the previous policy, and keeps
    //    saying so at every poll until the vault changes.
    let key = SigningKey::load(&setup.key).unwrap();
    let path = "identities/tamper-bot";
    let first_index: Value = setup.bao.root("GET", "/v1/secret/data/fence/index", None);
    let current: Value = setup.bao.root("GET", "/v1/secret/data/fence/identities/tamper-bot", None);
    let serial = current["data"]["data"]["serial"].as_u64().unwrap();
    let invalid_text = format!(
        "schema: 1\nidentities:\n  - name: tamper-bot\n    owner: fence-tests\n    purpose: vault test\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress:\n      - to: [127.0.0.1/8]\n        ports: [any]\n        protocol: tcp\n",
        cg.rel
    );
    let signed = key.sign(path, serial + 1, &invalid_text);
    let v = setup.bao.kv_put("fence/identities/tamper-bot", &signed.to_kv());
    point_index(&setup.bao, Some(&key), path, v, &signed);
    let refused = wait_error(&agent, "refused").expect("the agent reports the refused document");
    assert!(denied(&cg, &to), "the previous policy stays in force after an invalid document ({refused})");
    wait_polls(&agent, 2);
    let st = status(&agent);
    assert!(
        st["vault"]["last_error"].as_str().is_some_and(|e| e.contains("refused")) && st["vault"]["refusing"] == true,
        "the refusal is still reported polls later: {st:#}"
    );

    // 3. Tampered without the key: a document that allows everything with an old signature,
    //    and the index edited to name it (its signature kept).
    let mut tampered: SignedDocument = key.sign(path, serial + 2, &invalid_text);
    tampered.document = tampered.document.replace("127.0.0.1/8", "127.0.0.0/8");
    let v = setup.bao.kv_put("fence/identities/tamper-bot", &tampered.to_kv());
    point_index(&setup.bao, None, path, v, &tampered);
    let index_error = wait_error(&agent, "index: the signature does not verify");
    assert!(index_error.is_some(), "an index edited without the key is refused: {:#}", status(&agent));
    assert!(denied(&cg, &to), "a tampered index changes nothing");
    //    The same document named by a validly signed index: its own signature fails.
    point_index(&setup.bao, Some(&key), path, v, &tampered);
    let sig_error = wait_error(&agent, "identities/tamper-bot: the signature does not verify");
    assert!(sig_error.is_some(), "the agent refuses a tampered document: {:#}", status(&agent));
    assert!(denied(&cg, &to), "a tampered document changes nothing");

    // 4. Unsigned.
    let unsigned = SignedDocument {
        document: tampered.document.clone(),
        serial: serial + 3,
        key_id: String::new(),
        signature: String::new(),
    };
    let v = setup.bao.kv_put("fence/identities/tamper-bot", &unsigned.to_kv());
    point_index(&setup.bao, Some(&key), path, v, &unsigned);
    let unsigned_error = wait_error(&agent, "not signed");
    assert!(unsigned_error.is_some(), "the agent refuses an unsigned document: {:#}", status(&agent));
    assert!(denied(&cg, &to), "an unsigned document changes nothing");

    // 5. Replay: the first push's index, validly signed, written back as the newest version.
    setup.bao.kv_put("fence/index", &first_index["data"]["data"]);
    let replay_error = wait_error(&agent, "refusing a rollback");
    assert!(replay_error.is_some(), "a replayed older index is refused: {:#}", status(&agent));
    assert!(denied(&cg, &to), "a replayed index changes nothing");

    // 6. A proper push repairs all this and is applied (refusals do not hold up polling).
    setup.write_identity(
        "tamper-bot",
        &cg,
        &format!("[{{to: [127.0.0.1], ports: [{}], protocol: tcp}}]", listener.local_addr().unwrap().port()),
    );
    let out = setup.push(&setup.policies);
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "push says it replaces the vault's unverified copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allowed = wait_for(wait(30), || (!denied(&cg, &to)).then_some(()));
    assert!(allowed.is_some(), "the repaired policy is applied: {:#}", status(&agent));
    let st = wait_for(wait(10), || Some(status(&agent)).filter(|st| st["vault"]["last_error"].is_null()));
    assert!(st.is_some(), "the error clears: {:#}", status(&agent));

    // 7. The console does not build on an index it cannot verify: push stops (exit 4) until
    //    told to rebuild it from the documents that verify.
    let body = setup.bao.root("GET", "/v1/secret/data/fence/index", None);
    let mut broken = SignedDocument::from_kv(&body["data"]["data"]).unwrap();
    broken.document = broken.document.replace("\"schema\":1", "\"schema\":1,\"x\":0");
    setup.bao.kv_put("fence/index", &broken.to_kv());
    assert!(wait_error(&agent, "index: the signature does not verify").is_some(), "{:#}", status(&agent));
    let out = setup.push(&setup.policies);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "push on an untrusted index: {stderr}");
    assert!(stderr.contains("--rebuild-index"), "{stderr}");
    let out = setup.push_with(&setup.policies, &["--rebuild-index"]);
    assert!(out.status.success(), "push --rebuild-index: {}", String::from_utf8_lossy(&out.stderr));
    let st = wait_for(wait(10), || Some(status(&agent)).filter(|st| st["vault"]["last_error"].is_null()));
    assert!(st.is_some(), "a rebuilt index is accepted: {:#}", status(&agent));
    assert!(!denied(&cg, &to), "and the policy is still the repaired one");
    note(format!("refused: {refused}"));
}

/// Waits until the agent has polled the vault `n` more times (`vault.last_poll` changed `n`
/// times since the call).
fn wait_polls(agent: &Agent, n: usize) {
    let last_poll = || agent.status().vault.and_then(|v| v.last_poll);
    let mut last = last_poll();
    let mut changes = 0;
    let polled = wait_for(wait(30), || {
        let now = last_poll();
        if now != last {
            changes += 1;
            last = now;
        }
        (changes >= n).then_some(())
    });
    assert!(polled.is_some(), "the agent did not poll the vault {n} times: {:#}", status(agent));
}

/// Waits until the agent's status shows an error containing `what`.
fn wait_error(agent: &Agent, what: &str) -> Option<String> {
    wait_for(wait(30), || {
        let st = status(agent);
        st["vault"]["last_error"].as_str().filter(|e| e.contains(what)).map(str::to_owned)
    })
}

/// Points the index at `doc` (version `version` of `path`): signed by `key` as the key's
/// holder would (bypassing push's checks), or edited without it (the old signature kept).
fn point_index(bao: &Bao, key: Option<&SigningKey>, path: &str, version: u64, doc: &SignedDocument) {
    let body = bao.root("GET", "/v1/secret/data/fence/index", None);
    let current = SignedDocument::from_kv(&body["data"]["data"]).expect("the index");
    let mut index = Index::parse(&current.document).expect("the index's text");
    index.set(path, IndexEntry::of(doc, version));
    let text = index.to_text();
    let next = match key {
        Some(k) => k.sign("index", current.serial + 1, &text),
        None => SignedDocument { document: text, ..current },
    };
    bao.kv_put("fence/index", &next.to_kv());
}

fn outage_return_and_restart_on_cache() {
    let mut setup = Setup::new("vault-outage");
    let cg = TestCgroup::new("vault-outage");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let agent = setup.start_agent("vault-outage");
    setup.write_identity("outage-bot", &cg, "[]");
    assert!(setup.push(&setup.policies).status.success());
    assert!(wait_for(wait(30), || denied(&cg, &to).then_some(())).is_some(), "the policy is enforced");

    // The vault stops answering (SIGSTOP: it keeps its in-memory data): enforcement goes on,
    // the status shows the error.
    let pid = setup.bao.pid().expect("bao's pid");
    kill(pid, Signal::SIGSTOP).unwrap();
    let error = wait_for(wait(30), || {
        let st = status(&agent);
        (st["vault"]["consecutive_failures"].as_u64().unwrap_or(0) > 0).then(|| st["vault"]["last_error"].clone())
    });
    let resumed = kill(pid, Signal::SIGCONT);
    let error = error.expect("the status reports the unreachable vault");
    resumed.unwrap();
    assert!(denied(&cg, &to), "enforcement continues while the vault is down");
    // Back: the next polls succeed and clear the error.
    let back = wait_for(wait(60), || {
        let st = status(&agent);
        (st["vault"]["consecutive_failures"] == 0 && st["vault"]["last_error"].is_null()).then_some(())
    });
    assert!(back.is_some(), "sync resumes when the vault is back: {:#}", status(&agent));

    // The vault gone for good and the agent restarted: it enforces the cached set.
    drop(agent);
    setup.bao.stop();
    let agent = setup.start_agent("vault-outage-2");
    let st = status(&agent);
    assert_eq!(st["source"], "cache", "{st:#}");
    assert!(denied(&cg, &to), "the cached policy is enforced with the vault down");
    assert!(
        wait_for(wait(30), || status(&agent)["vault"]["last_error"].as_str().map(str::to_owned)).is_some(),
        "the status shows the vault's error"
    );
    // SIGHUP while the vault's (cached) policy is in force applies it again: the local files
    // (no identities) do not replace it.
    agent.reload();
    assert!(denied(&cg, &to), "SIGHUP keeps the vault's policy, not the local files");
    assert_eq!(status(&agent)["source"], "cache");
    // Invalid local policy files do not stop an agent that has a good cache.
    drop(agent);
    let agent =
        Agent::start_with("vault-outage-3", "schema: 1\nidentities:\n  - name: Not-Valid\n", &setup.agent_config);
    assert_eq!(status(&agent)["source"], "cache");
    assert!(denied(&cg, &to), "the cache is enforced though the local files are invalid");
    note(format!("while down: {error}"));
}

fn cas_conflict_reported() {
    let setup = Setup::new("vault-cas");
    let cg = TestCgroup::new("vault-cas");
    setup.write_identity("cas-bot", &cg, "[]");
    assert!(setup.push(&setup.policies).status.success());
    // Two consoles pull the same version.
    let pull = |dir: &Path| {
        let out =
            Command::new(agent_binary()).args(["policy", "pull", "-c"]).arg(&setup.console).arg(dir).output().unwrap();
        assert!(out.status.success(), "pull: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (a, b) = (setup.dir.path("console-a"), setup.dir.path("console-b"));
    pull(&a);
    pull(&b);
    assert!(a.join(".fence-vault.lock").exists());
    // A changes the identity and pushes; then B pushes its own change of the old version.
    let edit = |dir: &Path, port: u16| {
        let file = dir.join("cas-bot.yaml");
        let text = fs::read_to_string(&file).unwrap();
        let text = text.replace(
            "egress: []",
            &format!("egress:\n    - to: [127.0.0.1]\n      ports: [{port}]\n      protocol: tcp"),
        );
        fs::write(&file, text).unwrap();
    };
    edit(&a, 1111);
    edit(&b, 2222);
    let out = setup.push(&a);
    assert!(out.status.success(), "A's push: {}", String::from_utf8_lossy(&out.stderr));
    let before: Value = setup.bao.root("GET", "/v1/secret/metadata/fence/identities/cas-bot", None);
    let out = setup.push(&b);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "B's push must be refused as a conflict: {stderr}");
    assert!(stderr.contains("conflict") && stderr.contains("identities/cas-bot"), "{stderr}");
    let after: Value = setup.bao.root("GET", "/v1/secret/metadata/fence/identities/cas-bot", None);
    assert_eq!(before["data"]["current_version"], after["data"]["current_version"], "B did not overwrite A");
    note(stderr.lines().find(|l| l.contains("conflict")).unwrap_or_default());
}
