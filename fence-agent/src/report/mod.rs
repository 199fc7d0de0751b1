//! `fence-agent report`: evidence per control (NIST 800-53 AC-6, IA-5, SC-7; ISO 27001 5.15,
//! 5.16; SOC 2 CC6.1; GDPR data minimisation) from what the running agent enforces and what its
//! logs hold. Each finding has a status (met, partial, not met) and the reason. Pure: the
//! caller gathers the [`Inputs`] (the agent's answers, the logs read, their check); the rules
//! are in [`controls`], the rendering in [`render`].

pub mod controls;
pub mod evidence;
pub mod gather;
pub mod render;
#[cfg(test)]
pub(crate) mod tests;

use serde::{Deserialize, Serialize};

pub use self::evidence::LogEvidence;
use crate::control::protocol::{FenceState, IdentityStatus, StatusReply};

/// How far a finding meets its control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Met,
    Partial,
    NotMet,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Partial => "partial",
            Status::NotMet => "not met",
        }
    }
}

/// One finding: what it is about, how far it meets the control, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub status: Status,
    /// `identity NAME`, `fence NAME`, `grant ID`, `policy`, `log events`...
    pub subject: String,
    pub reason: String,
}

/// One control's section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// `AC-6`, `ISO 5.15`...
    pub control: String,
    pub framework: String,
    pub title: String,
    /// What fence does for it (the same on every host).
    pub enforces: String,
    /// The worst status of its findings (met when it has none).
    pub status: Status,
    pub findings: Vec<Finding>,
}

/// The result of checking one log's chain and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIntegrity {
    /// `events` or `audit`.
    pub log: String,
    pub files: usize,
    pub lines: u64,
    pub signed_checkpoints: u64,
    /// Lines after the newest checkpoint (linked, not yet signed).
    pub unsigned_tail: u64,
    /// None: it could not be checked (`problem` says why).
    pub intact: Option<bool>,
    /// The first thing wrong, or why the log could not be checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Credential-looking environment variables of one identity's processes (names only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvCredentials {
    pub identity: String,
    /// `NAME (why) in pid P (comm)`.
    pub variables: Vec<String>,
}

/// Everything the report is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub host: String,
    /// RFC 3339.
    pub generated: String,
    /// The period's start (`--since`); none: all the logs hold.
    pub since: Option<String>,
    pub status: StatusReply,
    pub identities: Vec<IdentityStatus>,
    pub logs: LogEvidence,
    /// The event file is configured (else events go to stdout or the journal only).
    pub event_file: bool,
    /// `[events] max_bytes` and `keep`: what the event file keeps at most.
    pub retention: (u64, u32),
    pub integrity: Vec<LogIntegrity>,
    /// The environment scan; an error says why it could not be made.
    pub env: Result<Vec<EnvCredentials>, String>,
    /// Processes that exited or could not be read during the scan.
    pub env_unreadable: usize,
}

/// The report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub host: String,
    pub generated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The worst status of all sections.
    pub status: Status,
    pub controls: Vec<Section>,
    pub evidence: Evidence,
}

/// The evidence the findings were drawn from, as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub policy: PolicyEvidence,
    pub fences: Vec<FenceState>,
    pub identities: Vec<IdentityStatus>,
    pub logs: LogEvidence,
    pub integrity: Vec<LogIntegrity>,
    pub env_credentials: Vec<EnvCredentials>,
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyEvidence {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// `verified (key ids)` or `NOT VERIFIED` (vault), `none` (local files).
    pub signatures: String,
    /// Document -> version of the set in force (vault).
    pub applied: std::collections::BTreeMap<String, u64>,
    /// Identity -> policy version (sha256).
    pub versions: std::collections::BTreeMap<String, String>,
    pub refused_since_start: u64,
}

/// The report of `inputs`.
pub fn build(inputs: Inputs) -> Report {
    let controls = controls::assess(&inputs);
    let status = controls.iter().map(|s| s.status).max().unwrap_or(Status::Met);
    let s = &inputs.status;
    let policy = PolicyEvidence {
        source: s.source.as_str().to_owned(),
        sequence: s.sequence,
        signatures: s.vault.as_ref().map_or_else(|| "none".to_owned(), |v| v.signatures.clone()),
        applied: s.vault.as_ref().map(|v| v.applied.clone()).unwrap_or_default(),
        versions: s.policy.iter().map(|p| (p.identity.clone(), p.version.clone())).collect(),
        refused_since_start: s.handled.refused,
    };
    Report {
        host: inputs.host,
        generated: inputs.generated,
        since: inputs.since,
        status,
        controls,
        evidence: Evidence {
            policy,
            fences: inputs.status.fences,
            identities: inputs.identities,
            logs: inputs.logs,
            integrity: inputs.integrity,
            env_credentials: inputs.env.unwrap_or_default(),
        },
    }
}

impl Report {
    /// A report read from elsewhere (the vault), made safe to print and to trust as far as it
    /// goes: every section must be one of [`controls::CONTROLS`], once, in order (framework,
    /// title and text become this program's own), and the sections' and the report's statuses
    /// are worked out again from the findings. An error says why it is not a report.
    pub fn checked(mut self) -> Result<Report, String> {
        if self.controls.len() != controls::CONTROLS.len() {
            return Err(format!("{} control sections, expected {}", self.controls.len(), controls::CONTROLS.len()));
        }
        for (s, &(control, framework, title, enforces, _)) in self.controls.iter_mut().zip(controls::CONTROLS) {
            if s.control != control {
                return Err(format!("section {:?} where {control} belongs", crate::names::printable(&s.control)));
            }
            s.framework = framework.into();
            s.title = title.into();
            s.enforces = enforces.into();
            s.status = s.findings.iter().map(|f| f.status).max().unwrap_or(Status::Met);
        }
        self.status = self.controls.iter().map(|s| s.status).max().unwrap_or(Status::Met);
        Ok(self)
    }
}
