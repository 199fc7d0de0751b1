//! The broker's requests on the control sockets, end to end: the policy service's decision,
//! the fetch, the audit line, the answer. Answers that carry a value are built in a buffer
//! wiped when dropped; everything else (logs, audit lines, refusals) names the secret, never
//! its value.

use std::collections::BTreeMap;

use serde::Serialize;
use zeroize::Zeroizing;

use super::{
    Broker, Delivery, Ended, Value,
    audit::{self, Action, Requester, SecretFields},
};
use crate::{
    control::{
        Peer,
        protocol::{self, SecretFile, SecretOp, SecretRevoked},
    },
    service::{Refusal, ServiceHandle},
};

/// The answer line to `op` from `peer` (attested for `Get`).
pub async fn answer(op: SecretOp, peer: Peer, service: &ServiceHandle, broker: &Broker) -> Zeroizing<Vec<u8>> {
    match op {
        SecretOp::Get { name } => get(name, None, peer, service, broker).await,
        SecretOp::File { name, field } => get(name, Some(field), peer, service, broker).await,
        SecretOp::Revoke { name, identity } => {
            let ended = broker
                .end_leases(|l| {
                    (l.identity == identity && l.name == name).then(|| format!("revoked by uid {}", peer.uid))
                })
                .await;
            audit_ended(service, broker, &ended, Action::Revoked);
            let lease_ids = ended.into_iter().map(|e| e.lease_id).collect();
            Zeroizing::new(protocol::encode(&Ok(SecretRevoked { lease_ids })))
        }
    }
}

/// A request whose process the kernel could not vouch for (it exited, its pid may be
/// another's now): refused, audited and reported like any other refusal.
pub fn unattested(
    name: &str,
    peer: &Peer,
    why: String,
    service: &ServiceHandle,
    broker: &Broker,
) -> Zeroizing<Vec<u8>> {
    let refusal = Refusal {
        identity: None,
        kind: "",
        why,
        needs_grant: false,
        identity_id: fence_common::NO_IDENTITY,
        policy_version: 0,
    };
    refused(&refusal, name, peer, service, broker)
}

fn refused(refusal: &Refusal, name: &str, peer: &Peer, service: &ServiceHandle, broker: &Broker) -> Zeroizing<Vec<u8>> {
    let identity = refusal.identity.clone().unwrap_or_default();
    // The event goes through the event rate limit; the audit line through the broker's gate.
    broker.refused(refusal, name, peer);
    let Some(left_out) = broker.audit_gate(&identity, name, &refusal.why) else {
        return refuse(refusal.why.clone());
    };
    tracing::warn!(identity = %identity, secret = %name, pid = peer.pid, uid = peer.uid, why = %refusal.why, "secret refused");
    let fields = SecretFields {
        name: name.to_owned(),
        kind: refusal.kind,
        requester: Some(Requester::of(peer)),
        why: Some(refusal.why.clone()),
        left_out,
        ..SecretFields::default()
    };
    service.audit_secret(audit::record(Action::Refused, &identity, fields, broker.hostname(), jiff::Timestamp::now()));
    refuse(refusal.why.clone())
}

/// `secret-get` (`file`: `None`), or `secret-file` with the field asked for.
async fn get(
    name: String,
    file: Option<Option<String>>,
    peer: Peer,
    service: &ServiceHandle,
    broker: &Broker,
) -> Zeroizing<Vec<u8>> {
    let requester = Some(Requester::of(&peer));
    let ticket = match service.secret_ticket(name.clone(), peer.clone()).await {
        Ok(t) => t,
        Err(refusal) => return refused(&refusal, &name, &peer, service, broker),
    };
    let kind = ticket.spec.source.kind();
    let grant = ticket.grant.as_ref().map(|(id, _)| id.clone());
    match broker.fetch(&ticket).await {
        Ok(delivery) => {
            let (lease_id, ttl) = match &delivery.value {
                Value::Dynamic(l) => (Some(l.lease_id.clone()), Some(l.left().as_secs())),
                Value::Kv(_) => (None, None),
            };
            let fields = SecretFields {
                name: name.clone(),
                kind,
                lease_id,
                ttl_seconds: ttl,
                grant,
                cached: delivery.cached,
                renewed: delivery.renewed,
                requester,
                why: None,
                left_out: 0,
            };
            let answer = match &file {
                None => encode_value(&name, &delivery),
                Some(field) => {
                    match broker.write_file(&ticket, &delivery, field.as_deref(), peer.uid, peer.gid).await {
                        Ok(path) => {
                            let path = path.display().to_string();
                            tracing::info!(identity = %ticket.identity, secret = %name, path = %path, uid = peer.uid, "secret file written");
                            Zeroizing::new(protocol::encode(&Ok(SecretFile { path })))
                        }
                        Err(e) => {
                            return fetch_failed(
                                &name,
                                &ticket,
                                kind,
                                fields.grant.clone(),
                                fields.requester.clone(),
                                &e,
                                service,
                                broker,
                            );
                        }
                    }
                }
            };
            // A value served again is audited at most once a second (the others counted).
            let gate = match (delivery.cached && !delivery.renewed, file.is_some()) {
                (false, _) => Some(0),
                (true, false) => broker.audit_gate(&ticket.identity, &name, "served again"),
                (true, true) => broker.audit_gate(&ticket.identity, &name, "written again"),
            };
            if let Some(left_out) = gate {
                let fields = SecretFields { left_out, ..fields };
                tracing::info!(identity = %ticket.identity, secret = %name, kind, lease_id = fields.lease_id.as_deref().unwrap_or(""), cached = delivery.cached, pid = peer.pid, "secret issued");
                service.audit_secret(audit::record(
                    Action::Issued,
                    &ticket.identity,
                    fields,
                    broker.hostname(),
                    jiff::Timestamp::now(),
                ));
            }
            answer
        }
        Err(e) => fetch_failed(&name, &ticket, kind, grant, requester, &e, service, broker),
    }
}

/// Audit lines (and log lines) for leases that ended.
pub fn audit_ended(service: &ServiceHandle, broker: &Broker, ended: &[Ended], action: Action) {
    for e in ended {
        let action = if e.on_time { Action::Expired } else { action };
        tracing::info!(identity = %e.identity, secret = %e.name, lease_id = %e.lease_id, why = %e.why, revoked = e.revoked, action = action.as_str(), "secret lease ended");
        let fields = SecretFields {
            name: e.name.clone(),
            kind: "dynamic",
            lease_id: Some(e.lease_id.clone()),
            grant: e.grant.clone(),
            why: Some(e.why.clone()),
            ..SecretFields::default()
        };
        service.audit_secret(audit::record(action, &e.identity, fields, broker.hostname(), jiff::Timestamp::now()));
    }
}

fn refuse(why: String) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(protocol::encode::<()>(&Err(why)))
}

/// `{"ok":true,"name":..,"kind":"kv","value":..}` or
/// `{"ok":true,"name":..,"kind":"dynamic","fields":{..},"lease_id":..,"ttl":..}`, written into a
/// buffer sized up front (no reallocation leaves a copy behind) and wiped when dropped.
fn encode_value(name: &str, d: &Delivery) -> Zeroizing<Vec<u8>> {
    #[derive(Serialize)]
    struct Got<'a> {
        ok: bool,
        name: &'a str,
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fields: Option<BTreeMap<&'a str, &'a str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lease_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u64>,
        cached: bool,
    }
    let got = match &d.value {
        Value::Kv(v) => Got {
            ok: true,
            name,
            kind: "kv",
            value: Some(v.expose()),
            fields: None,
            lease_id: None,
            ttl: None,
            cached: d.cached,
        },
        Value::Dynamic(l) => Got {
            ok: true,
            name,
            kind: "dynamic",
            value: None,
            fields: Some(l.fields.iter().map(|(k, v)| (k.as_str(), v.expose())).collect()),
            lease_id: Some(&l.lease_id),
            ttl: Some(l.left().as_secs()),
            cached: d.cached,
        },
    };
    let secret_bytes: usize = match &d.value {
        Value::Kv(v) => v.expose().len(),
        Value::Dynamic(l) => l.fields.iter().map(|(k, v)| k.len() + v.expose().len()).sum(),
    };
    // JSON escapes a byte into at most 6.
    let mut out = Zeroizing::new(Vec::with_capacity(secret_bytes * 6 + name.len() * 6 + 1024));
    if serde_json::to_writer(&mut *out, &got).is_err() {
        return refuse("encoding the answer failed".into());
    }
    out.push(b'\n');
    out
}

/// The answer (and audit line) when the broker could not give what the policy allows.
#[allow(clippy::too_many_arguments)]
fn fetch_failed(
    name: &str,
    ticket: &super::Ticket,
    kind: &'static str,
    grant: Option<String>,
    requester: Option<Requester>,
    e: &super::BrokerError,
    service: &ServiceHandle,
    broker: &Broker,
) -> Zeroizing<Vec<u8>> {
    let why = format!("secret \"{name}\": {e}");
    let Some(left_out) = broker.audit_gate(&ticket.identity, name, &why) else { return refuse(why) };
    tracing::warn!(identity = %ticket.identity, secret = %name, error = %e, "secret could not be given");
    let fields = SecretFields {
        name: name.to_owned(),
        kind,
        grant,
        requester,
        why: Some(why.clone()),
        left_out,
        ..SecretFields::default()
    };
    service.audit_secret(audit::record(
        Action::Refused,
        &ticket.identity,
        fields,
        broker.hostname(),
        jiff::Timestamp::now(),
    ));
    refuse(why)
}
