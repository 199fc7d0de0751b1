//! The event record written to sinks, and read back by `fence-agent logs`: one JSON object per
//! line, field names from the Elastic Common Schema version the record declares
//! ([`ECS_VERSION`]; every name is checked against `schema/ecs-8.17.0-fields.txt` by the
//! tests), with fence's own fields under `fence.*`. See README "Events" and
//! `schema/event.schema.json`. Records are built in [`super::build`]; summaries in
//! [`super::summary`]; `event.id` and `event.sequence` are given by [`super::sequence`] as
//! the record is written.

use std::borrow::Cow;

use fence_common::{Mechanism, Operation, Reason, Verdict};
use serde::{Deserialize, Serialize};

use crate::policy::Mode;

/// Version of the `fence.*` part of the record.
pub const EVENT_SCHEMA_VERSION: u32 = 1;
/// The ECS version whose field names the records use (`process.group.id` is 8.14 or later).
pub const ECS_VERSION: &str = "8.17.0";
/// `agent.type` of every record: what wrote it (`agent.version` is the agent's version).
pub const AGENT_TYPE: &str = "fence";

/// A name from a fixed vocabulary: borrowed when written, owned when read back.
pub type Name = Cow<'static, str>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    /// One line for people: the identity and `event.reason`.
    #[serde(default)]
    pub message: String,
    pub ecs: Ecs,
    #[serde(default)]
    pub agent: Agent,
    pub event: EventFields,
    pub host: Host,
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The program, file or socket acted on (ECS `file.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileFields>,
    /// The question of a DNS query event (ECS `dns.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The rule that decided (`rule.name`, the same as `fence.rule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    pub fence: Fence,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rule {
    pub name: String,
}

/// ECS `agent.*`: what wrote the record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Agent {
    #[serde(rename = "type")]
    pub agent_type: Name,
    pub version: Name,
}

impl Agent {
    pub const CURRENT: Agent =
        Agent { agent_type: Cow::Borrowed(AGENT_TYPE), version: Cow::Borrowed(env!("CARGO_PKG_VERSION")) };
}

impl Default for Agent {
    /// A line read back from a version that did not write `agent.*`.
    fn default() -> Agent {
        Agent { agent_type: Cow::Borrowed(AGENT_TYPE), version: Cow::Borrowed("") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dns {
    pub question: Question,
    /// The answer's addresses: in audit mode the question goes upstream and the would-deny
    /// event carries what it resolved to (enforce mode refuses before asking: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_ip: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Question {
    pub name: String,
    #[serde(rename = "type")]
    pub question_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileFields {
    pub path: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<String>,
    /// Device as major:minor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ecs {
    pub version: Name,
}

impl Ecs {
    pub const CURRENT: Ecs = Ecs { version: Cow::Borrowed(ECS_VERSION) };
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventFields {
    /// Unique across hosts and boots: the boot's id and the sequence (set as it is written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The record's number in the events this host's agents wrote since boot: strictly
    /// increasing, across agent restarts (a restart may skip numbers, never repeats one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sequence: u64,
    pub kind: Name,
    pub category: Vec<Name>,
    #[serde(rename = "type")]
    pub event_type: Vec<Name>,
    /// The operation, or `events-suppressed` / `events-dropped`.
    pub action: Name,
    pub outcome: Name,
    pub module: Name,
    pub dataset: Name,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub hostname: String,
    /// The same as `hostname` (ECS recommends `host.name` for correlation).
    #[serde(default)]
    pub name: String,
}

impl Host {
    pub fn named(hostname: &str) -> Host {
        Host { hostname: hostname.to_owned(), name: hostname.to_owned() }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ProcessWire")]
pub struct Process {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    pub thread: Thread,
    /// Command name (comm).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The parent process (ECS `process.parent.pid`), when the kernel could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// The task's effective user and group ids (the ones permission checks use), when the
    /// kernel could read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Id>,
    /// The task's real user and group ids (what `bpf_get_current_uid_gid` reads), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_user: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_group: Option<Id>,
}

/// [`Process`] as read: lines written before effective ids were reported (ECS 8.11) had
/// only the real ids, under `user` and `group`; they read as real ids, with no effective ones.
#[derive(Deserialize)]
struct ProcessWire {
    pid: u32,
    thread: Thread,
    name: String,
    #[serde(default)]
    executable: Option<String>,
    #[serde(default)]
    parent: Option<Parent>,
    #[serde(default)]
    user: Option<Id>,
    #[serde(default)]
    group: Option<Id>,
    #[serde(default)]
    real_user: Option<Id>,
    #[serde(default)]
    real_group: Option<Id>,
}

impl From<ProcessWire> for Process {
    fn from(w: ProcessWire) -> Process {
        // Both or neither: written by this version. Only `user`: an earlier version's real id
        // (or, rarely, a process whose real id could not be read: shown as the real one).
        let (user, real_user) = match (w.user, w.real_user) {
            (Some(user), None) => (None, Some(user)),
            (user, real) => (user, real),
        };
        let (group, real_group) = match (w.group, w.real_group) {
            (Some(group), None) => (None, Some(group)),
            (group, real) => (group, real),
        };
        Process {
            pid: w.pid,
            thread: w.thread,
            name: w.name,
            executable: w.executable,
            parent: w.parent,
            user,
            group,
            real_user,
            real_group,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Parent {
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Thread {
    /// Thread id (the kernel's pid).
    pub id: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Id {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Destination {
    pub address: String,
    pub ip: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// ipv4 or ipv6: the socket's address family.
    #[serde(rename = "type")]
    pub family: Name,
    /// tcp, udp, or the protocol number for others.
    pub transport: String,
    pub iana_number: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fence {
    pub schema_version: u32,
    pub identity: String,
    pub identity_id: u32,
    pub mode: Mode,
    pub verdict: Verdict,
    pub operation: Operation,
    pub mechanism: Mechanism,
    pub policy_version: String,
    /// The rule that decided: `default-deny` (nothing allowed it), `identity-expired`,
    /// `socket-kinds`, `protect:<path>`, `host-denied-sockets`, `no-way-out`.
    pub rule: String,
    pub reason: Reason,
    pub cgroup: Cgroup,
    /// What the decision was about, for exec, file, unix and escape events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// program, file, socket, cgroup, process or bpf.
    pub kind: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The target process of a signal or ptrace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The signal number, ptrace mode or bpf command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<u32>,
    /// The cgroup id of a cgroup target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The file name given to execve (exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_as: Option<String>,
    /// The object is unlinked (memfd, deleted file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fileless: bool,
    /// `path` was rebuilt from kernel dentries and is relative to its file system's root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fs_relative: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cgroup {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The ECS categories of an operation's enforcement records: its own, and for the categories
/// whose expected types do not include `denied`/`allowed`, `intrusion_detection`, which does.
pub fn categories(operation: Operation) -> Vec<Name> {
    match category(operation) {
        "network" => vec![Cow::Borrowed("network")],
        own => vec![Cow::Borrowed(own), Cow::Borrowed("intrusion_detection")],
    }
}

/// The ECS category of an operation's events (`event.category`).
pub fn category(operation: Operation) -> &'static str {
    match operation {
        Operation::Connect
        | Operation::Sendmsg
        | Operation::Socket
        | Operation::UnixConnect
        | Operation::UnixSend
        | Operation::Packet
        | Operation::DnsQuery => "network",
        Operation::Open | Operation::Unlink | Operation::Rename | Operation::Link | Operation::Truncate => "file",
        Operation::Exec | Operation::Ptrace | Operation::Signal | Operation::Ioctl | Operation::SetOwner => "process",
        Operation::CgroupMigrate
        | Operation::CgroupWrite
        | Operation::CloneIntoCgroup
        | Operation::Bpf
        | Operation::SysctlWrite => "configuration",
        Operation::SecretGet => "iam",
    }
}

/// Every field name of the ECS version the records declare (`schema/ecs-8.17.0-fields.txt`).
const ECS_FIELDS: &str = include_str!("../../schema/ecs-8.17.0-fields.txt");

/// The field names of a written line (every leaf outside `fence.*`) that the ECS version it
/// declares does not define, or all of them if it declares another version. For the tests,
/// which check every line the agent writes.
pub fn fields_not_in_ecs(line: &serde_json::Value) -> Vec<String> {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    leaves(&name, v, out);
                }
            }
            None => out.push(prefix.to_owned()),
        }
    }
    let mut names = Vec::new();
    leaves("", line, &mut names);
    if line["ecs"]["version"] != ECS_VERSION {
        return names;
    }
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<&str>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| ECS_FIELDS.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect());
    names.into_iter().filter(|n| !n.starts_with("fence.") && !known.contains(n.as_str())).collect()
}

/// For the categories fence uses, the `event.type` values ECS 8.17 expects with them
/// (`allowed_values[].expected_event_types` of `event.category` in the ECS repository).
const EXPECTED_TYPES: &[(&str, &[&str])] = &[
    ("configuration", &["access", "change", "creation", "deletion", "info"]),
    ("file", &["access", "change", "creation", "deletion", "info"]),
    ("host", &["access", "change", "end", "info", "start"]),
    ("iam", &["admin", "change", "creation", "deletion", "group", "info", "user"]),
    ("intrusion_detection", &["allowed", "denied", "info"]),
    ("network", &["access", "allowed", "connection", "denied", "end", "info", "protocol", "start"]),
    ("process", &["access", "change", "end", "info", "start"]),
];

/// The `event.type` values of a line that none of its `event.category` values expects (and
/// categories fence does not know), for the tests.
pub fn types_not_expected(line: &serde_json::Value) -> Vec<String> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let categories = strings(&line["event"]["category"]);
    let mut wrong: Vec<String> = categories
        .iter()
        .filter(|c| !EXPECTED_TYPES.iter().any(|(k, _)| k == c))
        .map(|c| format!("category {c}"))
        .collect();
    for t in strings(&line["event"]["type"]) {
        let expected = EXPECTED_TYPES
            .iter()
            .any(|(c, types)| categories.contains(&(*c).to_owned()) && types.contains(&t.as_str()));
        if !expected {
            wrong.push(format!("type {t} with {categories:?}"));
        }
    }
    wrong
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::Value;

    /// The strings of the list at `pointer` in `schema`, sorted.
    pub(crate) fn schema_names(schema: &Value, pointer: &str) -> Vec<String> {
        let list = schema.pointer(pointer).unwrap_or_else(|| panic!("no {pointer} in the schema"));
        let mut v: Vec<String> = list.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
        v.sort();
        v
    }

    /// Names, sorted.
    pub(crate) fn sorted(it: &mut dyn Iterator<Item = &'static str>) -> Vec<String> {
        let mut v: Vec<String> = it.map(str::to_owned).collect();
        v.sort();
        v
    }

    /// The schema's value lists are the enums' names, exactly.
    #[test]
    fn the_json_schema_names_exactly_the_enum_values() {
        use fence_common::{Mechanism, Operation, Reason, Verdict};
        let schema: Value = serde_json::from_str(include_str!("../../schema/event.schema.json")).unwrap();
        let names = |pointer: &str| schema_names(&schema, pointer);
        assert_eq!(names("/$defs/operation/enum"), sorted(&mut Operation::ALL.iter().map(|o| o.as_str())));
        assert_eq!(names("/$defs/verdict/enum"), sorted(&mut Verdict::ALL.iter().map(|o| o.as_str())));
        assert_eq!(names("/$defs/mechanism/enum"), sorted(&mut Mechanism::ALL.iter().map(|o| o.as_str())));
        assert_eq!(
            names("/$defs/enforcement/properties/fence/properties/reason/enum"),
            sorted(&mut Reason::ALL.iter().map(|o| o.as_str()))
        );
        assert_eq!(
            names("/$defs/summary/properties/fence/properties/dropped/properties/cause/enum"),
            sorted(&mut crate::metrics::DROP_CAUSES.iter().copied())
        );
    }
}
