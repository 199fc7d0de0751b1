//! The grant lifecycle in the audit log (ISO 27001 5.15, NIST AC-6 evidence): requested,
//! approved, denied, active, expired, revoked, one JSON line each, beside the identity
//! lifecycle lines, in the same ECS shape (`event.dataset: fence.audit`).

use jiff::Timestamp;
use serde::Serialize;

use super::{Grant, Phase};
use crate::audit::{AuditEvent, Head};

/// One grant lifecycle line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GrantRecord {
    #[serde(flatten)]
    pub head: Head,
    pub event: AuditEvent,
    pub fence: GrantFence,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GrantFence {
    pub schema_version: u32,
    pub identity: String,
    pub grant: GrantFields,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GrantFields {
    pub id: String,
    pub target: String,
    pub reason: String,
    /// `30m`, and in seconds.
    pub ttl: String,
    pub ttl_seconds: u64,
    pub approval: &'static str,
    pub state: &'static str,
    pub requester: super::Requester,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Who denied or revoked it, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Operations the kernel allowed through it (at its end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
}

/// The lifecycle actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Requested,
    Approved,
    Denied,
    Active,
    Expired,
    Revoked,
    /// A console decision from the vault that the agent refused (bad signature, stale,
    /// replayed): the grant stays as it was.
    DecisionRefused,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Requested => "grant-requested",
            Action::Approved => "grant-approved",
            Action::Denied => "grant-denied",
            Action::Active => "grant-active",
            Action::Expired => "grant-expired",
            Action::Revoked => "grant-revoked",
            Action::DecisionRefused => "grant-decision-refused",
        }
    }

    /// ECS `event.*` for the `iam` category: a type it expects, and the outcome.
    fn event(self) -> AuditEvent {
        match self {
            Action::Requested => AuditEvent::iam(self.as_str(), "creation"),
            Action::Approved | Action::Active => AuditEvent::iam(self.as_str(), "change"),
            Action::Denied => AuditEvent::iam_failure(self.as_str(), "change"),
            Action::DecisionRefused => AuditEvent::iam_failure(self.as_str(), "info"),
            Action::Expired | Action::Revoked => AuditEvent::iam(self.as_str(), "deletion"),
        }
    }
}

/// The line for `action` on `grant` as it is now.
pub fn record(action: Action, grant: &Grant, host: &str, now: Timestamp) -> GrantRecord {
    let (approver, expires, by, why, uses) = match &grant.phase {
        Phase::Pending => (grant.approved_by.clone(), None, None, None, None),
        Phase::Active { approver, expires_at, .. } => {
            (Some(approver.clone()), Some(expires_at.clone()), None, None, None)
        }
        Phase::Denied { by, reason } => (grant.approved_by.clone(), None, Some(by.clone()), Some(reason.clone()), None),
        Phase::Expired { uses } => (None, None, None, None, Some(*uses)),
        Phase::Revoked { by, reason, uses } => (None, None, Some(by.clone()), Some(reason.clone()), Some(*uses)),
    };
    let message = format!("{} {}: {} for {}", action.as_str(), grant.id, grant.target, grant.identity);
    GrantRecord {
        head: Head::new(now, host, message),
        event: action.event(),
        fence: GrantFence {
            schema_version: crate::events::record::EVENT_SCHEMA_VERSION,
            identity: grant.identity.clone(),
            grant: GrantFields {
                id: grant.id.clone(),
                target: grant.target.clone(),
                reason: grant.reason.clone(),
                ttl: crate::duration::show(grant.ttl()),
                ttl_seconds: grant.ttl_seconds,
                approval: grant.approval.as_str(),
                state: grant.phase.name(),
                requester: grant.requester.clone(),
                approver,
                expires,
                by,
                why,
                uses,
            },
        },
    }
}
