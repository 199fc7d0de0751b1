//! The event record written to sinks: one JSON object per line, field names after the Elastic
//! Common Schema (ECS 8.x: `@timestamp`, `event.*`, `process.*`, `destination.*`,
//! `network.*`, `host.*`), with fence's own fields under `fence.*`. See README "Events".

use std::net::{Ipv4Addr, Ipv6Addr};

use fence_common::{
    EVENT_EXEC, EVENT_FILE, EventHeader, NAME_LEN, NetEvent, ObjectEvent, VERDICT_DENIED, VERDICT_KILLED,
    VERDICT_WOULD_DENY, mechanism, op, reason,
};
use jiff::Timestamp;
use serde::Serialize;

use super::{
    decode::{KernelEvent, components},
    directory::Directory,
};
use crate::resolve::ObjectId;

/// Version of the `fence.*` part of the record.
pub const EVENT_SCHEMA_VERSION: u32 = 1;
pub const ECS_VERSION: &str = "8.11.0";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub ecs: Ecs,
    pub event: EventFields,
    pub host: Host,
    pub process: Process,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The program, file or socket acted on (ECS `file.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileFields>,
    pub fence: Fence,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileFields {
    pub path: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<String>,
    /// Device as major:minor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ecs {
    pub version: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventFields {
    pub kind: &'static str,
    pub category: Vec<&'static str>,
    #[serde(rename = "type")]
    pub event_type: Vec<&'static str>,
    pub action: &'static str,
    pub outcome: &'static str,
    pub module: &'static str,
    pub dataset: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Host {
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Process {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    pub thread: Thread,
    /// Command name (comm).
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The parent process (ECS `process.parent.pid`), when the kernel could read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    pub user: Id,
    pub group: Id,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Parent {
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Thread {
    /// Thread id (the kernel's pid).
    pub id: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Id {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Destination {
    pub address: String,
    pub ip: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Network {
    /// ipv4 or ipv6: the socket's address family.
    #[serde(rename = "type")]
    pub family: &'static str,
    /// tcp, udp, or the protocol number for others.
    pub transport: String,
    pub iana_number: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fence {
    pub schema_version: u32,
    pub identity: String,
    pub identity_id: u32,
    pub mode: &'static str,
    pub verdict: &'static str,
    pub operation: &'static str,
    pub mechanism: &'static str,
    pub policy_version: String,
    /// The rule that decided: `default-deny` (nothing allowed it), `identity-expired`,
    /// `socket-kinds`, `protect:<path>`, `host-denied-sockets`.
    pub rule: String,
    pub reason: &'static str,
    pub cgroup: Cgroup,
    /// What the decision was about, for exec, file and unix events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Target {
    /// program, file, socket, cgroup, process or bpf.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The target process of a signal or ptrace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The signal number, ptrace mode or bpf command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<u32>,
    /// The cgroup id of a cgroup target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The file name given to execve (exec).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoked_as: Option<String>,
    /// The object is unlinked (memfd, deleted file).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fileless: bool,
    /// `path` was rebuilt from kernel dentries and is relative to its file system's root.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fs_relative: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cgroup {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What the record needs from the running host (kept out of `build` so it stays testable).
pub trait HostView {
    fn hostname(&self) -> &str;
    /// Wall-clock time of a `bpf_ktime_get_boot_ns()` value.
    fn wall_time(&self, boot_ns: u64) -> Timestamp;
    fn executable(&self, tgid: u32) -> Option<String>;
    fn cgroup_path(&self, tgid: u32) -> Option<String>;
}

/// Builds the record of a kernel event.
pub fn build(event: &KernelEvent, dir: &Directory, host: &dyn HostView) -> Record {
    match event {
        KernelEvent::Net(e) => net_record(e, dir, host),
        KernelEvent::Object(e) => object_record(e, dir, host),
    }
}

fn common(h: &EventHeader, dir: &Directory, host: &dyn HostView) -> (String, Process, Fence) {
    let timestamp = host.wall_time(h.boot_ns).strftime("%Y-%m-%dT%H:%M:%S.%NZ").to_string();
    let entry = dir.identity(h.identity);
    let policy_version = match entry {
        Some(e) if e.version.short_id() == h.policy_version => e.version.to_string(),
        // The event predates the identity's current version: give what the kernel knew.
        _ => format!("sha256:{:08x}…", h.policy_version),
    };
    let verdict = verdict_name(h.verdict);
    let process = Process {
        pid: h.tgid,
        thread: Thread { id: h.pid },
        name: comm(&h.comm),
        executable: host.executable(h.tgid),
        parent: (h.ppid != 0).then_some(Parent { pid: h.ppid }),
        user: Id { id: h.uid.to_string() },
        group: Id { id: h.gid.to_string() },
    };
    let cgroup_path = dir.cgroup_path(h.cgroup_id).map(str::to_owned).or_else(|| host.cgroup_path(h.tgid));
    let fence = Fence {
        schema_version: EVENT_SCHEMA_VERSION,
        identity: entry.map_or_else(|| format!("#{}", h.identity), |e| e.name.clone()),
        identity_id: h.identity,
        mode: if h.verdict == VERDICT_WOULD_DENY { "audit" } else { "enforce" },
        verdict,
        operation: operation_name(h.operation),
        mechanism: mechanism_name(h.mechanism),
        policy_version,
        rule: match h.reason {
            reason::IDENTITY_DENY_ALL => "identity-expired",
            reason::SOCKET_KIND_NOT_ALLOWED => "socket-kinds",
            reason::FILE_PROTECTED => "protect",
            reason::UNIX_HOST_DENIED => "host-denied-sockets",
            _ => "default-deny",
        }
        .to_owned(),
        reason: reason_name(h.reason),
        cgroup: Cgroup { id: h.cgroup_id, path: cgroup_path },
        target: None,
    };
    (timestamp, process, fence)
}

fn net_record(e: &NetEvent, dir: &Directory, host: &dyn HostView) -> Record {
    let h = &e.header;
    let (timestamp, process, fence) = common(h, dir, host);
    let family = match e.family {
        2 => "ipv4",
        10 => "ipv6",
        _ => "other",
    };
    let transport = match e.protocol {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "ipv6-icmp".to_owned(),
        255 => "raw".to_owned(),
        n => n.to_string(),
    };
    let network = Network { family, transport: transport.clone(), iana_number: e.protocol.to_string() };
    let destination = (h.operation != op::SOCKET).then(|| {
        let ip = match e.family {
            2 => Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string(),
            _ => Ipv6Addr::from(e.addr).to_string(),
        };
        Destination { address: ip.clone(), ip, port: e.port }
    });
    let action = operation_name(h.operation);
    let why = match (&destination, h.reason) {
        (_, reason::IDENTITY_DENY_ALL) => "the identity has expired and is denied everything".to_owned(),
        (Some(d), _) => format!("no egress rule allows {transport} to {}", join_host_port(&d.ip, d.port)),
        (None, _) => format!(
            "fenced identities may only create TCP and UDP sockets (family {family}, type {}, protocol {})",
            e.sock_type, e.protocol
        ),
    };
    let denied = h.verdict == VERDICT_DENIED;
    Record {
        timestamp,
        ecs: Ecs { version: ECS_VERSION },
        event: EventFields {
            kind: "alert",
            category: vec!["network"],
            event_type: vec![
                if h.operation == op::SOCKET { "start" } else { "connection" },
                if denied { "denied" } else { "allowed" },
            ],
            action,
            outcome: if denied { "failure" } else { "success" },
            module: "fence",
            dataset: "fence.enforcement",
            reason: why,
        },
        host: Host { hostname: host.hostname().to_owned() },
        process,
        destination,
        network: Some(network),
        file: None,
        fence,
    }
}

/// Best path for an inode: the path the agent resolved it under, else the kernel's dentries.
fn object_path(dir: &Directory, id: ObjectId, dentries: &fence_common::DentryPath) -> (String, bool) {
    if let Some(p) = dir.object_path(id) {
        return (p.display().to_string(), false);
    }
    let (names, complete) = components(dentries);
    let joined = names.join("/");
    (if complete { format!("/{joined}") } else { format!(".../{joined}") }, true)
}

fn object_record(e: &ObjectEvent, dir: &Directory, host: &dyn HostView) -> Record {
    let h = &e.header;
    let (timestamp, mut process, mut fence) = common(h, dir, host);
    if process.executable.is_none() && e.actor_exe.depth > 0 {
        let (names, complete) = components(&e.actor_exe);
        process.executable = Some(format!("{}{}", if complete { "/" } else { ".../" }, names.join("/")));
    }
    if h.kind == fence_common::EVENT_ESCAPE {
        return escape_record(e, timestamp, process, fence, host);
    }
    let name_len = (e.name_len as usize).min(NAME_LEN);
    let name = String::from_utf8_lossy(&e.name[..name_len]).into_owned();
    let abstract_socket = h.kind == fence_common::EVENT_UNIX && e.ino == 0;
    let (path, fs_relative) = if abstract_socket {
        (format!("@{name}"), false)
    } else {
        object_path(dir, ObjectId { dev: e.dev, ino: e.ino }, &e.path)
    };
    let rule_path = (e.rule_ino != 0)
        .then(|| dir.object_path(ObjectId { dev: e.rule_dev, ino: e.rule_ino }))
        .flatten()
        .map(|p| p.display().to_string());
    if h.reason == reason::FILE_PROTECTED {
        fence.rule = format!("protect:{}", rule_path.as_deref().unwrap_or(&path));
    }
    let (kind, category, event_type) = match h.kind {
        EVENT_EXEC => ("program", "process", "start"),
        EVENT_FILE => ("file", "file", "access"),
        _ => ("socket", "network", "connection"),
    };
    let denied = h.verdict == VERDICT_DENIED || h.verdict == VERDICT_KILLED;
    let verb = match h.verdict {
        VERDICT_KILLED => "killed on exec of",
        VERDICT_WOULD_DENY => "would deny",
        _ => "denied",
    };
    let why = match h.reason {
        reason::EXEC_NOT_ALLOWED => format!("{verb} {path}: not in the identity's exec allow-list"),
        reason::EXEC_FILELESS => format!("{verb} {path}: executing an unlinked file (memfd, deleted) is not allowed"),
        reason::FILE_PROTECTED => match &rule_path {
            Some(r) if *r != path => format!("{verb} {path}: protected credential file (under {r})"),
            _ => format!("{verb} {path}: protected credential file"),
        },
        reason::UNIX_NOT_ALLOWED => format!("{verb} {path}: not in the identity's unix-socket allow-list"),
        reason::UNIX_HOST_DENIED => {
            format!("{verb} {path}: a socket through which a daemon runs code for its clients (host default-deny)")
        }
        reason::IDENTITY_DENY_ALL => "the identity has expired and is denied everything".to_owned(),
        _ => format!("{verb} {path}"),
    };
    let file_name = path.rsplit('/').next().unwrap_or_default().to_owned();
    let inode = (e.ino != 0).then(|| e.ino.to_string());
    let device = (e.dev != 0).then(|| format!("{}:{}", e.dev >> 20, e.dev & 0xfffff));
    let invoked_as = (h.kind == EVENT_EXEC && !name.is_empty()).then_some(name);
    fence.target = Some(Target {
        kind,
        path: path.clone(),
        invoked_as,
        fileless: e.nlink == 0 && e.ino != 0,
        fs_relative,
        ..Target::default()
    });
    Record {
        timestamp,
        ecs: Ecs { version: ECS_VERSION },
        event: EventFields {
            kind: "alert",
            category: vec![category],
            event_type: vec![event_type, if denied { "denied" } else { "allowed" }],
            action: operation_name(h.operation),
            outcome: if denied { "failure" } else { "success" },
            module: "fence",
            dataset: "fence.enforcement",
            reason: why,
        },
        host: Host { hostname: host.hostname().to_owned() },
        process,
        destination: None,
        network: None,
        file: Some(FileFields { path, name: file_name, inode, device }),
        fence,
    }
}

/// An attempt to leave the fence or tamper with it.
fn escape_record(
    e: &ObjectEvent,
    timestamp: String,
    process: Process,
    mut fence: Fence,
    host: &dyn HostView,
) -> Record {
    let h = &e.header;
    let (names, _) = components(&e.path);
    let cgroup_path = format!("/{}", names.join("/"));
    let (kind, target, why) = match h.operation {
        op::CGROUP_MIGRATE => (
            "cgroup",
            Target { kind: "cgroup", path: cgroup_path.clone(), cgroup_id: Some(e.ino), ..Target::default() },
            format!("moving a task into cgroup {cgroup_path}, outside the identity's cgroups"),
        ),
        op::CLONE_INTO_CGROUP => (
            "cgroup",
            Target { kind: "cgroup", ..Target::default() },
            "clone3(CLONE_INTO_CGROUP): starting a child in another cgroup".to_owned(),
        ),
        op::PTRACE | op::SIGNAL => {
            let what = if h.operation == op::PTRACE { "tracing" } else { "signalling" };
            (
                "process",
                Target { kind: "process", pid: Some(e.ino as u32), detail: Some(e.dev), ..Target::default() },
                format!("{what} process {} outside the identity", e.ino),
            )
        }
        _ => (
            "bpf",
            Target { kind: "bpf", detail: Some(e.dev), ..Target::default() },
            "bpf(2) from a fenced identity".to_owned(),
        ),
    };
    let denied = h.verdict == VERDICT_DENIED;
    fence.rule = "no-way-out".to_owned();
    fence.target = Some(target);
    Record {
        timestamp,
        ecs: Ecs { version: ECS_VERSION },
        event: EventFields {
            kind: "alert",
            category: vec![if kind == "process" { "process" } else { "configuration" }],
            event_type: vec!["change", if denied { "denied" } else { "allowed" }],
            action: operation_name(h.operation),
            outcome: if denied { "failure" } else { "success" },
            module: "fence",
            dataset: "fence.enforcement",
            reason: format!("{} {why}", if denied { "denied" } else { "would deny" }),
        },
        host: Host { hostname: host.hostname().to_owned() },
        process,
        destination: None,
        network: None,
        file: None,
        fence,
    }
}

fn join_host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        VERDICT_WOULD_DENY => "would-deny",
        VERDICT_DENIED => "denied",
        VERDICT_KILLED => "killed",
        _ => "unknown",
    }
}

pub fn operation_name(o: u8) -> &'static str {
    match o {
        op::CONNECT => "connect",
        op::SENDMSG => "sendmsg",
        op::SOCKET => "socket",
        op::EXEC => "exec",
        op::OPEN => "open",
        op::UNIX_CONNECT => "unix-connect",
        op::UNIX_SEND => "unix-send",
        op::CGROUP_MIGRATE => "cgroup-migrate",
        op::CLONE_INTO_CGROUP => "clone-into-cgroup",
        op::PTRACE => "ptrace",
        op::SIGNAL => "signal",
        op::BPF => "bpf",
        _ => "unknown",
    }
}

pub fn mechanism_name(m: u8) -> &'static str {
    match m {
        mechanism::CGROUP_CONNECT4 => "cgroup/connect4",
        mechanism::CGROUP_CONNECT6 => "cgroup/connect6",
        mechanism::CGROUP_SENDMSG4 => "cgroup/sendmsg4",
        mechanism::CGROUP_SENDMSG6 => "cgroup/sendmsg6",
        mechanism::CGROUP_SOCK_CREATE => "cgroup/sock_create",
        mechanism::LSM_BPRM_CHECK => "lsm/bprm_check_security",
        mechanism::TP_SCHED_PROCESS_EXEC => "tp_btf/sched_process_exec+sigkill",
        mechanism::LSM_FILE_OPEN => "lsm/file_open",
        mechanism::FANOTIFY => "fanotify/open_perm",
        mechanism::LSM_UNIX_STREAM_CONNECT => "lsm/unix_stream_connect",
        mechanism::LSM_UNIX_MAY_SEND => "lsm/unix_may_send",
        mechanism::LSM_TASK_ALLOC => "lsm/task_alloc",
        mechanism::LSM_PTRACE => "lsm/ptrace_access_check",
        mechanism::LSM_TASK_KILL => "lsm/task_kill",
        mechanism::LSM_BPF => "lsm/bpf",
        _ => "unknown",
    }
}

fn reason_name(r: u8) -> &'static str {
    match r {
        reason::NO_MATCHING_RULE => "no-matching-rule",
        reason::IDENTITY_DENY_ALL => "identity-deny-all",
        reason::SOCKET_KIND_NOT_ALLOWED => "socket-kind-not-allowed",
        reason::EXEC_NOT_ALLOWED => "exec-not-allowed",
        reason::EXEC_FILELESS => "exec-fileless",
        reason::FILE_PROTECTED => "file-protected",
        reason::UNIX_NOT_ALLOWED => "unix-not-allowed",
        reason::UNIX_HOST_DENIED => "unix-host-denied",
        reason::LEAVE_FENCE => "leave-fence",
        reason::OUTSIDE_IDENTITY => "outside-identity",
        reason::BPF_DENIED => "bpf-denied",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use fence_common::{EVENT_NET, IdentityInfo, MODE_ENFORCE};

    use super::*;
    use crate::{
        compile::{CompiledIdentity, CompiledPolicy},
        policy::{Mode, PolicyVersion},
    };

    struct FakeHost;
    impl HostView for FakeHost {
        fn hostname(&self) -> &str {
            "host-a"
        }
        fn wall_time(&self, boot_ns: u64) -> Timestamp {
            Timestamp::from_nanosecond(1_800_000_000_000_000_000 + i128::from(boot_ns)).unwrap()
        }
        fn executable(&self, _: u32) -> Option<String> {
            Some("/usr/bin/curl".into())
        }
        fn cgroup_path(&self, _: u32) -> Option<String> {
            None
        }
    }

    fn directory(version: PolicyVersion) -> Directory {
        let mut d = Directory::default();
        d.update(&CompiledPolicy {
            identities: vec![CompiledIdentity {
                id: 7,
                name: "ci-bot".into(),
                mode: Mode::Enforce,
                expired: false,
                info: IdentityInfo { mode: MODE_ENFORCE, ..Default::default() },
                version,
                rule_names: vec![],
                cgroups: vec![("/fence/ci".into(), 99)],
            }],
            ..Default::default()
        });
        d
    }

    #[test]
    fn a_denied_connect_has_every_field() {
        let version = PolicyVersion([0xab; 32]);
        let header = EventHeader {
            kind: EVENT_NET,
            verdict: VERDICT_DENIED,
            operation: op::CONNECT,
            mechanism: mechanism::CGROUP_CONNECT4,
            identity: 7,
            boot_ns: 5,
            cgroup_id: 99,
            pid: 11,
            tgid: 10,
            uid: 1000,
            gid: 1000,
            policy_version: version.short_id(),
            reason: reason::NO_MATCHING_RULE,
            _pad: [0; 3],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ppid: 9,
            _pad2: 0,
        };
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let e = NetEvent { header, family: 2, port: 22, protocol: 6, sock_type: 1, addr };
        let r = build(&KernelEvent::Net(e), &directory(version), &FakeHost);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["@timestamp"], "2027-01-15T08:00:00.000000005Z");
        assert_eq!(v["fence"]["identity"], "ci-bot");
        assert_eq!(v["fence"]["verdict"], "denied");
        assert_eq!(v["fence"]["operation"], "connect");
        assert_eq!(v["fence"]["cgroup"]["id"], 99);
        assert_eq!(v["fence"]["cgroup"]["path"], "/fence/ci");
        assert_eq!(v["fence"]["policy_version"], version.to_string());
        assert_eq!(v["process"]["pid"], 10);
        assert_eq!(v["process"]["thread"]["id"], 11);
        assert_eq!(v["process"]["name"], "curl");
        assert_eq!(v["process"]["user"]["id"], "1000");
        assert_eq!(v["destination"]["ip"], "10.0.0.1");
        assert_eq!(v["destination"]["port"], 22);
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["network"]["type"], "ipv4");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["reason"], "no egress rule allows tcp to 10.0.0.1:22");
    }

    #[test]
    fn an_audit_event_is_a_would_deny_that_succeeded() {
        let version = PolicyVersion([1; 32]);
        let mut e = NetEvent::default();
        e.header.kind = EVENT_NET;
        e.header.verdict = VERDICT_WOULD_DENY;
        e.header.operation = op::SENDMSG;
        e.header.identity = 7;
        e.header.policy_version = 0xdeadbeef;
        e.family = 10;
        e.protocol = 17;
        e.port = 53;
        e.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        let v = serde_json::to_value(build(&KernelEvent::Net(e), &directory(version), &FakeHost)).unwrap();
        assert_eq!(v["fence"]["verdict"], "would-deny");
        assert_eq!(v["fence"]["mode"], "audit");
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["destination"]["ip"], "::ffff:127.0.0.1");
        assert_eq!(v["event"]["reason"], "no egress rule allows udp to [::ffff:127.0.0.1]:53");
        // Older policy version than the directory knows: the kernel's short id is reported.
        assert_eq!(v["fence"]["policy_version"], "sha256:deadbeef…");
    }

    /// The records the agent writes validate against the published JSON Schema, and the
    /// schema refuses records that break it.
    #[test]
    fn records_validate_against_the_json_schema() {
        use crate::events::summary::{cause, dropped_record, suppressed_record};
        let schema: serde_json::Value = serde_json::from_str(include_str!("../../schema/event.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let version = PolicyVersion([0xab; 32]);
        let dir = directory(version);
        let net = NetEvent {
            header: EventHeader {
                kind: EVENT_NET,
                verdict: VERDICT_DENIED,
                operation: op::CONNECT,
                identity: 7,
                ppid: 3,
                ..Default::default()
            },
            family: 2,
            protocol: 6,
            ..Default::default()
        };
        let mut audit = net;
        audit.header.verdict = VERDICT_WOULD_DENY;
        let mut exec = ObjectEvent {
            header: EventHeader {
                kind: EVENT_EXEC,
                verdict: VERDICT_KILLED,
                operation: op::EXEC,
                identity: 7,
                ..Default::default()
            },
            dev: 8 << 20 | 1,
            rule_dev: 0,
            ino: 42,
            rule_ino: 0,
            nlink: 1,
            name_len: 0,
            name: [0; fence_common::NAME_LEN],
            path: Default::default(),
            actor_exe: Default::default(),
        };
        crate::events::decode::path_into_components(std::path::Path::new("/usr/bin/id"), &mut exec.path);
        let mut file = exec;
        file.header.kind = EVENT_FILE;
        file.header.operation = op::OPEN;
        file.header.verdict = VERDICT_DENIED;
        file.header.reason = reason::FILE_PROTECTED;
        let at: Timestamp = "2026-11-25T10:00:00.123456789Z".parse().unwrap();
        let key = fence_common::RateKey { identity: 7, operation: op::CONNECT, verdict: VERDICT_DENIED, _pad: [0; 2] };
        let records = [
            serde_json::to_value(build(&KernelEvent::Net(net), &dir, &FakeHost)).unwrap(),
            serde_json::to_value(build(&KernelEvent::Net(audit), &dir, &FakeHost)).unwrap(),
            serde_json::to_value(build(&KernelEvent::Object(Box::new(exec)), &dir, &FakeHost)).unwrap(),
            serde_json::to_value(build(&KernelEvent::Object(Box::new(file)), &dir, &FakeHost)).unwrap(),
            serde_json::to_value(suppressed_record(
                at,
                "h",
                key,
                Some("ci-bot"),
                12,
                std::time::Duration::from_secs(10),
            ))
            .unwrap(),
            serde_json::to_value(dropped_record(
                at,
                "h",
                cause::RING_BUFFER_FULL,
                3,
                std::time::Duration::from_secs(10),
            ))
            .unwrap(),
        ];
        for r in &records {
            let errors: Vec<String> =
                validator.iter_errors(r).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{r:#}\n{errors:#?}");
        }
        // What the schema refuses.
        let mut no_identity = records[0].clone();
        no_identity["fence"].as_object_mut().unwrap().remove("identity");
        let mut bad_verdict = records[0].clone();
        bad_verdict["fence"]["verdict"] = "maybe".into();
        let mut unknown_field = records[0].clone();
        unknown_field["fence"]["extra"] = 1.into();
        let mut summary_without_count = records[4].clone();
        summary_without_count["fence"].as_object_mut().unwrap().remove("suppressed");
        for bad in [no_identity, bad_verdict, unknown_field, summary_without_count] {
            assert!(!validator.is_valid(&bad), "the schema should refuse {bad:#}");
        }
    }
}
