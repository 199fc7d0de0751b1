//! The control socket's answers (see [`super::protocol`] for the requests and who may ask).

use serde::{Deserialize, Serialize};

use crate::{kernel::EntryView, policy::Mode, vault::agent::SyncStatus};

/// `dns`: whether egress by name is on, and what each identity learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsReply {
    pub enabled: bool,
    pub learned: Vec<LearnedAddress>,
    /// Addresses evicted by the caps since the agent started.
    pub evictions: u64,
}

/// One address an identity learned from an allowed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedAddress {
    pub identity: String,
    pub name: String,
    pub address: String,
    /// Seconds until new connects to it are refused (0: expired, not swept yet).
    pub expires_in: u64,
}

/// The grant operations' answer: the grants concerned, newest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantReply {
    pub grants: Vec<GrantView>,
}

/// One grant as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: crate::grants::Grant,
    /// Seconds until it ends (active grants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Operations the kernel allowed through it (active and ended grants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
}

/// `reload`: the policy in force after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// `applied` or `unchanged`.
    pub outcome: String,
    /// The live policy's sequence number, when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

/// `secret-file`: the file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    pub path: String,
}

/// `secret-revoke`: the leases ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRevoked {
    pub lease_ids: Vec<String>,
}

/// `enter`: the cgroup the caller was moved into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entered {
    pub cgroup: String,
    /// The agent could not move the caller (root) and it moves itself: the kernel refuses a
    /// mover with fewer capabilities than the moved task where the cpuset controller is on
    /// (it checks CAP_SYS_NICE, which the agent's unit does not have). Root could move
    /// itself anyway; every check of `enter` was made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub move_self: bool,
}

/// `identities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitiesReply {
    pub identities: Vec<IdentityStatus>,
}

/// The state of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityStatus {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub mode: Mode,
    pub policy_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub expired: bool,
    pub selectors: Vec<SelectorStatus>,
    pub processes: usize,
    pub egress_rules: usize,
    /// What the identity holds without a grant (`Display`: the reviewer's line).
    pub standing: crate::grants::reach::Standing,
    /// What may be granted, per target.
    #[serde(default)]
    pub grantable: Vec<crate::grants::reach::GrantableTarget>,
    /// Grants in force now.
    #[serde(default)]
    pub granted: Vec<GrantInForce>,
    /// Programs the exec allow-list resolved to on this host; absent: exec is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_programs: Option<usize>,
}

/// A grant in force (`identities`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInForce {
    pub id: String,
    pub target: String,
    /// Until the kernel ends it.
    pub seconds_left: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorStatus {
    /// cgroup, unit or managed.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub cgroup: String,
    /// The cgroup's current id; absent when it does not exist (a unit that is not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    pub processes: usize,
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The local policy files (`--policy`): no vault configured, or nothing better yet.
    #[default]
    Local,
    /// The last-known-good cache, applied at start before the vault answered.
    Cache,
    /// The vault.
    Vault,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Cache => "cache",
            Source::Vault => "vault",
        }
    }
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub source: Source,
    /// The apply sequence number of the live policy (absent before the first apply).
    #[serde(default)]
    pub sequence: Option<u64>,
    /// Policy changes the policy service has finished: applied, found unchanged, or refused.
    #[serde(default)]
    pub handled: Handled,
    pub policy: Vec<PolicyStatus>,
    #[serde(default)]
    pub vault: Option<SyncStatus>,
    /// Each fence and the mechanism enforcing it on this host since the agent started (the
    /// doctor's rows, as the running agent loaded them).
    #[serde(default)]
    pub fences: Vec<FenceState>,
}

/// One fence of the running agent: enforced by which mechanism, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceState {
    pub fence: String,
    pub enforced: bool,
    pub mechanism: String,
    pub notes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl From<&crate::fences::FenceReport> for FenceState {
    fn from(r: &crate::fences::FenceReport) -> FenceState {
        FenceState {
            fence: r.fence.to_owned(),
            enforced: r.enforced,
            mechanism: r.mechanism.clone(),
            notes: r.notes.clone(),
            remedy: r.remedy.clone(),
        }
    }
}

/// Counts of the policy changes the service has finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    pub applied: u64,
    pub unchanged: u64,
    pub refused: u64,
}

impl Handled {
    pub fn total(&self) -> u64 {
        self.applied + self.unchanged + self.refused
    }
}

/// One identity of the policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub identity: String,
    pub version: String,
    pub mode: Mode,
    pub expired: bool,
}

/// `dump`: the live generation of every policy map, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpReply {
    pub sequence: u64,
    pub entries: Vec<EntryView>,
}
