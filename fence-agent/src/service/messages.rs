//! What the policy service is sent.

use std::{collections::BTreeSet, path::PathBuf};

use tokio::sync::oneshot;

use crate::{
    audit::Actor,
    control::{Peer, Request},
    vault::{agent::SyncStatus, sync::VaultSet},
};

/// A change of policy, from one of its sources.
#[derive(Debug)]
pub enum Change {
    /// SIGHUP: the local policy files again, or, while the vault's policy is in force, that
    /// policy resolved again.
    Reload { by: Option<Actor> },
    /// A set from the vault, verified by the sync task (signatures, index, rollback).
    Vault(Box<VaultSet>),
    /// Directories the policy's paths live in changed on disk (`None`: unknown which, e.g. the
    /// inotify queue overflowed).
    Files(Option<BTreeSet<PathBuf>>),
    /// An identity's expiry may have come.
    Expiry,
}

impl Change {
    /// The audit log's name for what triggered it.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Reload { .. } => "reload",
            Change::Vault(_) => "vault",
            Change::Files(_) => "file-change",
            Change::Expiry => "expiry",
        }
    }
}

/// What became of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the live policy has this sequence number.
    Applied { sequence: u64 },
    /// Nothing to do: the resolution on this host did not change.
    Unchanged,
    /// Refused; the previous policy stays in force.
    Refused(String),
}

/// One vault poll, as the sync task saw it.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub index_version: Option<u64>,
    pub token_expires_in: Option<u64>,
    /// The vault holds exactly the set in force.
    pub in_sync: bool,
    pub outcome: PollOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    Ok,
    Failed {
        error: String,
        /// The vault holds a set this agent refuses (as opposed to: it could not be asked).
        refusing: bool,
        /// A new refusal by verification, to count in `fence_policy_rejections_total`.
        new_refusal: bool,
    },
}

pub enum Message {
    Change {
        change: Change,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    Control {
        request: Request,
        peer: Peer,
        reply: oneshot::Sender<Vec<u8>>,
    },
    VaultPolled {
        report: PollReport,
        reply: oneshot::Sender<Option<SyncStatus>>,
    },
    VaultStopped {
        why: String,
    },
    /// An allowed DNS answer, held until its addresses are in the kernel.
    DnsLearn {
        answer: super::dns::LearnedAnswer,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The vault task asks what grant requests to publish and which decisions to look for.
    GrantWork {
        reply: oneshot::Sender<super::grant_vault::GrantWork>,
    },
    /// These requests are in the vault now.
    GrantsPublished {
        ids: Vec<String>,
    },
    /// A console's decision on grant `id` (KV version `version`), its signature checked by
    /// the vault task: the decision and the key id that signed it, or why it is refused.
    GrantDecided {
        id: String,
        version: u64,
        decision: Result<super::grant_vault::Signed, String>,
    },
    /// The broker asks whether the (attested) caller may have secret `name`.
    SecretTicket {
        name: String,
        peer: Peer,
        reply: oneshot::Sender<Result<crate::broker::Ticket, super::secrets::Refusal>>,
    },
    /// A broker line for the audit log.
    SecretAudit {
        record: Box<crate::broker::audit::SecretRecord>,
    },
    Stop,
}
