//! The broker's questions to the policy service: who may have which secret, and when.

use std::{fs, time::Duration};

use super::{
    grants::Grants,
    tests::{fixture, start_local},
};
use crate::{
    control::{Peer, protocol::GrantOp},
    kernel::grant_maps::FakeGrantMaps,
    policy::SecretSource,
};

const POLICY: &str = "schema: 1
identities:
  - name: a
    owner: tests
    purpose: secrets
    selectors: [{cgroup: /a}, {managed: true}]
    grants:
      - name: db
        egress: [{to: [10.9.9.9], ports: [5432], protocol: tcp}]
        approval: auto
    secrets:
      - {name: key, kv: {path: apps/a, key: k}}
      - {name: pg, dynamic: {role: database/creds/ro}, grant: db}
  - name: b
    owner: tests
    purpose: other
    selectors: [{cgroup: /b}]
    secrets:
      - {name: b-key, kv: {path: apps/b, key: k}}
";

fn peer(cgroup: &str, uid: u32) -> Peer {
    Peer { pid: 4242, uid, gid: uid, cgroup: Some(cgroup.into()), exe: None }
}

#[test]
fn a_fenced_caller_gets_tickets_for_its_own_identity_only() {
    let mut f = fixture("secret-tickets", false);
    fs::write(&f.service.deps.policy_paths[0], POLICY).unwrap();
    f.service.with_grants(
        Grants { kernel: Some(Box::new(FakeGrantMaps::default())), teardown: Err("test".into()), ..Grants::default() },
        Vec::new(),
    );
    start_local(&mut f);
    let s = &mut f.service;

    let t = s.secret_ticket("key", &peer("/a/job", 1000)).unwrap();
    assert_eq!((t.identity.as_str(), t.grant.is_none()), ("a", true));
    assert_eq!(t.spec.source, SecretSource::Kv { path: "apps/a".into(), key: "k".into() });

    let r = s.secret_ticket("b-key", &peer("/a", 1000)).unwrap_err();
    assert_eq!(r.identity.as_deref(), Some("a"));
    assert!(r.why.contains("no secret named \"b-key\"") && !r.needs_grant, "{r:?}");
    assert!(r.identity_id != 0, "the event carries the identity's number");

    let r = s.secret_ticket("key", &peer("/user.slice", 0)).unwrap_err();
    assert_eq!(r.identity, None, "root on the host is not an identity");
    assert!(r.why.contains("only a fenced process"), "{r:?}");

    let r = s.secret_ticket("pg", &peer("/a", 1000)).unwrap_err();
    assert!(r.needs_grant && r.kind == "dynamic", "{r:?}");
    let op = GrantOp::Request { target: "db".into(), ttl_seconds: 600, reason: "migration".into(), identity: None };
    let id = s.grant_op(op, &peer("/a", 1000)).unwrap().grants[0].grant.id.clone();
    let t = s.secret_ticket("pg", &peer("/a", 1000)).unwrap();
    let (grant, left) = t.grant.clone().unwrap();
    assert_eq!(grant, id);
    assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590), "{left:?}");
    assert!(s.broker_view().grants.contains(&id));
    assert!(s.broker_view().secrets.contains_key(&("a".to_owned(), "pg".to_owned())));

    s.grant_op(GrantOp::Revoke { id: id.clone(), reason: "done".into() }, &peer("/", 0)).unwrap();

    // Entering an identity with secrets gives them: only root may start processes in it.
    let e = s.enter("a", 4242, 1000).unwrap_err();
    assert!(matches!(e, super::queries::EnterError::Privileged(_)), "{e}");
    assert!(s.secret_ticket("pg", &peer("/a", 1000)).unwrap_err().needs_grant);
    assert!(!s.broker_view().grants.contains(&id));
}

#[test]
fn the_status_line_says_what_is_enforced_and_what_was_refused() {
    let mut f = fixture("status-line", false);
    fs::write(&f.service.deps.policy_paths[0], POLICY).unwrap();
    start_local(&mut f);
    let line = f.service.status_line();
    assert!(line.starts_with("enforcing 2 identities, local policy, sequence"), "{line}");
    fs::write(&f.service.deps.policy_paths[0], "schema: 1\nidentities:\n  - name: broken\n").unwrap();
    let _ = f.service.change(super::Change::Reload { by: None });
    let line = f.service.status_line();
    assert!(line.contains("1 policy change(s) refused since start"), "{line}");
}
