//! What validation produces: a [`PolicySet`] of identities, every value parsed and every
//! cgroup resolved; the compiler turns it into map entries.

use std::{fmt, path::PathBuf};

use jiff::Timestamp;
use sha2::{Digest as _, Sha256};

use super::{
    dns::NamePattern,
    glob::PathGlob,
    model::{IdentityDoc, Mode},
    net::{IpNet, PortRange},
};

/// A validated, resolved set of identities: what the compiler turns into map entries.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySet {
    pub identities: Vec<Identity>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub created: Option<Timestamp>,
    pub expires: Option<Timestamp>,
    /// `expires` has passed: enforced as deny-all.
    pub expired: bool,
    pub mode: Mode,
    pub cgroups: Vec<BoundCgroup>,
    pub egress: Vec<EgressRule>,
    /// `None`: exec is not restricted.
    pub exec: Option<ExecPolicy>,
    /// Readable exceptions to the host's protected set.
    pub file_exceptions: Vec<PathGlob>,
    /// `None`: only the host's default-deny sockets are denied.
    pub unix: Option<UnixPolicy>,
    /// What may be granted on request (not in force until granted).
    pub grantable: Vec<Grantable>,
    /// The grants in force now (added by the policy service from its grant book, never by a
    /// document): compiled like standing rules, each tagged with its slot.
    pub grants_in_force: Vec<GrantInForce>,
    /// What the broker may hand this identity's processes.
    pub secrets: Vec<SecretSpec>,
    pub version: PolicyVersion,
    pub source: PathBuf,
}

/// One grantable target of an identity, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Grantable {
    pub name: String,
    /// The policy's cap (the agent's `[grants] max_ttl` caps it again).
    pub max_ttl: Option<std::time::Duration>,
    pub approval: super::model::Approval,
    /// Egress rules (their `grant` is 0 here; set when the grant is in force).
    pub egress: Vec<EgressRule>,
    pub exec: Vec<ExecRule>,
    pub files: Vec<PathGlob>,
    pub unix: UnixPolicy,
}

/// A credential the broker may hand an identity, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    pub source: SecretSource,
    /// The grantable target that must be in force.
    pub grant: Option<String>,
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// KV v2: `path` below the broker's mount, and the key within it.
    Kv { path: String, key: String },
    /// A secrets engine's credential endpoint (`database/creds/ai-readonly`) and the lease
    /// asked for (`None`: the engine's default, capped by the broker).
    Dynamic { path: String, ttl: Option<std::time::Duration> },
}

impl SecretSource {
    /// `kv` or `dynamic`.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretSource::Kv { .. } => "kv",
            SecretSource::Dynamic { .. } => "dynamic",
        }
    }
}

impl Identity {
    /// The secret `name`.
    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|s| s.name == name)
    }
}

/// A grant in force: its slot in the kernel's grant table and what it grants.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantInForce {
    pub slot: u16,
    pub target: Grantable,
}

impl Identity {
    /// The grantable target `name`.
    pub fn grantable(&self, name: &str) -> Option<&Grantable> {
        self.grantable.iter().find(|g| g.name == name)
    }

    /// Puts `grants` in force: their egress rules join the identity's, tagged with their slot
    /// (so that the egress and DNS compile carry the slot), and the rest is resolved by the
    /// resolver from `grants_in_force`.
    pub fn put_in_force(&mut self, grants: Vec<GrantInForce>) {
        for g in &grants {
            self.egress.extend(g.target.egress.iter().map(|r| EgressRule {
                name: format!("grant:{}", g.target.name),
                grant: g.slot,
                ..r.clone()
            }));
        }
        self.grants_in_force = grants;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPolicy {
    pub allow: Vec<ExecRule>,
    pub fileless: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRule {
    pub glob: PathGlob,
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPolicy {
    pub paths: Vec<PathGlob>,
    /// Abstract names without the leading NUL.
    pub abstract_names: Vec<Vec<u8>>,
}

/// A cgroup an identity is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundCgroup {
    /// Normalised path relative to the cgroup2 mount, starting with `/`.
    pub path: String,
    /// cgroup id of a `cgroup` selector; `None` for units and managed cgroups (resolved when
    /// applied, and again when they are re-created) and offline validation.
    pub id: Option<u64>,
    pub kind: SelectorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorKind {
    Cgroup,
    /// A systemd unit: the path is followed, whatever cgroup id it has now or later.
    Unit(String),
    /// `fence-agent exec --identity`: created by the agent.
    Managed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Name for events (`egress[N]` when the policy gives none).
    pub name: String,
    pub nets: Vec<IpNet>,
    /// DNS names and wildcards: the addresses they resolve to get this rule's ports and
    /// protocols (through the agent's resolver, not the compiled prefixes).
    pub names: Vec<NamePattern>,
    pub ports: Vec<PortRange>,
    /// `PROTO_*` bits.
    pub protocols: u8,
    /// The just-in-time grant slot the rule is in force under (0: a standing rule).
    pub grant: u16,
}

/// SHA-256 of an identity's canonical document: the identity's policy version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyVersion(pub [u8; 32]);

impl PolicyVersion {
    pub fn of(doc: &IdentityDoc) -> PolicyVersion {
        // Serialising a struct of strings, numbers and lists cannot fail.
        let canonical = serde_json::to_vec(doc).unwrap_or_default();
        PolicyVersion(Sha256::digest(&canonical).into())
    }

    /// The first four bytes, as the kernel carries them in events.
    pub fn short_id(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
