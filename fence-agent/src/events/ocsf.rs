//! The OCSF form of an event line (`[events] format = "ocsf"` or `"both"`): a pure mapping from
//! the ECS record the agent builds ([`Record`], [`SummaryRecord`]) to an event of the Open
//! Cybersecurity Schema Framework, version [`OCSF_VERSION`]. Nothing is looked up again: what
//! the ECS line says, the OCSF line says in OCSF's words. `schema/ocsf.schema.json` is its JSON
//! Schema (checked in the unit tests and against every line the host tests read).
//!
//! Which class each event is (README "Events" has the table):
//! - connect, sendmsg, packet, unix-connect, unix-send: Network Activity (4001);
//! - dns-query: DNS Activity (4003), activity Query;
//! - open, unlink, rename, link, truncate: File System Activity (1001);
//! - exec, ptrace, signal: Process Activity (1007), the process acted on as `process`;
//! - attempts to leave the fence (cgroup-migrate, cgroup-write, clone-into-cgroup, bpf, sysctl-write, ioctl
//!   terminal input, set-owner), sockets of a forbidden kind (socket: no endpoint yet), refused
//!   secrets (secret-get) and the log's own summaries (events-suppressed, events-dropped):
//!   Detection Finding (2004): none of the activity classes fits them (they lack the endpoint
//!   or process those classes need).
//!
//! The verdict is `action_id` and `disposition_id` (the security control profile): denied and
//! killed are Denied / Blocked; audit mode's would-deny is Allowed / Detected ("a policy
//! violation was detected without further action"), never Blocked. fence's own fields (the
//! ECS line's `fence.*`: identity, mode, verdict, mechanism, policy version, rule, reason,
//! cgroup, target) are `unmapped.*` under the same names, and the file's chain link is
//! `unmapped.chain` (the link goes into a line's last member; `unmapped` is always last).

use std::borrow::Cow;

use fence_common::{Operation, Verdict};
use thiserror::Error;

mod object;

pub use self::object::*;
use super::{
    record::{FileFields, Record},
    summary::{ACTION_DROPPED, SummaryRecord},
};

/// The OCSF version the lines declare (`metadata.version`).
pub const OCSF_VERSION: &str = "1.3.0";
/// `metadata.product.vendor_name` and `.name`.
pub const PRODUCT: &str = "fence";

#[derive(Debug, Error)]
pub enum OcsfError {
    #[error("the record's @timestamp {0:?} is not a time")]
    Timestamp(String),
    #[error("serialising the OCSF event failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// An OCSF class fence writes: its uid, name and category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

pub const FILE_SYSTEM_ACTIVITY: Class =
    Class { uid: 1001, name: "File System Activity", category_uid: 1, category_name: "System Activity" };
pub const PROCESS_ACTIVITY: Class =
    Class { uid: 1007, name: "Process Activity", category_uid: 1, category_name: "System Activity" };
pub const DETECTION_FINDING: Class =
    Class { uid: 2004, name: "Detection Finding", category_uid: 2, category_name: "Findings" };
pub const NETWORK_ACTIVITY: Class =
    Class { uid: 4001, name: "Network Activity", category_uid: 4, category_name: "Network Activity" };
pub const DNS_ACTIVITY: Class =
    Class { uid: 4003, name: "DNS Activity", category_uid: 4, category_name: "Network Activity" };

/// Every class fence writes.
pub const CLASSES: [Class; 5] =
    [FILE_SYSTEM_ACTIVITY, PROCESS_ACTIVITY, DETECTION_FINDING, NETWORK_ACTIVITY, DNS_ACTIVITY];

/// The class and activity (`activity_id`, its name) of an operation's events.
pub fn class_of(operation: Operation) -> (Class, u32, &'static str) {
    use Operation as O;
    match operation {
        O::Connect | O::UnixConnect => (NETWORK_ACTIVITY, 1, "Open"),
        O::Sendmsg | O::UnixSend | O::Packet => (NETWORK_ACTIVITY, 6, "Traffic"),
        O::DnsQuery => (DNS_ACTIVITY, 1, "Query"),
        O::Open => (FILE_SYSTEM_ACTIVITY, 14, "Open"),
        O::Unlink => (FILE_SYSTEM_ACTIVITY, 4, "Delete"),
        O::Rename => (FILE_SYSTEM_ACTIVITY, 5, "Rename"),
        O::Link => (FILE_SYSTEM_ACTIVITY, 1, "Create"),
        O::Truncate => (FILE_SYSTEM_ACTIVITY, 3, "Update"),
        O::Exec => (PROCESS_ACTIVITY, 1, "Launch"),
        // Attaching to, or reading, another process: a handle to it.
        O::Ptrace => (PROCESS_ACTIVITY, 3, "Open"),
        O::Signal => (PROCESS_ACTIVITY, 99, "Other"),
        // Findings: what has no object an activity class needs (a socket of a forbidden kind
        // has no endpoint yet; terminal input (ioctl) and SIGIO owners (set-owner) name no
        // process), attempts to leave the fence, and refused secrets.
        O::Socket
        | O::Ioctl
        | O::SetOwner
        | O::CgroupMigrate
        | O::CgroupWrite
        | O::CloneIntoCgroup
        | O::Bpf
        | O::SysctlWrite
        | O::SecretGet => (DETECTION_FINDING, 1, "Create"),
    }
}

/// `time` of an RFC 3339 timestamp: milliseconds since the epoch.
fn millis(timestamp: &str) -> Result<i64, OcsfError> {
    let t: jiff::Timestamp = timestamp.parse().map_err(|_| OcsfError::Timestamp(timestamp.to_owned()))?;
    Ok(t.as_millisecond())
}

fn metadata<'a>(event: &'a super::record::EventFields, version: &'a str, system: bool) -> Metadata<'a> {
    Metadata {
        version: OCSF_VERSION,
        product: Product { name: PRODUCT, vendor_name: PRODUCT, version },
        uid: &event.id,
        sequence: (event.sequence != 0).then_some(event.sequence),
        log_name: &event.dataset,
        log_provider: "fence-agent",
        // System activity classes have `device` of their own; the others by the host profile.
        profiles: if system { &["security_control"] } else { &["host", "security_control"] },
    }
}

/// `action_id`, `action`, `disposition_id`, `disposition` and `severity_id` of a verdict:
/// a real refusal is Denied / Blocked, audit mode's would-deny Allowed / Detected.
fn verdict_ids(verdict: Verdict) -> (u8, &'static str, u8, &'static str, u8) {
    match verdict {
        Verdict::Denied | Verdict::Killed => (2, "Denied", 2, "Blocked", 3),
        Verdict::WouldDeny => (1, "Allowed", 15, "Detected", 2),
    }
}

fn severity_name(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        _ => "Unknown",
    }
}

fn file_of<'a>(f: &'a FileFields, socket: bool) -> File<'a> {
    File { name: &f.name, path: &f.path, type_id: if socket { 5 } else { 0 }, uid: f.inode.as_deref() }
}

/// The OCSF event of an enforcement record.
pub fn event(r: &Record) -> Result<Ocsf<'_>, OcsfError> {
    let operation = r.fence.operation;
    let (class, activity_id, activity_name) = class_of(operation);
    let (action_id, action, disposition_id, disposition, mut severity_id) = verdict_ids(r.fence.verdict);
    let finding = class == DETECTION_FINDING;
    if finding {
        severity_id += 1;
    }
    // A finding's status is its own (New); an activity's, whether the operation succeeded.
    let (status_id, status) = match (finding, r.event.outcome == "failure") {
        (true, _) => (1, "New"),
        (false, true) => (2, "Failure"),
        (false, false) => (1, "Success"),
    };
    let p = &r.process;
    let actor = || Actor {
        process: Process {
            pid: Some(p.pid),
            tid: Some(p.thread.id),
            name: Some(&p.name),
            file: p.executable.as_deref().map(|exe| File {
                name: exe.rsplit('/').next().unwrap_or(exe),
                path: exe,
                type_id: 0,
                uid: None,
            }),
            parent_process: p.parent.as_ref().map(|pp| Parent { pid: pp.pid }),
            user: p.user.as_ref().map(|u| User { uid: &u.id }),
        },
        user: p.user.as_ref().map(|u| User { uid: &u.id }),
    };
    let socket = matches!(operation, Operation::UnixConnect | Operation::UnixSend);
    let target = r.fence.target.as_ref();
    let mut ocsf = Ocsf {
        class_uid: class.uid,
        class_name: class.name,
        category_uid: class.category_uid,
        category_name: class.category_name,
        activity_id,
        activity_name,
        type_uid: class.uid * 100 + activity_id,
        type_name: format!("{}: {activity_name}", class.name),
        severity_id,
        severity: severity_name(severity_id),
        time: millis(&r.timestamp)?,
        message: &r.message,
        status_id,
        status,
        status_detail: Some(&r.event.reason),
        action_id,
        action,
        disposition_id: Some(disposition_id),
        disposition: Some(disposition),
        count: None,
        start_time: None,
        end_time: None,
        metadata: metadata(&r.event, &r.agent.version, class.category_uid == 1),
        device: Device { hostname: &r.host.hostname, name: &r.host.name, type_id: 0 },
        actor: None,
        dst_endpoint: None,
        connection_info: None,
        query: None,
        answers: Vec::new(),
        file: None,
        process: None,
        finding_info: None,
        evidences: Vec::new(),
        unmapped: Unmapped::Event {
            fence: &r.fence,
            process: ProcessIds {
                group: p.group.as_ref(),
                real_user: p.real_user.as_ref(),
                real_group: p.real_group.as_ref(),
            },
        },
    };
    if finding {
        ocsf.finding_info = Some(FindingInfo {
            uid: finding_uid(&r.event),
            title: &r.event.reason,
            types: [operation.as_str()],
            analytic: Some(Analytic { name: &r.fence.rule, type_id: 1, analytic_type: "Rule" }),
        });
        ocsf.evidences = vec![Evidence { actor: actor(), file: r.file.as_ref().map(|f| file_of(f, false)) }];
        return Ok(ocsf);
    }
    ocsf.actor = Some(actor());
    match class.uid {
        4001 | 4003 => {
            ocsf.dst_endpoint = match (&r.destination, target) {
                (Some(d), _) => Some(Endpoint { ip: Some(&d.ip), port: Some(d.port), name: None }),
                (None, Some(t)) if socket && !t.path.is_empty() => {
                    Some(Endpoint { ip: None, port: None, name: Some(&t.path) })
                }
                _ => None,
            };
            ocsf.connection_info = r.network.as_ref().map(|n| ConnectionInfo {
                direction_id: 2,
                direction: "Outbound",
                protocol_num: n.iana_number.parse().ok(),
                protocol_name: &n.transport,
                protocol_ver_id: match n.family.as_ref() {
                    "ipv4" => 4,
                    "ipv6" => 6,
                    _ => 0,
                },
            });
            ocsf.query =
                r.dns.as_ref().map(|d| Query { hostname: &d.question.name, query_type: &d.question.question_type });
            ocsf.answers = r
                .dns
                .iter()
                .flat_map(|d| &d.resolved_ip)
                .map(|ip| Answer { rdata: ip, record_type: if ip.contains(':') { "AAAA" } else { "A" } })
                .collect();
            // A unix socket with no address: the socket file stands in (Network Activity needs
            // an endpoint).
            if ocsf.dst_endpoint.is_none() && class.uid == NETWORK_ACTIVITY.uid {
                ocsf.dst_endpoint = Some(Endpoint {
                    ip: None,
                    port: None,
                    name: Some(r.file.as_ref().map_or("unknown", |f| f.path.as_str())),
                });
            }
        }
        1001 => {
            let fallback = target.map(|t| File { name: &t.path, path: &t.path, type_id: 0, uid: None });
            ocsf.file = r.file.as_ref().map(|f| file_of(f, false)).or(fallback);
            if ocsf.file.is_none() {
                ocsf.file = Some(File { name: "unknown", path: "", type_id: 0, uid: None });
            }
        }
        _ => {
            // Process Activity: the process acted on (the program launched; the process traced
            // or signalled).
            let mut process = match operation {
                Operation::Exec => Process {
                    name: r.file.as_ref().map(|f| f.name.as_str()),
                    file: r.file.as_ref().map(|f| file_of(f, false)),
                    ..Process::default()
                },
                _ => Process { pid: target.and_then(|t| t.pid), ..Process::default() },
            };
            if process.pid.is_none() && process.name.is_none() {
                process.name =
                    Some(target.map_or("", |t| t.path.as_str())).filter(|n| !n.is_empty()).or(Some("unknown"));
            }
            ocsf.process = Some(process);
        }
    }
    Ok(ocsf)
}

/// `finding_info.uid`: the event's id (an unnumbered record, only in tests: its action).
fn finding_uid(event: &super::record::EventFields) -> Cow<'_, str> {
    if event.id.is_empty() { Cow::Borrowed(&event.action) } else { Cow::Borrowed(&event.id) }
}

/// The OCSF event of a summary (`events-suppressed`, `events-dropped`): a Detection Finding
/// that counts (`count`) the events over the interval (`start_time`..`end_time`).
pub fn summary(s: &SummaryRecord) -> Result<Ocsf<'_>, OcsfError> {
    let class = DETECTION_FINDING;
    let end = millis(&s.timestamp)?;
    // The interval is whole seconds of at most an hour: no loss in the cast.
    let start = end - (s.fence.interval_seconds * 1000.0) as i64;
    let dropped = s.event.action == ACTION_DROPPED;
    let count = s.fence.dropped.as_ref().map(|d| d.count).or(s.fence.suppressed);
    let severity_id = if dropped { 3 } else { 1 };
    Ok(Ocsf {
        class_uid: class.uid,
        class_name: class.name,
        category_uid: class.category_uid,
        category_name: class.category_name,
        activity_id: 1,
        activity_name: "Create",
        type_uid: class.uid * 100 + 1,
        type_name: format!("{}: Create", class.name),
        severity_id,
        severity: severity_name(severity_id),
        time: end,
        message: &s.message,
        status_id: 1,
        status: "New",
        status_detail: Some(&s.event.reason),
        // A summary reports on the log, not on one action.
        action_id: 0,
        action: "Unknown",
        disposition_id: Some(if dropped { 27 } else { 20 }),
        disposition: Some(if dropped { "Error" } else { "Count" }),
        count,
        start_time: Some(start),
        end_time: Some(end),
        metadata: metadata(&s.event, &s.agent.version, false),
        device: Device { hostname: &s.host.hostname, name: &s.host.name, type_id: 0 },
        actor: None,
        dst_endpoint: None,
        connection_info: None,
        query: None,
        answers: Vec::new(),
        file: None,
        process: None,
        finding_info: Some(FindingInfo {
            uid: finding_uid(&s.event),
            title: &s.event.reason,
            types: [&s.event.action],
            analytic: None,
        }),
        evidences: Vec::new(),
        unmapped: Unmapped::Summary(&s.fence),
    })
}

/// The OCSF line of an enforcement record (no newline).
pub fn event_line(r: &Record) -> Result<String, OcsfError> {
    Ok(serde_json::to_string(&event(r)?)?)
}

/// The OCSF line of a summary (no newline).
pub fn summary_line(s: &SummaryRecord) -> Result<String, OcsfError> {
    Ok(serde_json::to_string(&summary(s)?)?)
}

/// Whether a parsed line is an OCSF event (fence's readers read ECS lines and skip these).
pub fn is_ocsf(value: &serde_json::Value) -> bool {
    value.get("class_uid").is_some() && value.pointer("/metadata/version").is_some()
}

#[cfg(test)]
mod tests;
