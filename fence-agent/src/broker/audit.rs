//! The broker in the audit log (ISO 27001 5.16, NIST IA-5 evidence): who obtained which secret
//! (its name, never its value), under which lease and for how long; refusals; lease ends. One
//! JSON line each, in the same ECS shape as the identity and grant lines.

use jiff::Timestamp;
use serde::Serialize;

use crate::audit::{AuditEvent, Head};

/// One broker line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecretRecord {
    #[serde(flatten)]
    pub head: Head,
    pub event: AuditEvent,
    pub fence: SecretFence,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecretFence {
    pub schema_version: u32,
    /// Empty when the caller is not fenced.
    pub identity: String,
    pub secret: SecretFields,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SecretFields {
    pub name: String,
    /// `kv` or `dynamic` (empty when the name is unknown).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The grant the secret depends on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Served from the broker's cache (KV) or an existing lease.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// A lease held, renewed by this request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renewed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    /// Why it was refused, or why a lease ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Lines like this one left out in the second before it (a workload asking in a loop).
    #[serde(skip_serializing_if = "is_zero")]
    pub left_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The process that asked, as the kernel attested it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Requester {
    pub pid: u32,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Requester {
    pub fn of(peer: &crate::control::Peer) -> Requester {
        Requester { pid: peer.pid, uid: peer.uid, executable: peer.exe.clone(), cgroup: peer.cgroup.clone() }
    }
}

/// The broker's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Issued,
    Refused,
    /// A lease ended on time (its grant's end, its ttl).
    Expired,
    /// A lease ended early (`secret revoke`, the identity removed, the agent stopping).
    Revoked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issued => "secret-issued",
            Action::Refused => "secret-refused",
            Action::Expired => "secret-expired",
            Action::Revoked => "secret-revoked",
        }
    }

    /// ECS `event.*` for the `iam` category: a type it expects, and the outcome.
    fn event(self) -> AuditEvent {
        match self {
            Action::Issued => AuditEvent::iam(self.as_str(), "info"),
            Action::Refused => AuditEvent::iam_failure(self.as_str(), "info"),
            Action::Expired | Action::Revoked => AuditEvent::iam(self.as_str(), "deletion"),
        }
    }
}

/// The line for `action`.
pub fn record(action: Action, identity: &str, fields: SecretFields, host: &str, now: Timestamp) -> SecretRecord {
    let whom = if identity.is_empty() { "an unfenced process".to_owned() } else { identity.to_owned() };
    let message = match &fields.why {
        Some(why) => format!("{} {:?} for {whom}: {why}", action.as_str(), fields.name),
        None => format!("{} {:?} for {whom}", action.as_str(), fields.name),
    };
    SecretRecord {
        head: Head::new(now, host, message),
        event: action.event(),
        fence: SecretFence {
            schema_version: crate::events::record::EVENT_SCHEMA_VERSION,
            identity: identity.to_owned(),
            secret: fields,
        },
    }
}
