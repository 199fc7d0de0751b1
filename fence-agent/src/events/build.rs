//! Building the record of a kernel event: what the kernel reported, named with what user space
//! knows (the identity's name and policy version, the executable, the cgroup's path, the path
//! the agent resolved an inode under).

use std::{
    borrow::Cow,
    net::{Ipv4Addr, Ipv6Addr},
};

use fence_common::{EventHeader, EventKind, NAME_LEN, NO_ID, NetEvent, ObjectEvent, Operation, Reason, Verdict};

/// The terminal ioctl whose escape events name it (the other is TIOCLINUX).
const TIOCSTI: u32 = 0x5412;
/// F_SETFL and FIOASYNC, the commands of an O_ASYNC refusal (`set-owner`).
const F_SETFL: u32 = 4;
const FIOASYNC: u32 = 0x5452;
use jiff::Timestamp;

use super::{
    decode::{DecodeError, DnsQueryEvent, Head, KernelEvent, SecretEvent, components},
    directory::Directory,
    record::{
        Agent, Cgroup, Destination, Dns, EVENT_SCHEMA_VERSION, Ecs, EventFields, Fence, FileFields, Host, Id, Name,
        Network, Parent, Process, Question, Record, Rule, Target, Thread, categories,
    },
};
use crate::{policy::Mode, resolve::ObjectId};

/// What the record needs from the running host (kept out of `build` so it stays testable).
pub trait HostView {
    fn hostname(&self) -> &str;
    /// Wall-clock time of a `bpf_ktime_get_boot_ns()` value.
    fn wall_time(&self, boot_ns: u64) -> Timestamp;
    fn executable(&self, tgid: u32) -> Option<String>;
    fn cgroup_path(&self, tgid: u32) -> Option<String>;
}

/// Builds the record of a kernel event; a record with values fence's programs do not write is
/// an error.
pub fn build(event: &KernelEvent, dir: &Directory, host: &dyn HostView) -> Result<Record, DecodeError> {
    let head = Head::of(event.header())?;
    Ok(match event {
        KernelEvent::Net(e) => net_record(e, &head, dir, host),
        KernelEvent::Object(e) => object_record(e, &head, dir, host),
        KernelEvent::Dns(e) => dns_record(e, &head, dir, host),
        KernelEvent::Secret(e) => secret_record(e, &head, dir, host),
    })
}

/// A secret request the broker refused: the process that asked, and the secret's name as the
/// target (`fence.target.kind: secret`).
fn secret_record(e: &SecretEvent, head: &Head, dir: &Directory, host: &dyn HostView) -> Record {
    let (timestamp, process, mut fence) = common(&e.header, head, dir, host);
    if e.header.identity == fence_common::NO_IDENTITY {
        fence.identity = String::new();
        fence.policy_version = String::new();
    }
    fence.rule = "secrets".to_owned();
    fence.target = Some(Target { kind: Cow::Borrowed("secret"), path: e.name.clone(), ..Target::default() });
    let iam = vec![Cow::Borrowed("iam"), Cow::Borrowed("intrusion_detection")];
    let mut event = event_fields(head, iam, "info", format!("secret {:?} refused: {}", e.name, e.why));
    event.dataset = Cow::Borrowed("fence.enforcement");
    record(timestamp, event, host, process, fence)
}

/// A refused (or, in audit mode, would-refuse) DNS query: the net record of the query to the
/// server the process named, with `dns.question.*`.
fn dns_record(e: &DnsQueryEvent, head: &Head, dir: &Directory, host: &dyn HostView) -> Record {
    let mut r = net_record(&e.net, head, dir, host);
    r.event.reason = format!("no egress rule of the identity names {} (query type {})", e.name, e.qtype);
    r.event.event_type = vec![Cow::Borrowed("protocol"), r.event.event_type[1].clone()];
    r.message = message(&r.fence.identity, &r.event.reason);
    r.dns = Some(Dns {
        question: Question { name: e.name.clone(), question_type: e.qtype.clone() },
        resolved_ip: e.resolved.iter().map(ToString::to_string).collect(),
    });
    r
}

/// `event.*` of an enforcement record (`id` and `sequence` are given as it is written).
fn event_fields(head: &Head, category: Vec<Name>, kind: &'static str, reason: String) -> EventFields {
    let denied = matches!(head.verdict, Verdict::Denied | Verdict::Killed);
    EventFields {
        id: String::new(),
        sequence: 0,
        kind: Cow::Borrowed("alert"),
        category,
        event_type: vec![Cow::Borrowed(kind), Cow::Borrowed(if denied { "denied" } else { "allowed" })],
        action: Cow::Borrowed(head.operation.as_str()),
        outcome: Cow::Borrowed(if denied { "failure" } else { "success" }),
        module: Cow::Borrowed("fence"),
        dataset: Cow::Borrowed("fence.enforcement"),
        reason,
    }
}

fn record(timestamp: String, event: EventFields, host: &dyn HostView, process: Process, fence: Fence) -> Record {
    Record {
        timestamp,
        message: message(&fence.identity, &event.reason),
        ecs: Ecs::CURRENT,
        agent: Agent::CURRENT,
        event,
        host: Host::named(host.hostname()),
        process,
        destination: None,
        network: None,
        file: None,
        dns: None,
        rule: Some(Rule { name: fence.rule.clone() }),
        fence,
    }
}

/// `message`: who, and why.
fn message(identity: &str, reason: &str) -> String {
    if identity.is_empty() { format!("unfenced process: {reason}") } else { format!("{identity}: {reason}") }
}

fn common(h: &EventHeader, head: &Head, dir: &Directory, host: &dyn HostView) -> (String, Process, Fence) {
    let timestamp = host.wall_time(h.boot_ns).strftime("%Y-%m-%dT%H:%M:%S.%NZ").to_string();
    let entry = dir.identity(h.identity);
    let policy_version = match entry {
        Some(e) if e.version.short_id() == h.policy_version => e.version.to_string(),
        // The event predates the identity's current version: what the kernel knew, the
        // digest's first 8 hex digits (abbreviated as git abbreviates, no mark).
        _ => format!("sha256:{:08x}", h.policy_version),
    };
    let process = Process {
        pid: h.tgid,
        thread: Thread { id: h.pid },
        name: comm(&h.comm),
        executable: host.executable(h.tgid),
        parent: (h.ppid != 0).then_some(Parent { pid: h.ppid }),
        user: (h.euid != NO_ID).then(|| Id { id: h.euid.to_string() }),
        group: (h.egid != NO_ID).then(|| Id { id: h.egid.to_string() }),
        real_user: (h.uid != NO_ID).then(|| Id { id: h.uid.to_string() }),
        real_group: (h.gid != NO_ID).then(|| Id { id: h.gid.to_string() }),
    };
    let cgroup_path = dir.cgroup_path(h.cgroup_id).map(str::to_owned).or_else(|| host.cgroup_path(h.tgid));
    let fence = Fence {
        schema_version: EVENT_SCHEMA_VERSION,
        identity: entry.map_or_else(|| format!("#{}", h.identity), |e| e.name.clone()),
        identity_id: h.identity,
        mode: if head.verdict == Verdict::WouldDeny { Mode::Audit } else { Mode::Enforce },
        verdict: head.verdict,
        operation: head.operation,
        mechanism: head.mechanism,
        policy_version,
        rule: match head.reason {
            Reason::IdentityDenyAll => "identity-expired",
            Reason::SocketKindNotAllowed => "socket-kinds",
            Reason::FileProtected => "protect",
            Reason::UnixHostDenied => "host-denied-sockets",
            Reason::SourceRouting => "no-source-route",
            Reason::ProgramWrite => "exec",
            Reason::FenceState => "no-way-out",
            Reason::NameNotAllowed => "egress-names",
            Reason::DnsUnavailable => "dns-unavailable",
            _ => "default-deny",
        }
        .to_owned(),
        reason: head.reason,
        cgroup: Cgroup { id: h.cgroup_id, path: cgroup_path },
        target: None,
    };
    (timestamp, process, fence)
}

fn net_record(e: &NetEvent, head: &Head, dir: &Directory, host: &dyn HostView) -> Record {
    let h = &e.header;
    let (timestamp, process, fence) = common(h, head, dir, host);
    let family: &'static str = match e.family {
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
    let destination = (head.operation != Operation::Socket).then(|| {
        let ip = match e.family {
            2 => Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string(),
            _ => Ipv6Addr::from(e.addr).to_string(),
        };
        Destination { address: ip.clone(), ip, port: e.port }
    });
    let why = match (&destination, head.reason) {
        (_, Reason::IdentityDenyAll) => "the identity has expired and is denied everything".to_owned(),
        (Some(d), Reason::SourceRouting) => format!(
            "a {transport} packet to {} carried a routing header or IP options: a source route would send it to a \
             first hop no egress rule judged",
            d.ip
        ),
        (Some(d), _) => format!("no egress rule allows {transport} to {}", join_host_port(&d.ip, d.port)),
        (None, _) if family == "other" => format!(
            "fenced identities may not create {} sockets (family {}, type {}, protocol {})",
            family_name(e.family),
            e.family,
            e.sock_type,
            e.protocol
        ),
        (None, _) => format!(
            "fenced identities may only create TCP and UDP sockets (family {family}, type {}, protocol {})",
            e.sock_type, e.protocol
        ),
    };
    let kind = if head.operation == Operation::Socket { "start" } else { "connection" };
    let event = event_fields(head, categories(head.operation), kind, why);
    let network = Network { family: Cow::Borrowed(family), transport, iana_number: e.protocol.to_string() };
    Record { destination, network: Some(network), ..record(timestamp, event, host, process, fence) }
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

fn object_record(e: &ObjectEvent, head: &Head, dir: &Directory, host: &dyn HostView) -> Record {
    let h = &e.header;
    let (timestamp, mut process, mut fence) = common(h, head, dir, host);
    // The exec fallback reports after the exec: /proc then shows the new program, while the
    // kernel's actor is what the task ran before it (where the kernel could keep it).
    let after_exec = head.mechanism == fence_common::Mechanism::TpSchedProcessExec;
    if (process.executable.is_none() || after_exec) && e.actor_exe.depth > 0 {
        let (names, complete) = components(&e.actor_exe);
        process.executable = Some(format!("{}{}", if complete { "/" } else { ".../" }, names.join("/")));
    }
    if head.kind == EventKind::Escape {
        return escape_record(e, head, timestamp, process, fence, host);
    }
    let name_len = (e.name_len as usize).min(NAME_LEN);
    let name = String::from_utf8_lossy(&e.name[..name_len]).into_owned();
    let abstract_socket = head.kind == EventKind::Unix && e.ino == 0;
    let (path, fs_relative) = if abstract_socket {
        (format!("@{name}"), false)
    } else {
        object_path(dir, ObjectId { dev: e.dev, ino: e.ino }, &e.path)
    };
    let rule_path = (e.rule_ino != 0)
        .then(|| dir.object_path(ObjectId { dev: e.rule_dev, ino: e.rule_ino }))
        .flatten()
        .map(|p| p.display().to_string());
    if head.reason == Reason::FileProtected {
        fence.rule = format!("protect:{}", rule_path.as_deref().unwrap_or(&path));
    }
    let (kind, event_type): (&'static str, &'static str) = match (head.kind, head.operation) {
        (EventKind::Exec, _) => ("program", "start"),
        (EventKind::File, Operation::Unlink) => ("file", "deletion"),
        (EventKind::File, Operation::Rename) => ("file", "change"),
        (EventKind::File, Operation::Link) => ("file", "creation"),
        (EventKind::File, Operation::Truncate) => ("file", "change"),
        (EventKind::File, _) => ("file", "access"),
        _ => ("socket", "connection"),
    };
    let verb = match (head.verdict, head.operation) {
        (Verdict::Killed, _) => "killed on exec of",
        (Verdict::WouldDeny, Operation::Unlink) => "would deny removing",
        (Verdict::WouldDeny, Operation::Rename) => "would deny renaming",
        (Verdict::WouldDeny, Operation::Link) => "would deny a new name for",
        (Verdict::WouldDeny, Operation::Truncate) => "would deny truncating",
        (Verdict::WouldDeny, _) => "would deny",
        (Verdict::Denied, Operation::Unlink) => "denied removing",
        (Verdict::Denied, Operation::Rename) => "denied renaming",
        (Verdict::Denied, Operation::Link) => "denied a new name for",
        (Verdict::Denied, Operation::Truncate) => "denied truncating",
        (Verdict::Denied, _) => "denied",
    };
    let why = match head.reason {
        Reason::ExecNotAllowed => format!("{verb} {path}: not in the identity's exec allow-list"),
        Reason::ExecFileless => format!("{verb} {path}: executing an unlinked file (memfd, deleted) is not allowed"),
        Reason::FileProtected => match &rule_path {
            Some(r) if *r != path => format!("{verb} {path}: protected credential file (under {r})"),
            _ => format!("{verb} {path}: protected credential file"),
        },
        Reason::UnixNotAllowed => format!("{verb} {path}: not in the identity's unix-socket allow-list"),
        Reason::UnixHostDenied => {
            format!("{verb} {path}: a socket through which a daemon runs code for its clients (host default-deny)")
        }
        Reason::IdentityDenyAll => "the identity has expired and is denied everything".to_owned(),
        Reason::FenceState => format!("{verb} {path}: fence's pinned programs and maps (bpffs)"),
        Reason::ProgramWrite => {
            format!("{verb} writing {path}: a program the identity may run cannot be changed from inside the fence")
        }
        Reason::PathTooDeep => format!(
            "{verb} {path}: more directories below its file system's root than fence checks for protected trees"
        ),
        _ => format!("{verb} {path}"),
    };
    let file_name = path.rsplit('/').next().unwrap_or_default().to_owned();
    let inode = (e.ino != 0).then(|| e.ino.to_string());
    let device = (e.dev != 0).then(|| format!("{}:{}", e.dev >> 20, e.dev & 0xfffff));
    let invoked_as = (head.kind == EventKind::Exec && !name.is_empty()).then_some(name);
    fence.target = Some(Target {
        kind: Cow::Borrowed(kind),
        path: path.clone(),
        invoked_as,
        fileless: e.nlink == 0 && e.ino != 0,
        fs_relative,
        ..Target::default()
    });
    let event = event_fields(head, categories(head.operation), event_type, why);
    let file = Some(FileFields { path, name: file_name, inode, device });
    Record { file, ..record(timestamp, event, host, process, fence) }
}

/// An attempt to leave the fence or tamper with it.
fn escape_record(
    e: &ObjectEvent,
    head: &Head,
    timestamp: String,
    process: Process,
    mut fence: Fence,
    host: &dyn HostView,
) -> Record {
    let (names, _) = components(&e.path);
    let path = format!("/{}", names.join("/"));
    let target_kind = |k: &'static str| -> Name { Cow::Borrowed(k) };
    let (target, why) = match head.operation {
        Operation::CgroupMigrate => (
            Target {
                kind: target_kind("cgroup"),
                path: if e.path.depth == 0 { String::new() } else { path.clone() },
                cgroup_id: Some(e.ino),
                ..Target::default()
            },
            if e.path.depth == 0 {
                // From lsm_cgroup/inode_permission: the cgroup whose cgroup.procs the move
                // needs write access to (the common ancestor of both ends), by id.
                format!("a cgroup move across cgroup {}, outside the identity's cgroups", e.ino)
            } else {
                format!("moving a task into cgroup {path}, outside the identity's cgroups")
            },
        ),
        Operation::CgroupWrite => (
            Target { kind: target_kind("cgroup"), path: path.clone(), cgroup_id: Some(e.ino), ..Target::default() },
            format!("writing {path}, a control file of a cgroup outside the identity's cgroups"),
        ),
        Operation::CloneIntoCgroup => (
            Target { kind: target_kind("cgroup"), ..Target::default() },
            "clone3(CLONE_INTO_CGROUP): starting a child in another cgroup".to_owned(),
        ),
        Operation::Ptrace | Operation::Signal => {
            let what = if head.operation == Operation::Ptrace { "tracing" } else { "signalling" };
            (
                Target {
                    kind: target_kind("process"),
                    pid: Some(e.ino as u32),
                    detail: Some(e.dev),
                    ..Target::default()
                },
                format!("{what} process {} outside the identity", e.ino),
            )
        }
        Operation::SysctlWrite => {
            let len = (e.name_len as usize).min(NAME_LEN);
            let name = String::from_utf8_lossy(&e.name[..len]).into_owned();
            (
                Target { kind: target_kind("sysctl"), path: name.clone(), ..Target::default() },
                format!("writing the host setting {name} (sysctl)"),
            )
        }
        Operation::Ioctl => {
            let what = if e.dev == TIOCSTI { "TIOCSTI" } else { "TIOCLINUX" };
            (
                Target { kind: target_kind("terminal"), path: path.clone(), detail: Some(e.dev), ..Target::default() },
                format!("{what} on {path}: pushing input into a terminal, which its shell would run"),
            )
        }
        // O_ASYNC on a terminal (F_SETFL, FIOASYNC): its foreground job would get the SIGIO.
        Operation::SetOwner if e.dev == F_SETFL || e.dev == FIOASYNC => (
            Target { kind: target_kind("terminal"), detail: Some(e.dev), ..Target::default() },
            "turning on O_ASYNC on a terminal or other character device, whose foreground process group would get \
             its SIGIO"
                .to_owned(),
        ),
        Operation::SetOwner => {
            // The kernel's pid argument: negative for a process group, or 0 when unreadable.
            let pid = e.ino as u32 as i32;
            let whom = if pid < 0 { format!("process group {}", -pid) } else { format!("process {pid}") };
            (
                Target {
                    kind: target_kind("process"),
                    pid: (pid > 0).then_some(pid as u32),
                    detail: Some(e.dev),
                    ..Target::default()
                },
                format!("directing a file's SIGIO/SIGURG at {whom}, not the caller itself"),
            )
        }
        _ => (
            Target { kind: target_kind("bpf"), detail: Some(e.dev), ..Target::default() },
            "bpf(2) from a fenced identity".to_owned(),
        ),
    };
    let denied = head.verdict == Verdict::Denied;
    fence.rule = if head.operation == Operation::SysctlWrite { "host-settings" } else { "no-way-out" }.to_owned();
    fence.target = Some(target);
    let reason = format!("{} {why}", if denied { "denied" } else { "would deny" });
    let event = event_fields(head, categories(head.operation), "change", reason);
    record(timestamp, event, host, process, fence)
}

/// The name of an address family fenced identities may not use (`socket(2)`'s first argument).
fn family_name(family: u16) -> &'static str {
    match family {
        3 => "AX.25",
        4 => "IPX",
        5 => "AppleTalk",
        17 => "AF_PACKET",
        21 => "RDS",
        29 => "CAN",
        30 => "TIPC",
        31 => "Bluetooth",
        38 => "AF_ALG",
        40 => "AF_VSOCK",
        42 => "Qualcomm IPC",
        43 => "SMC",
        44 => "AF_XDP",
        45 => "MCTP",
        _ => "this family's",
    }
}

fn join_host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests;
