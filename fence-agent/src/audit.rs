//! The identity lifecycle audit log (ISO 27001 5.15/5.16, SOC 2 CC6.1): every identity
//! creation, change, expiry and removal as one JSON line, with what triggered it and the old
//! and new policy versions. Kept apart from denial events, in its own append-only file.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use jiff::Timestamp;
use serde::Serialize;
use thiserror::Error;

pub use crate::events::record::Host;
use crate::{
    chain::{Chain, Checkpoints, LogKind},
    events::record::{Agent, Ecs},
    policy::{Identity, PolicySet},
};

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing the audit log {path} failed: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What made the agent apply a policy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Trigger {
    /// `startup`, `reload` (SIGHUP), `file-change`, `expiry`.
    pub kind: &'static str,
    /// Who asked, when known (the sender of SIGHUP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<Actor>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for Actor {
    /// `pid 123 (systemctl), uid 0` for log lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "pid {} ({n}), uid {}", self.pid, self.uid),
            None => write!(f, "pid {}, uid {}", self.pid, self.uid),
        }
    }
}

impl Trigger {
    pub fn new(kind: &'static str) -> Trigger {
        Trigger { kind, by: None }
    }

    pub fn by(kind: &'static str, pid: u32, uid: u32) -> Trigger {
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned());
        Trigger { kind, by: Some(Actor { pid, uid, name }) }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub head: Head,
    pub event: AuditEvent,
    pub fence: AuditFence,
}

/// What every audit line (identity, grant and secret lines) starts with: `@timestamp`,
/// `message`, `ecs.version`, `agent.*` and `host.*`. Schema: `schema/audit.schema.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Head {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub message: String,
    pub ecs: Ecs,
    pub agent: Agent,
    pub host: Host,
}

impl Head {
    pub fn new(now: Timestamp, host: &str, message: String) -> Head {
        Head { timestamp: timestamp(now), message, ecs: Ecs::CURRENT, agent: Agent::CURRENT, host: Host::named(host) }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub category: [&'static str; 1],
    #[serde(rename = "type")]
    pub event_type: [&'static str; 1],
    pub action: &'static str,
    /// `success`, or `failure` for what was denied or refused.
    pub outcome: &'static str,
    pub module: &'static str,
    pub dataset: &'static str,
}

impl AuditEvent {
    /// An audit line's `event.*`: category `iam` (whose expected types are admin, change,
    /// creation, deletion, group, info and user), module `fence`, dataset `fence.audit`.
    pub fn iam(action: &'static str, event_type: &'static str) -> AuditEvent {
        AuditEvent {
            kind: "event",
            category: ["iam"],
            event_type: [event_type],
            action,
            outcome: "success",
            module: "fence",
            dataset: "fence.audit",
        }
    }

    /// The same, for what was denied or refused (`event.outcome: failure`).
    pub fn iam_failure(action: &'static str, event_type: &'static str) -> AuditEvent {
        AuditEvent { outcome: "failure", ..AuditEvent::iam(action, event_type) }
    }
}

/// An audit line's `@timestamp`.
pub fn timestamp(now: Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%S.%NZ").to_string()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditFence {
    pub schema_version: u32,
    pub identity: String,
    pub owner: String,
    pub purpose: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_policy_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_policy_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub mode: &'static str,
    /// The policy file the identity came from, its owner and modification time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub owner_uid: u32,
    pub modified: String,
}

/// The lifecycle changes from `old` to `new` (pure: the caller writes them).
pub fn changes(
    old: Option<&PolicySet>,
    new: &PolicySet,
    trigger: &Trigger,
    host: &str,
    now: Timestamp,
) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    // By name, so that large sets are compared in linear time (names are unique in a set).
    let mut old_by_name: HashMap<&str, &Identity> = HashMap::new();
    for i in old.iter().flat_map(|s| &s.identities) {
        old_by_name.entry(i.name.as_str()).or_insert(i);
    }
    let new_names: HashSet<&str> = new.identities.iter().map(|i| i.name.as_str()).collect();
    for identity in &new.identities {
        let before = old_by_name.get(identity.name.as_str()).copied();
        let push = |out: &mut Vec<AuditRecord>, action, category| {
            out.push(record(action, category, before, Some(identity), identity, trigger, host, now));
        };
        match before {
            None => push(&mut out, "identity-created", "creation"),
            Some(b) if b.version != identity.version => push(&mut out, "identity-changed", "change"),
            Some(_) => {}
        }
        if identity.expired && !before.is_some_and(|b| b.expired) {
            push(&mut out, "identity-expired", "change");
        }
    }
    if let Some(old) = old {
        for before in &old.identities {
            if !new_names.contains(before.name.as_str()) {
                out.push(record("identity-removed", "deletion", Some(before), None, before, trigger, host, now));
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn record(
    action: &'static str,
    event_type: &'static str,
    before: Option<&Identity>,
    after: Option<&Identity>,
    identity: &Identity,
    trigger: &Trigger,
    host: &str,
    now: Timestamp,
) -> AuditRecord {
    let source = fs::metadata(&identity.source).ok().map(|m| Source {
        file: identity.source.display().to_string(),
        owner_uid: m.uid(),
        modified: Timestamp::from_second(m.mtime()).map(|t| t.to_string()).unwrap_or_default(),
    });
    let by = trigger.by.as_ref().map(|a| format!(" by {a}")).unwrap_or_default();
    let message = format!("{action} {} ({}{by})", identity.name, trigger.kind);
    AuditRecord {
        head: Head::new(now, host, message),
        event: AuditEvent::iam(action, event_type),
        fence: AuditFence {
            schema_version: crate::events::record::EVENT_SCHEMA_VERSION,
            identity: identity.name.clone(),
            owner: identity.owner.clone(),
            purpose: identity.purpose.clone(),
            old_policy_version: before.map(|i| i.version.to_string()),
            new_policy_version: after.map(|i| i.version.to_string()),
            expires: identity.expires.map(|e| e.to_string()),
            mode: identity.mode.as_str(),
            source,
            trigger: trigger.clone(),
        },
    }
}

/// The append-only audit file, each line linked to the one before (see [`crate::chain`]).
pub struct AuditLog {
    path: PathBuf,
    file: File,
    chain: Chain,
}

impl Drop for AuditLog {
    /// A last checkpoint, so that the lines since the one before are signed too.
    fn drop(&mut self) {
        if self.chain.has_unsigned()
            && let Err(e) = self.checkpoint("stop")
        {
            tracing::error!(error = %e, "writing the audit log's last checkpoint failed");
        }
    }
}

impl AuditLog {
    /// Opens (creating, 0640, its directory 0750) the log for appending, and asks the file
    /// system to make it append-only (chattr +a) where it can.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(err)?;
        }
        let chain = Chain::resume(LogKind::Audit, &[path.to_owned()]);
        let file = OpenOptions::new().append(true).create(true).mode(0o640).open(path).map_err(err)?;
        set_append_only(path, &file);
        Ok(AuditLog { path: path.to_owned(), file, chain })
    }

    /// Signs checkpoints of the log from now on (see [`Chain::with_checkpoints`]).
    pub fn checkpoints(&mut self, checkpoints: Checkpoints) {
        let chain = std::mem::replace(&mut self.chain, Chain::resume(LogKind::Audit, &[]));
        self.chain = chain.with_checkpoints(checkpoints);
    }

    /// How long until a checkpoint is due (`None`: none is, nothing new to sign).
    pub fn until_checkpoint(&self) -> Option<std::time::Duration> {
        self.chain.until_checkpoint(std::time::Instant::now())
    }

    /// Writes a checkpoint if one is due.
    pub fn checkpoint_if_due(&mut self) {
        if self.chain.checkpoint_due(std::time::Instant::now())
            && let Err(e) = self.checkpoint("interval")
        {
            tracing::error!(error = %e, "writing an audit log checkpoint failed");
        }
    }

    fn checkpoint(&mut self, reason: &str) -> Result<(), AuditError> {
        let Some(json) = self.chain.checkpoint(reason, Timestamp::now()) else { return Ok(()) };
        self.append(&json)?;
        let _ = self.file.sync_data();
        self.chain.keep(reason);
        Ok(())
    }

    pub fn write(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        for r in records {
            self.line(r)?;
            tracing::info!(identity = %r.fence.identity, action = r.event.action, "identity lifecycle");
        }
        Ok(())
    }

    /// Appends one record as a JSON line.
    pub fn line<T: Serialize>(&mut self, record: &T) -> Result<(), AuditError> {
        let json = serde_json::to_string(record).unwrap_or_default();
        self.append(&json)
    }

    /// Appends `json` with its link, in one write(2).
    fn append(&mut self, json: &str) -> Result<(), AuditError> {
        let mut line = Vec::with_capacity(json.len() + 128);
        self.chain.seal(json, &mut line);
        match self.file.write_all(&line) {
            Ok(()) => {
                // Identity, grant and secret lines are few: each is recorded at once.
                self.chain.written();
                self.chain.record_head();
                Ok(())
            }
            Err(source) => {
                self.chain.broken();
                Err(AuditError::Write { path: self.path.clone(), source })
            }
        }
    }
}

/// Makes the audit log append-only, or says why it is not: without `chattr +a` root (or
/// anyone with CAP_LINUX_IMMUTABLE) can rewrite what it says.
fn set_append_only(path: &Path, file: &File) {
    match append_only_flag(file, true) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => tracing::warn!(
            path = %path.display(),
            "the audit log is NOT append-only: chattr +a needs CAP_LINUX_IMMUTABLE, which the agent does not have"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "the audit log is NOT append-only: its file system does not take chattr +a"
        ),
    }
}

/// Sets or clears the file's append-only attribute (chattr +a / -a: FS_IOC_SETFLAGS with
/// FS_APPEND_FL, which needs CAP_LINUX_IMMUTABLE); file systems without it (tmpfs) answer
/// ENOTTY or EOPNOTSUPP.
pub fn append_only_flag(file: &File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    let mut flags = inode_flags(file)?;
    if (flags & FS_APPEND_FL != 0) != on {
        flags ^= FS_APPEND_FL;
        // SAFETY: an ioctl on our own fd with a pointer to a local.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_SETFLAGS, &flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const FS_APPEND_FL: libc::c_long = 0x20;

/// Whether the file is append-only (lsattr's `a`); an error on file systems without inode
/// flags (tmpfs).
pub fn is_append_only(file: &File) -> std::io::Result<bool> {
    inode_flags(file).map(|f| f & FS_APPEND_FL != 0)
}

fn inode_flags(file: &File) -> std::io::Result<libc::c_long> {
    use std::os::fd::AsRawFd as _;
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let mut flags: libc::c_long = 0;
    // SAFETY: an ioctl on our own fd with a pointer to a local.
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyVersion;

    fn identity(name: &str, v: u8, expired: bool) -> Identity {
        let mut i = crate::compile::tests::identity(name, vec![]);
        i.cgroups.clear();
        i.version = PolicyVersion([v; 32]);
        i.expired = expired;
        i.source = "/nonexistent/policy.yaml".into();
        i
    }

    fn actions(records: &[AuditRecord]) -> Vec<(&'static str, String)> {
        records.iter().map(|r| (r.event.action, r.fence.identity.clone())).collect()
    }

    #[test]
    fn creation_change_expiry_and_removal() {
        let now = Timestamp::UNIX_EPOCH;
        let t = Trigger::new("startup");
        let first = PolicySet { identities: vec![identity("a", 1, false), identity("b", 1, false)] };
        let r = changes(None, &first, &t, "h", now);
        assert_eq!(actions(&r), vec![("identity-created", "a".into()), ("identity-created", "b".into())]);
        assert_eq!(r[0].fence.new_policy_version, Some(PolicyVersion([1; 32]).to_string()));
        assert_eq!(r[0].fence.old_policy_version, None);
        let second = PolicySet { identities: vec![identity("a", 2, false), identity("c", 1, false)] };
        let r = changes(Some(&first), &second, &Trigger::by("reload", 1, 0), "h", now);
        assert_eq!(
            actions(&r),
            vec![("identity-changed", "a".into()), ("identity-created", "c".into()), ("identity-removed", "b".into())]
        );
        assert_eq!(r[0].fence.old_policy_version, Some(PolicyVersion([1; 32]).to_string()));
        assert_eq!(r[0].fence.new_policy_version, Some(PolicyVersion([2; 32]).to_string()));
        assert_eq!(r[2].event.event_type, ["deletion"]);
        let third = PolicySet { identities: vec![identity("a", 2, true), identity("c", 1, false)] };
        let r = changes(Some(&second), &third, &Trigger::new("expiry"), "h", now);
        assert_eq!(actions(&r), vec![("identity-expired", "a".into())]);
        assert!(changes(Some(&third), &third, &t, "h", now).is_empty(), "no change, no record");
    }

    /// Every kind of audit line validates against `schema/audit.schema.json` and uses only
    /// field names of the ECS version it declares; the schema refuses a line that breaks it.
    #[test]
    fn audit_lines_follow_their_schema_and_ecs() {
        use crate::{
            broker::audit as secrets,
            grants::{
                audit as grants,
                book::{Grant, Phase, Requester},
            },
        };
        let schema: serde_json::Value = serde_json::from_str(include_str!("../schema/audit.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let now = Timestamp::UNIX_EPOCH;
        let first = PolicySet { identities: vec![identity("a", 1, false)] };
        let second = PolicySet { identities: vec![identity("a", 2, true), identity("b", 1, false)] };
        let mut lines: Vec<serde_json::Value> = changes(None, &first, &Trigger::new("startup"), "h", now)
            .into_iter()
            .chain(changes(Some(&first), &second, &Trigger::by("reload", 1, 0), "h", now))
            .chain(changes(Some(&second), &PolicySet { identities: vec![] }, &Trigger::new("file-change"), "h", now))
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        let requester =
            Requester { pid: 7, uid: 1000, executable: Some("/usr/bin/app".into()), cgroup: Some("/w".into()) };
        let mut grant = Grant {
            id: "g-1".into(),
            identity: "a".into(),
            target: "prod-db".into(),
            reason: "ticket 1".into(),
            ttl_seconds: 1800,
            approval: crate::policy::Approval::Auto,
            requested_at: "2026-11-30T00:00:00Z".into(),
            requested_boot_ns: 1,
            requester: requester.clone(),
            phase: Phase::Pending,
            ended_at: None,
            published: false,
            decided_version: None,
            decided_serial: None,
            approved_by: None,
        };
        lines.push(serde_json::to_value(grants::record(grants::Action::Requested, &grant, "h", now)).unwrap());
        grant.phase = Phase::Active { slot: 1, expires_boot_ns: 9, expires_at: "…".into(), approver: "auto".into() };
        lines.push(serde_json::to_value(grants::record(grants::Action::Active, &grant, "h", now)).unwrap());
        grant.phase = Phase::Revoked { by: "root".into(), reason: "done".into(), uses: 3 };
        lines.push(serde_json::to_value(grants::record(grants::Action::Revoked, &grant, "h", now)).unwrap());
        lines.push(serde_json::to_value(grants::record(grants::Action::DecisionRefused, &grant, "h", now)).unwrap());
        let issued = secrets::SecretFields {
            name: "db".into(),
            kind: "dynamic",
            lease_id: Some("database/creds/r/x".into()),
            ttl_seconds: Some(60),
            requester: Some(secrets::Requester { pid: 7, uid: 1000, executable: None, cgroup: None }),
            ..Default::default()
        };
        lines.push(serde_json::to_value(secrets::record(secrets::Action::Issued, "a", issued, "h", now)).unwrap());
        let refused = secrets::SecretFields { name: "db".into(), why: Some("not fenced".into()), ..Default::default() };
        lines.push(serde_json::to_value(secrets::record(secrets::Action::Refused, "", refused, "h", now)).unwrap());
        assert_eq!(lines.len(), 12, "{lines:#?}");
        for line in &lines {
            let errors: Vec<String> =
                validator.iter_errors(line).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{line:#}\n{errors:#?}");
            assert_eq!(crate::events::record::fields_not_in_ecs(line), Vec::<String>::new(), "{line:#}");
            assert_eq!(crate::events::record::types_not_expected(line), Vec::<String>::new(), "{line:#}");
            assert!(!line["message"].as_str().unwrap().is_empty());
        }
        let mut unknown_action = lines[0].clone();
        unknown_action["event"]["action"] = "identity-borrowed".into();
        let mut grant_without_id = lines[7].clone();
        grant_without_id["fence"]["grant"].as_object_mut().unwrap().remove("id");
        let mut secret_value = lines[10].clone();
        secret_value["fence"]["secret"]["value"] = "hunter2".into();
        let mut other_action = lines[0].clone();
        other_action["event"]["action"] = "policy-changed".into();
        for bad in [unknown_action, grant_without_id, secret_value, other_action] {
            assert!(!validator.is_valid(&bad), "the schema should refuse {bad:#}");
        }
    }
}
