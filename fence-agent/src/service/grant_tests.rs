//! Grants through the policy service, over fake policy maps and a fake grant table: who may
//! ask, what is refused, and that a grant's rules reach the kernel tagged with its slot and
//! leave it at its end.

use std::fs;

use super::{
    grants::Grants,
    tests::{Fixture, fixture, start_local},
};
use crate::{
    control::{Peer, protocol::GrantOp},
    grants::Phase,
    kernel::{MapEntry, grant_maps::FakeGrantMaps},
};

const POLICY: &str = "schema: 1
identities:
  - name: a
    owner: tests
    purpose: grants
    selectors: [{cgroup: /a}]
    egress:
      - to: [10.0.0.1]
        ports: [443]
        protocol: tcp
    grants:
      - name: db
        egress: [{to: [10.9.9.9], ports: [5432], protocol: tcp}]
        max_ttl: 1h
        approval: auto
      - name: ops
        egress: [{to: [10.7.7.7], ports: [22], protocol: tcp}]
  - name: b
    owner: tests
    purpose: other
    selectors: [{cgroup: /b}]
";

fn with_grants(test: &str) -> (Fixture, FakeGrantMaps) {
    let mut f = fixture(test, false);
    fs::write(&f.service.deps.policy_paths[0], POLICY).unwrap();
    let table = FakeGrantMaps::default();
    f.service.with_grants(
        Grants { kernel: Some(Box::new(table.clone())), teardown: Err("test".into()), ..Grants::default() },
        Vec::new(),
    );
    start_local(&mut f);
    (f, table)
}

fn fenced(cgroup: &str) -> Peer {
    Peer { pid: 4242, uid: 1000, gid: 1000, cgroup: Some(cgroup.into()), exe: Some("/usr/bin/agent".into()) }
}

fn root() -> Peer {
    Peer { pid: 1, uid: 0, gid: 0, cgroup: Some("/".into()), exe: None }
}

fn request(target: &str, ttl: u64, identity: Option<&str>) -> GrantOp {
    GrantOp::Request {
        target: target.into(),
        ttl_seconds: ttl,
        reason: "migration".into(),
        identity: identity.map(Into::into),
    }
}

/// The live Net4 entries of identity `id` as (address, ports text).
fn net4(f: &Fixture) -> Vec<String> {
    f.service
        .kernel
        .maps()
        .live()
        .iter()
        .filter_map(|e| match e {
            MapEntry::Net4(n) => Some(format!(
                "{:?} {}",
                n.addr,
                crate::kernel::port_rules_text(&n.rules.rules[..n.rules.count as usize])
            )),
            _ => None,
        })
        .collect()
}

fn actions(f: &Fixture) -> Vec<String> {
    fs::read_to_string(f.dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]["action"].as_str().unwrap().to_owned())
        .filter(|a| a.starts_with("grant-"))
        .collect()
}

#[test]
fn an_auto_grant_requested_from_inside_is_compiled_with_its_slot_and_ends_on_revoke() {
    let (mut f, table) = with_grants("grant-auto");
    let reply = f.service.grant_op(request("db", 600, None), &fenced("/a/job")).unwrap();
    let g = &reply.grants[0].grant;
    assert_eq!((g.identity.as_str(), g.requester.pid, g.requester.cgroup.as_deref()), ("a", 4242, Some("/a/job")));
    let Phase::Active { slot, .. } = g.phase else { panic!("{:?}", g.phase) };
    assert!(table.slots.lock().unwrap()[&slot].0.expires_ns > 0, "the slot's end is in the kernel's table");
    assert!(
        net4(&f).iter().any(|e| e.starts_with("[10, 9, 9, 9]") && e.contains(&format!("5432/tcp grant={slot}"))),
        "{:?}",
        net4(&f)
    );
    let id = g.id.clone();
    f.service.grant_op(GrantOp::Revoke { id: id.clone(), reason: "done".into() }, &root()).unwrap();
    assert_eq!(table.slots.lock().unwrap()[&slot].0.expires_ns, 0, "revocation closes the slot at once");
    assert!(!net4(&f).iter().any(|e| e.starts_with("[10, 9, 9, 9]")), "the rules leave the kernel: {:?}", net4(&f));
    assert!(matches!(f.service.grants.book.get(&id).unwrap().phase, Phase::Revoked { .. }));
    assert_eq!(actions(&f), ["grant-requested", "grant-active", "grant-revoked"]);
}

#[test]
fn a_console_grant_waits_for_a_person_and_a_denial_ends_it() {
    let (mut f, _) = with_grants("grant-console");
    let reply = f.service.grant_op(request("ops", 60, None), &fenced("/a")).unwrap();
    let id = reply.grants[0].grant.id.clone();
    assert_eq!(reply.grants[0].grant.phase, Phase::Pending);
    assert!(!net4(&f).iter().any(|e| e.starts_with("[10, 7, 7, 7]")));
    // The workload cannot approve its own request, not even as root inside its fence; root on
    // the host approves it.
    let fenced_root = Peer { uid: 0, ..fenced("/a") };
    let e = f.service.grant_op(GrantOp::Approve { id: id.clone() }, &fenced_root).unwrap_err();
    assert!(e.contains("outside every fence"), "{e}");
    f.service.grant_op(GrantOp::Approve { id: id.clone() }, &root()).unwrap();
    assert!(net4(&f).iter().any(|e| e.starts_with("[10, 7, 7, 7]")));
    let again = f.service.grant_op(GrantOp::Approve { id: id.clone() }, &root()).unwrap_err();
    assert!(again.contains("not pending"), "{again}");
    // One open grant per target: asking again while it is active is refused.
    let again = f.service.grant_op(request("ops", 60, None), &fenced("/a")).unwrap_err();
    assert!(again.contains("already active"), "{again}");
    f.service.grant_op(GrantOp::Revoke { id: id.clone(), reason: "done".into() }, &root()).unwrap();
    let second = f.service.grant_op(request("ops", 60, None), &fenced("/a")).unwrap().grants[0].grant.id.clone();
    f.service.grant_op(GrantOp::Deny { id: second.clone(), reason: "no".into() }, &root()).unwrap();
    assert!(matches!(f.service.grants.book.get(&second).unwrap().phase, Phase::Denied { .. }));
    assert_eq!(
        actions(&f),
        ["grant-requested", "grant-approved", "grant-active", "grant-revoked", "grant-requested", "grant-denied"]
    );
}

#[test]
fn requests_that_must_be_refused_are_refused_and_grant_nothing() {
    let (mut f, table) = with_grants("grant-refused");
    let refused = |f: &mut Fixture, op: GrantOp, peer: Peer| f.service.grant_op(op, &peer).unwrap_err();
    let e = refused(&mut f, request("db", 600, Some("b")), fenced("/a"));
    assert!(e.contains("only request grants for its own identity"), "{e}");
    let e = refused(&mut f, request("db", 7200, None), fenced("/a"));
    assert!(e.contains("longer than grant \"db\" allows") && e.contains("1h"), "{e}");
    let e = refused(&mut f, request("nope", 60, None), fenced("/a"));
    assert!(e.contains("may request: db, ops"), "{e}");
    let e = refused(&mut f, request("db", 60, None), fenced("/b"));
    assert!(e.contains("has no grantable targets"), "{e}");
    let e = refused(
        &mut f,
        request("db", 60, None),
        Peer { pid: 7, uid: 1000, gid: 1000, cgroup: Some("/user.slice".into()), exe: None },
    );
    assert!(e.contains("only a fenced process"), "{e}");
    let e = refused(&mut f, request("db", 60, None), root());
    assert!(e.contains("--identity"), "{e}");
    let e = refused(
        &mut f,
        GrantOp::Request { target: "db".into(), ttl_seconds: 60, reason: "a\u{1b}[2J".into(), identity: None },
        fenced("/a"),
    );
    assert!(e.contains("--reason"), "{e}");
    let e = refused(
        &mut f,
        GrantOp::Request { target: "db".into(), ttl_seconds: 60, reason: "ok \u{202E}txt.exe".into(), identity: None },
        fenced("/a"),
    );
    assert!(e.contains("bidirectional"), "a reason that reorders text on a terminal: {e}");
    assert!(table.slots.lock().unwrap().is_empty(), "no slot was opened");
    assert!(actions(&f).is_empty(), "nothing was requested");
    // Root on the host may ask for any identity.
    let ok = f.service.grant_op(request("db", 60, Some("a")), &root()).unwrap();
    assert!(matches!(ok.grants[0].grant.phase, Phase::Active { .. }));
    // A fenced process sees only its own identity's grants.
    assert_eq!(f.service.grant_op(GrantOp::List { identity: None }, &fenced("/b")).unwrap().grants.len(), 0);
    assert_eq!(f.service.grant_op(GrantOp::List { identity: None }, &fenced("/a")).unwrap().grants.len(), 1);
}

#[test]
fn a_grant_past_its_end_is_expired_and_one_whose_target_left_the_policy_is_revoked() {
    let (mut f, table) = with_grants("grant-expiry");
    let id = f.service.grant_op(request("db", 600, None), &fenced("/a")).unwrap().grants[0].grant.id.clone();
    let ops = f.service.grant_op(request("ops", 600, None), &fenced("/a")).unwrap().grants[0].grant.id.clone();
    f.service.grant_op(GrantOp::Approve { id: ops.clone() }, &root()).unwrap();
    // The end comes (the boot clock is moved by rewriting the end into the past).
    if let Some(g) = f.service.grants.book.get_mut(&id)
        && let Phase::Active { expires_boot_ns, .. } = &mut g.phase
    {
        *expires_boot_ns = 1;
    }
    f.service.grants_due();
    assert!(matches!(f.service.grants.book.get(&id).unwrap().phase, Phase::Expired { .. }));
    assert!(!net4(&f).iter().any(|e| e.starts_with("[10, 9, 9, 9]")));
    // The policy loses the `ops` target: its grant ends.
    fs::write(
        &f.service.deps.policy_paths[0],
        POLICY.replace("      - name: ops\n        egress: [{to: [10.7.7.7], ports: [22], protocol: tcp}]\n", ""),
    )
    .unwrap();
    f.service.change(super::Change::Reload { by: None });
    f.service.grants_due();
    assert!(matches!(f.service.grants.book.get(&ops).unwrap().phase, Phase::Revoked { ref by, .. } if by == "policy"));
    assert!(table.slots.lock().unwrap().values().all(|(s, _)| s.expires_ns == 0), "every slot closed");
}

mod vault {
    //! Console decisions through the vault, as the vault task hands them over (signatures
    //! already checked): bound to the grant, the host, the request and a time.

    use super::*;
    use crate::vault::layout::grants::{Decision, Verdict};

    fn with_vault(test: &str) -> Fixture {
        let mut f = fixture(test, true);
        fs::write(&f.service.deps.policy_paths[0], POLICY).unwrap();
        let table = FakeGrantMaps::default();
        f.service.with_grants(
            Grants { kernel: Some(Box::new(table)), teardown: Err("test".into()), ..Grants::default() },
            Vec::new(),
        );
        start_local(&mut f);
        f
    }

    fn decision(id: &str, verdict: Verdict) -> Decision {
        Decision {
            id: id.into(),
            host: "test-host".into(),
            identity: "a".into(),
            target: "ops".into(),
            ttl_seconds: 60,
            verdict,
            reason: String::new(),
            not_after: jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(600)).unwrap().to_string(),
        }
    }

    fn signed(decision: Decision, serial: u64) -> crate::service::grant_vault::Signed {
        crate::service::grant_vault::Signed { decision, key_id: "k1".into(), serial }
    }

    fn state(f: &Fixture, id: &str) -> &'static str {
        f.service.grants.book.get(id).unwrap().phase.name()
    }

    #[test]
    fn console_requests_are_published_once_and_decisions_bound_to_everything() {
        let mut f = with_vault("grant-vault");
        let id = f.service.grant_op(request("ops", 60, None), &fenced("/a")).unwrap().grants[0].grant.id.clone();
        let work = f.service.grant_work();
        assert_eq!((work.host.as_str(), work.publish.len(), work.watch.len()), ("test-host", 1, 1));
        f.service.grants_published(std::slice::from_ref(&id));
        assert!(f.service.grant_work().publish.is_empty(), "published once");
        // Each a refusal that changes nothing.
        let refused: Vec<Decision> = vec![
            Decision { host: "other-host".into(), ..decision(&id, Verdict::Approve) },
            Decision { target: "db".into(), ..decision(&id, Verdict::Approve) },
            Decision { ttl_seconds: 3600, ..decision(&id, Verdict::Approve) },
            Decision { not_after: "2020-01-01T00:00:00Z".into(), ..decision(&id, Verdict::Approve) },
            Decision { id: "g-0000000000000000".into(), ..decision(&id, Verdict::Approve) },
        ];
        for (version, d) in refused.into_iter().enumerate() {
            f.service.grant_decided(&id, version as u64 + 1, Ok(signed(d, version as u64 + 1)));
            assert_eq!(state(&f, &id), "pending");
        }
        f.service.grant_decided(&id, 10, Err("signed by an unknown key".into()));
        assert_eq!(state(&f, &id), "pending");
        // An old version is not read again; the right decision approves.
        f.service.grant_decided(&id, 10, Ok(signed(decision(&id, Verdict::Approve), 20)));
        assert_eq!(state(&f, &id), "pending", "version 10 was already acted on");
        f.service.grant_decided(&id, 11, Ok(signed(decision(&id, Verdict::Approve), 20)));
        assert_eq!(state(&f, &id), "active");
        // A replay of the approval as a new version: refused, the grant stays as it was.
        let before = f.service.grants.book.get(&id).unwrap().phase.clone();
        f.service.grant_decided(&id, 12, Ok(signed(decision(&id, Verdict::Approve), 21)));
        assert_eq!(f.service.grants.book.get(&id).unwrap().phase, before);
        // A superseded decision put back (a lower serial than one acted on): refused.
        f.service.grant_decided(&id, 13, Ok(signed(decision(&id, Verdict::Revoke), 19)));
        assert_eq!(state(&f, &id), "active");
        f.service.grant_decided(&id, 14, Ok(signed(decision(&id, Verdict::Revoke), 22)));
        assert_eq!(state(&f, &id), "revoked");
        let refusals = actions(&f).iter().filter(|a| *a == "grant-decision-refused").count();
        assert_eq!(refusals, 8, "{:?}", actions(&f));
    }
}
