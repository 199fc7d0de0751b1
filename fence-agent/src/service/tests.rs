//! The policy service driven through fake policy maps: no kernel, a temporary directory as
//! the cgroup hierarchy, real policy files.

use std::{fs, path::PathBuf, sync::Arc};

use super::*;
use crate::{
    control::protocol::{Source, StatusReply},
    events::Directory,
    kernel::{MapEntry, fake::FakeMaps},
    vault::{
        layout::{HostFacts, SignedDocument},
        sync::{Fetched, VaultSet},
    },
};

/// A service over fake maps, in its own temporary directory.
pub(super) struct Fixture {
    pub(super) dir: PathBuf,
    pub(super) service: PolicyService<FakeMaps>,
    /// Where the fake attacher has the cgroup programs.
    attached: Arc<std::sync::Mutex<Attached>>,
    _cleanup: tempfile::TempDir,
}

/// Where the cgroup programs are attached, and a point where attaching fails.
#[derive(Default)]
struct Attached {
    points: std::collections::BTreeSet<String>,
    fail_at: Option<String>,
    /// Points whose cgroup was "made again".
    stale: std::collections::BTreeSet<String>,
    /// Every successful attach, in order.
    log: Vec<String>,
}

struct FakeAttacher(Arc<std::sync::Mutex<Attached>>);

impl Attacher for FakeAttacher {
    fn points(&self) -> Vec<String> {
        self.0.lock().unwrap().points.iter().cloned().collect()
    }
    fn attach(&mut self, point: &str) -> Result<(), crate::kernel::loader::LoadError> {
        let mut a = self.0.lock().unwrap();
        if a.fail_at.as_deref() == Some(point) {
            return Err(crate::kernel::loader::LoadError::MissingProgram("injected"));
        }
        a.points.insert(point.to_owned());
        a.stale.remove(point);
        a.log.push(point.to_owned());
        Ok(())
    }
    fn detach(&mut self, point: &str) {
        self.0.lock().unwrap().points.remove(point);
    }
    fn stale(&self) -> Vec<String> {
        self.0.lock().unwrap().stale.iter().cloned().collect()
    }
}

fn attached(f: &Fixture) -> Vec<String> {
    f.attached.lock().unwrap().points.iter().cloned().collect()
}

fn identity(name: &str, purpose: &str) -> String {
    format!(
        "schema: 1\nidentities:\n  - name: {name}\n    owner: tests\n    purpose: {purpose}\n    selectors: [{{cgroup: /{name}}}]\n    egress:\n      - to: [10.0.0.1]\n        ports: [443]\n        protocol: tcp\n"
    )
}

pub(super) fn fixture(test: &str, with_vault: bool) -> Fixture {
    let guard = tempfile::Builder::new().prefix(&format!("fence-service-{test}-")).tempdir().unwrap();
    let dir = guard.path().to_path_buf();
    let root = dir.join("cgroup");
    for name in ["a", "b", "c"] {
        fs::create_dir_all(root.join(name)).unwrap();
        fs::write(root.join(name).join("cgroup.procs"), "").unwrap();
    }
    let policy = dir.join("policy.yaml");
    fs::write(&policy, identity("a", "first")).unwrap();
    let deps = Deps {
        cgroups: Cgroups::at(root),
        host: HostProtection::default(),
        policy_paths: vec![policy],
        hostname: "test-host".into(),
        ids_path: None,
        secret_files: None,
        fences: Vec::new(),
    };
    let views = Views {
        directory: Arc::new(std::sync::RwLock::new(Directory::default())),
        files: None,
        watcher: None,
        audit: AuditLog::open(&dir.join("audit.jsonl")).unwrap(),
        metrics: Metrics::new(),
    };
    let vault = with_vault.then(|| {
        let host = HostFacts { hostname: "test-host".into(), labels: Default::default() };
        VaultState::new(host, dir.join("policy-cache.json"), SyncStatus::default()).0
    });
    let attached = Arc::new(std::sync::Mutex::new(Attached::default()));
    let attacher = Box::new(FakeAttacher(attached.clone()));
    let service =
        PolicyService::new(Generations::new(FakeMaps::default()).unwrap(), Some(attacher), deps, views, vault);
    Fixture { dir, service, attached, _cleanup: guard }
}

pub(super) fn start_local(f: &mut Fixture) {
    let local = load_policy(&f.service.deps.policy_paths, &f.service.deps.cgroups);
    f.service.start(local, None).unwrap();
}

/// A vault set holding identity documents (the service trusts the sync task's verification).
fn vault_set(docs: &[(&str, &str)], index_version: u64) -> VaultSet {
    let doc = |text: &str, serial| SignedDocument {
        document: text.to_owned(),
        serial,
        key_id: String::new(),
        signature: String::new(),
    };
    VaultSet {
        index: Some(Fetched { path: "index".into(), version: index_version, doc: doc("index", index_version) }),
        assignments: None,
        identities: docs
            .iter()
            .map(|(name, purpose)| Fetched {
                path: format!("identities/{name}"),
                version: index_version,
                doc: doc(&identity(name, purpose), index_version),
            })
            .collect(),
    }
}

fn status(f: &mut Fixture) -> StatusReply {
    f.service.status()
}

fn purposes_in_audit(f: &Fixture) -> Vec<String> {
    fs::read_to_string(f.dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["event"]["action"].as_str().unwrap(), v["fence"]["purpose"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn a_failed_apply_leaves_nothing_changed() {
    let mut f = fixture("failed", false);
    start_local(&mut f);
    let kernel_before = f.service.kernel.dump_live().unwrap();
    let directory_before = format!("{:?}", f.service.views.directory.read().unwrap());
    let ids_before = format!("{:?}", f.service.ids);
    let audit_before = purposes_in_audit(&f);
    assert_eq!(audit_before, ["identity-created first"]);
    // A new identity and a change, refused by the kernel half-way.
    fs::write(&f.service.deps.policy_paths[0], format!("{}{}", identity("a", "second"), "")).unwrap();
    let two = format!(
        "{}  - name: b\n    owner: tests\n    purpose: new\n    selectors: [{{cgroup: /b}}]\n",
        identity("a", "second")
    );
    fs::write(&f.service.deps.policy_paths[0], two).unwrap();
    f.service.kernel.maps_mut().fail_after = Some(2);
    let outcome = f.service.change(Change::Reload { by: None });
    assert!(matches!(&outcome, Outcome::Refused(e) if e.contains("injected failure")), "{outcome:?}");
    assert_eq!(f.service.kernel.dump_live().unwrap(), kernel_before, "the kernel's live policy");
    assert_eq!(format!("{:?}", f.service.views.directory.read().unwrap()), directory_before, "the event directory");
    assert_eq!(format!("{:?}", f.service.ids), ids_before, "the identity numbering");
    assert_eq!(purposes_in_audit(&f), audit_before, "nothing audited");
    let st = status(&mut f);
    assert_eq!((st.handled.applied, st.handled.refused), (0, 1));
    assert_eq!(st.policy.len(), 1, "the policy in force is the first one");
    assert!(f.service.views.metrics.render().contains("fence_policy_rejections_total 1\n"));
    // The same change, with the kernel working again, applies whole.
    f.service.kernel.maps_mut().fail_after = None;
    assert!(matches!(f.service.change(Change::Reload { by: None }), Outcome::Applied { sequence: 2 }));
    assert_eq!(status(&mut f).policy.len(), 2);
}

#[test]
fn a_policy_error_is_refused_before_the_kernel_is_touched() {
    let mut f = fixture("invalid", false);
    start_local(&mut f);
    let inserted = f.service.kernel.maps().inserted.len();
    fs::write(&f.service.deps.policy_paths[0], identity("a", "x").replace("443", "70000")).unwrap();
    let outcome = f.service.change(Change::Reload { by: None });
    assert!(matches!(&outcome, Outcome::Refused(e) if e.contains("70000")), "{outcome:?}");
    assert_eq!(f.service.kernel.maps().inserted.len(), inserted);
}

#[test]
fn candidates_racing_are_applied_in_the_order_they_arrive() {
    let mut f = fixture("race", true);
    start_local(&mut f);
    let (handle, inbox) = channel();
    let Fixture { dir: fixture_dir, service, _cleanup, .. } = f;
    let thread = service.spawn(inbox).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (first, second) = runtime.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h1 = handle.clone();
        let a = tokio::spawn(async move {
            let outcome = h1.change(Change::Vault(Box::new(vault_set(&[("a", "from-vault-1")], 2)))).await;
            let _ = tx.send(());
            outcome
        });
        let h2 = handle.clone();
        let b = tokio::spawn(async move {
            rx.await.unwrap();
            h2.change(Change::Vault(Box::new(vault_set(&[("a", "from-vault-2")], 3)))).await
        });
        (a.await.unwrap(), b.await.unwrap())
    });
    assert_eq!(first, Outcome::Applied { sequence: 2 });
    assert_eq!(second, Outcome::Applied { sequence: 3 });
    handle.stop();
    thread.join().unwrap();
    let audit = fs::read_to_string(fixture_dir.join("audit.jsonl")).unwrap();
    let order: Vec<&str> = audit.lines().filter_map(|l| l.split("\"purpose\":\"").nth(1)?.split('"').next()).collect();
    assert_eq!(order, ["first", "from-vault-1", "from-vault-2"]);
}

#[test]
fn a_vault_candidate_during_a_reload_is_neither_lost_nor_applied_twice() {
    let mut f = fixture("reload-vault", true);
    start_local(&mut f);
    let v1 = vault_set(&[("a", "vault-1")], 2);
    assert_eq!(f.service.change(Change::Vault(Box::new(v1.clone()))), Outcome::Applied { sequence: 2 });
    // SIGHUP and the next vault set arrive together; the poll that found it races the apply
    // and offers it once more.
    let v2 = vault_set(&[("a", "vault-2")], 3);
    let (handle, inbox) = channel();
    let mut replies = Vec::new();
    for change in
        [Change::Reload { by: None }, Change::Vault(Box::new(v2.clone())), Change::Vault(Box::new(v2.clone()))]
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        handle.tx.send(Message::Change { change, reply: Some(reply) }).unwrap();
        replies.push(answer);
    }
    drop(handle);
    let service = &mut f.service;
    for message in inbox.0.try_iter() {
        service.handle(message);
    }
    let outcomes: Vec<Outcome> = replies.into_iter().map(|mut r| r.try_recv().unwrap()).collect();
    assert_eq!(
        outcomes,
        [Outcome::Applied { sequence: 3 }, Outcome::Applied { sequence: 4 }, Outcome::Unchanged],
        "the reload re-applies the vault's set in force (not the local files), then the new set once"
    );
    let vault = service.vault.as_ref().unwrap();
    assert_eq!(vault.in_force.borrow().set, v2, "the set in force is published to the sync task");
    assert_eq!(vault.status.source, Source::Vault);
    let live = service.live.as_ref().unwrap();
    assert_eq!(live.set.identities[0].purpose, "vault-2");
    let changed = fs::read_to_string(f.dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("identity-changed") && l.contains("vault-2"))
        .count();
    assert_eq!(changed, 1, "vault-2 was applied exactly once");
}

#[test]
fn expiry_marks_identities_deny_all_and_files_changes_re_resolve_only_when_needed() {
    let mut f = fixture("expiry", false);
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)).to_string();
    fs::write(
        &f.service.deps.policy_paths[0],
        identity("a", "x").replace("    selectors:", &format!("    expires: {soon}\n    selectors:")),
    )
    .unwrap();
    start_local(&mut f);
    assert!(f.service.next_expiry().is_some());
    assert_eq!(f.service.change(Change::Expiry), Outcome::Unchanged, "not due yet");
    assert_eq!(f.service.change(Change::Files(None)), Outcome::Unchanged, "nothing on disk changed");
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(7200);
    assert!(f.service.expire_due(later).unwrap().is_some());
    let live = f.service.kernel.maps().live().to_vec();
    assert!(
        live.iter()
            .any(|e| matches!(e, MapEntry::Identity { info, .. } if info.flags & fence_common::IDENTITY_DENY_ALL != 0))
    );
    assert!(!live.iter().any(|e| matches!(e, MapEntry::Net4(_))), "deny-all: no allow entries");
    assert!(purposes_in_audit(&f).iter().any(|a| a.starts_with("identity-expired")));
}

#[test]
fn cgroup_programs_follow_the_policy_and_a_failed_apply_detaches_what_it_attached() {
    let mut f = fixture("attach", false);
    start_local(&mut f);
    assert_eq!(attached(&f), ["/a"]);
    // b joins, a leaves: b is attached before the flip, a detached after.
    fs::write(&f.service.deps.policy_paths[0], identity("b", "x")).unwrap();
    assert!(matches!(f.service.change(Change::Reload { by: None }), Outcome::Applied { .. }));
    assert_eq!(attached(&f), ["/b"]);
    // c cannot be attached: refused, nothing changes, c is not left attached.
    let two = format!(
        "{}  - name: c\n    owner: tests\n    purpose: p\n    selectors: [{{cgroup: /c}}]\n",
        identity("b", "x")
    );
    fs::write(&f.service.deps.policy_paths[0], two).unwrap();
    f.attached.lock().unwrap().fail_at = Some("/c".into());
    assert!(matches!(f.service.change(Change::Reload { by: None }), Outcome::Refused(e) if e.contains("injected")));
    assert_eq!(attached(&f), ["/b"]);
    // The kernel fails after c was attached: c is detached again.
    f.attached.lock().unwrap().fail_at = None;
    f.service.kernel.maps_mut().fail_after = Some(0);
    assert!(matches!(f.service.change(Change::Reload { by: None }), Outcome::Refused(_)));
    assert_eq!(attached(&f), ["/b"]);
    // And once the kernel works, c joins.
    f.service.kernel.maps_mut().fail_after = None;
    assert!(matches!(f.service.change(Change::Reload { by: None }), Outcome::Applied { .. }));
    assert_eq!(attached(&f), ["/b", "/c"]);
    // b's cgroup is made again at the same path: the next apply attaches to the new one.
    f.attached.lock().unwrap().stale.insert("/b".into());
    let before = f.attached.lock().unwrap().log.len();
    fs::write(&f.service.deps.policy_paths[0], identity("b", "again")).unwrap();
    let outcome = f.service.change(Change::Reload { by: None });
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    assert_eq!(attached(&f), ["/b"]);
    assert_eq!(f.attached.lock().unwrap().log[before..], ["/b".to_owned()], "b attached again");
}
