use fence_common::{IdentityInfo, MODE_ENFORCE, Mechanism};

use super::*;
use crate::{
    compile::{CompiledIdentity, CompiledPolicy},
    policy::{Mode, PolicyVersion},
};

/// A host with fixed answers, for records built in tests.
pub(crate) struct FakeHost;
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

/// A record as the writer writes it: numbered by a [`Sequencer`].
pub(crate) fn as_written<T: serde::Serialize>(record: T) -> serde_json::Value {
    let mut v = serde_json::to_value(record).unwrap();
    let (id, sequence) = crate::events::sequence::Sequencer::in_memory().take();
    v["event"]["id"] = id.into();
    v["event"]["sequence"] = sequence.into();
    v
}

pub(crate) use crate::events::record::fields_not_in_ecs as not_in_ecs;

/// The OCSF line of an ECS line as written (`[events] format = "ocsf"`) validates against
/// `schema/ocsf.schema.json`.
#[track_caller]
pub(crate) fn assert_ocsf_valid(ecs: &serde_json::Value) {
    use crate::{cmd::logs::Line, events::ocsf};
    static V: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = V.get_or_init(|| {
        let schema = serde_json::from_str(include_str!("../../../schema/ocsf.schema.json")).unwrap();
        jsonschema::validator_for(&schema).expect("the schema compiles")
    });
    let line = match Line::parse(ecs.to_string().as_bytes()).unwrap() {
        Line::Event(r) => ocsf::event_line(&r),
        Line::Summary(s) => ocsf::summary_line(&s),
    };
    let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{v:#}\n{errors:#?}");
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
        kind: EventKind::Net as u8,
        verdict: Verdict::Denied as u8,
        operation: Operation::Connect as u8,
        mechanism: Mechanism::CgroupConnect4 as u8,
        identity: 7,
        boot_ns: 5,
        cgroup_id: 99,
        pid: 11,
        tgid: 10,
        uid: 1000,
        gid: 1000,
        policy_version: version.short_id(),
        reason: Reason::NoMatchingRule as u8,
        _pad: [0; 3],
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        ppid: 9,
        euid: 0,
        egid: 50,
        _pad2: 0,
    };
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    let e = NetEvent { header, family: 2, port: 22, protocol: 6, sock_type: 1, addr };
    let r = build(&KernelEvent::Net(e), &directory(version), &FakeHost).unwrap();
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
    assert_eq!(v["process"]["real_user"]["id"], "1000");
    assert_eq!(v["process"]["real_group"]["id"], "1000");
    // A set-user-id program: the effective ids are not the real ones.
    assert_eq!(v["process"]["user"]["id"], "0");
    assert_eq!(v["process"]["group"]["id"], "50");
    assert_eq!(v["host"]["name"], "host-a");
    assert_eq!(v["agent"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["rule"]["name"], "default-deny");
    assert_eq!(v["message"], "ci-bot: no egress rule allows tcp to 10.0.0.1:22");
    assert_eq!(v["event"]["category"], serde_json::json!(["network"]));
    assert_eq!(v["event"]["type"], serde_json::json!(["connection", "denied"]));
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
    e.header.kind = EventKind::Net as u8;
    e.header.verdict = Verdict::WouldDeny as u8;
    e.header.operation = Operation::Sendmsg as u8;
    e.header.mechanism = Mechanism::CgroupSendmsg6 as u8;
    e.header.reason = Reason::NoMatchingRule as u8;
    e.header.identity = 7;
    e.header.policy_version = 0xdeadbeef;
    e.family = 10;
    e.protocol = 17;
    e.port = 53;
    e.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
    let v = serde_json::to_value(build(&KernelEvent::Net(e), &directory(version), &FakeHost).unwrap()).unwrap();
    assert_eq!(v["fence"]["verdict"], "would-deny");
    assert_eq!(v["fence"]["mode"], "audit");
    assert_eq!(v["event"]["outcome"], "success");
    assert_eq!(v["destination"]["ip"], "::ffff:127.0.0.1");
    assert_eq!(v["event"]["reason"], "no egress rule allows udp to [::ffff:127.0.0.1]:53");
    // Older policy version than the directory knows: the kernel's short id is reported.
    assert_eq!(v["fence"]["policy_version"], "sha256:deadbeef");
}

/// The records the agent writes validate against the published JSON Schema, and the
/// schema refuses records that break it.
#[test]
fn records_validate_against_the_json_schema() {
    use crate::events::summary::{cause, dropped_record, suppressed_record};
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../../schema/event.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let version = PolicyVersion([0xab; 32]);
    let dir = directory(version);
    let net = NetEvent {
        header: EventHeader {
            kind: EventKind::Net as u8,
            verdict: Verdict::Denied as u8,
            operation: Operation::Connect as u8,
            mechanism: Mechanism::CgroupConnect4 as u8,
            reason: Reason::NoMatchingRule as u8,
            identity: 7,
            ppid: 3,
            ..Default::default()
        },
        family: 2,
        protocol: 6,
        ..Default::default()
    };
    let mut audit = net;
    audit.header.verdict = Verdict::WouldDeny as u8;
    let mut exec = ObjectEvent {
        header: EventHeader {
            kind: EventKind::Exec as u8,
            verdict: Verdict::Killed as u8,
            operation: Operation::Exec as u8,
            mechanism: Mechanism::TpSchedProcessExec as u8,
            reason: Reason::ExecNotAllowed as u8,
            identity: 7,
            // Effective ids the kernel could not read: left out, never shown as root.
            euid: fence_common::NO_ID,
            egid: fence_common::NO_ID,
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
    file.header.kind = EventKind::File as u8;
    file.header.operation = Operation::Open as u8;
    file.header.verdict = Verdict::Denied as u8;
    file.header.mechanism = Mechanism::LsmFileOpen as u8;
    file.header.reason = Reason::FileProtected as u8;
    let at: Timestamp = "2026-11-25T10:00:00.123456789Z".parse().unwrap();
    let key = fence_common::RateKey {
        identity: 7,
        operation: Operation::Connect as u8,
        verdict: Verdict::Denied as u8,
        _pad: [0; 2],
    };
    let records = [
        as_written(build(&KernelEvent::Net(net), &dir, &FakeHost).unwrap()),
        as_written(build(&KernelEvent::Net(audit), &dir, &FakeHost).unwrap()),
        as_written(build(&KernelEvent::Object(Box::new(exec)), &dir, &FakeHost).unwrap()),
        as_written(build(&KernelEvent::Object(Box::new(file)), &dir, &FakeHost).unwrap()),
        as_written(suppressed_record(at, "h", key, Some("ci-bot"), 12, std::time::Duration::from_secs(10))),
        as_written(dropped_record(at, "h", cause::RING_BUFFER_FULL, 3, std::time::Duration::from_secs(10))),
    ];
    for r in &records {
        let errors: Vec<String> = validator.iter_errors(r).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{r:#}\n{errors:#?}");
        assert_eq!(not_in_ecs(r), Vec::<String>::new(), "{r:#}");
        assert_eq!(crate::events::record::types_not_expected(r), Vec::<String>::new(), "{r:#}");
        assert_ocsf_valid(r);
    }
    // File and process records carry intrusion_detection, whose expected types include denied.
    assert_eq!(records[3]["event"]["category"], serde_json::json!(["file", "intrusion_detection"]));
    assert_eq!(records[3]["event"]["type"], serde_json::json!(["access", "denied"]));
    assert_eq!(records[2]["event"]["category"], serde_json::json!(["process", "intrusion_detection"]));
    // Effective ids: present where read (0 here), left out where not.
    assert_eq!(records[0]["process"]["user"]["id"], "0");
    assert!(records[2]["process"].get("user").is_none() && records[2]["process"].get("group").is_none());
    // A field the declared ECS version does not define is found.
    let mut not_ecs = records[0].clone();
    not_ecs["process"]["saved_user"] = serde_json::json!({"id": "0"});
    assert_eq!(not_in_ecs(&not_ecs), Vec::<String>::new(), "process.saved_user.id is in ECS 8.17");
    not_ecs["process"]["gid"] = 0.into();
    assert_eq!(not_in_ecs(&not_ecs), vec!["process.gid".to_owned()]);
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
    // The same records as the event file has them, each with its link to the one before, and
    // a checkpoint among them (the chain's tests sign and check those): still valid, and they
    // read back as records.
    let mut chain = crate::chain::Chain::resume(crate::chain::LogKind::Events, &[]);
    let mut sealed = Vec::new();
    for event in [KernelEvent::Net(net), KernelEvent::Object(Box::new(exec))] {
        let mut record = build(&event, &dir, &FakeHost).unwrap();
        (record.event.id, record.event.sequence) = crate::events::sequence::Sequencer::in_memory().take();
        chain.seal(&serde_json::to_string(&record).unwrap(), &mut sealed);
    }
    let summary = dropped_record(at, "h", cause::RING_BUFFER_FULL, 3, std::time::Duration::from_secs(10));
    let mut summary = summary;
    (summary.event.id, summary.event.sequence) = crate::events::sequence::Sequencer::in_memory().take();
    chain.seal(&serde_json::to_string(&summary).unwrap(), &mut sealed);
    for line in String::from_utf8(sealed).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["fence"]["chain"]["prev"].is_string(), "{line}");
        let errors: Vec<String> =
            validator.iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{v:#}\n{errors:#?}");
        assert_eq!(not_in_ecs(&v), Vec::<String>::new(), "{v:#}");
        crate::cmd::logs::Line::parse(line.as_bytes()).unwrap();
    }
    // Every record reads back as what was written.
    for r in &records[..4] {
        let back: Record = serde_json::from_value(r.clone()).unwrap();
        assert_eq!(&serde_json::to_value(back).unwrap(), r);
    }
}

/// The records of the bypass hooks (source routes, sysctl writes, terminal input, signal
/// owners, names of protected files, address families) say what was refused and validate.
fn bypass_header(kind: EventKind, operation: Operation, mechanism: Mechanism, reason: Reason) -> EventHeader {
    EventHeader {
        kind: kind as u8,
        verdict: Verdict::Denied as u8,
        operation: operation as u8,
        mechanism: mechanism as u8,
        reason: reason as u8,
        identity: 7,
        ..Default::default()
    }
}

fn bypass_object(header: EventHeader) -> ObjectEvent {
    ObjectEvent {
        header,
        dev: 0,
        rule_dev: 0,
        ino: 0,
        rule_ino: 0,
        nlink: 1,
        name_len: 0,
        name: [0; fence_common::NAME_LEN],
        path: Default::default(),
        actor_exe: Default::default(),
    }
}

/// The record of `event`: valid against the schema, with this reason and rule.
fn check_bypass(event: KernelEvent, reason: &str, rule: &str) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../../schema/event.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let dir = directory(PolicyVersion([0xab; 32]));
    let v = as_written(build(&event, &dir, &FakeHost).unwrap());
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{v:#}\n{errors:#?}");
    assert_eq!(not_in_ecs(&v), Vec::<String>::new(), "{v:#}");
    assert_eq!(crate::events::record::types_not_expected(&v), Vec::<String>::new(), "{v:#}");
    assert_ocsf_valid(&v);
    assert_eq!(v["event"]["reason"].as_str().unwrap(), reason, "{v:#}");
    assert_eq!(v["fence"]["rule"], rule, "{v:#}");
    v
}

#[test]
fn network_bypass_records_name_what_was_refused() {
    let header = bypass_header;
    let check = check_bypass;
    let mut packet = NetEvent {
        header: header(EventKind::Net, Operation::Packet, Mechanism::CgroupSkbEgress, Reason::SourceRouting),
        family: 10,
        protocol: 17,
        ..Default::default()
    };
    packet.addr[15] = 1;
    let v = check(
        KernelEvent::Net(packet),
        "a udp packet to ::1 carried a routing header or IP options: a source route would send it to a first hop \
         no egress rule judged",
        "no-source-route",
    );
    assert_eq!(v["event"]["category"][0], "network");

    let vsock = NetEvent {
        header: header(EventKind::Net, Operation::Socket, Mechanism::LsmSocketCreate, Reason::SocketKindNotAllowed),
        family: 40,
        sock_type: 1,
        ..Default::default()
    };
    check(
        KernelEvent::Net(vsock),
        "fenced identities may not create AF_VSOCK sockets (family 40, type 1, protocol 0)",
        "socket-kinds",
    );
}

#[test]
fn escape_and_file_bypass_records_name_what_was_refused() {
    let (header, object, check) = (bypass_header, bypass_object, check_bypass);
    let mut sysctl =
        object(header(EventKind::Escape, Operation::SysctlWrite, Mechanism::CgroupSysctl, Reason::HostSetting));
    let name = b"kernel/core_pattern";
    sysctl.name[..name.len()].copy_from_slice(name);
    sysctl.name_len = name.len() as u32;
    let v = check(
        KernelEvent::Object(Box::new(sysctl)),
        "denied writing the host setting kernel/core_pattern (sysctl)",
        "host-settings",
    );
    assert_eq!(v["fence"]["target"]["kind"], "sysctl");
    assert_eq!(v["event"]["category"][0], "configuration");

    let mut tty = object(header(EventKind::Escape, Operation::Ioctl, Mechanism::LsmFileIoctl, Reason::TerminalInput));
    tty.dev = TIOCSTI;
    crate::events::decode::path_into_components(std::path::Path::new("/3"), &mut tty.path);
    check(
        KernelEvent::Object(Box::new(tty)),
        "denied TIOCSTI on /3: pushing input into a terminal, which its shell would run",
        "no-way-out",
    );

    let mut owner =
        object(header(EventKind::Escape, Operation::SetOwner, Mechanism::LsmFileFcntl, Reason::OutsideIdentity));
    owner.ino = (-4242i32) as u32 as u64;
    owner.dev = 8;
    let v = check(
        KernelEvent::Object(Box::new(owner)),
        "denied directing a file's SIGIO/SIGURG at process group 4242, not the caller itself",
        "no-way-out",
    );
    assert!(v["fence"]["target"].get("pid").is_none());

    let mut unlink = object(header(EventKind::File, Operation::Unlink, Mechanism::LsmInodeUnlink, Reason::FenceState));
    unlink.ino = 5;
    crate::events::decode::path_into_components(std::path::Path::new("/sys/fs/bpf/fence/links/x"), &mut unlink.path);
    let v = check(
        KernelEvent::Object(Box::new(unlink)),
        "denied removing /sys/fs/bpf/fence/links/x: fence's pinned programs and maps (bpffs)",
        "no-way-out",
    );
    assert_eq!(v["event"]["type"][0], "deletion");

    let mut link = object(header(EventKind::File, Operation::Link, Mechanism::LsmInodeLink, Reason::FileProtected));
    link.ino = 6;
    crate::events::decode::path_into_components(std::path::Path::new("/etc/shadow"), &mut link.path);
    let v = check(
        KernelEvent::Object(Box::new(link)),
        "denied a new name for /etc/shadow: protected credential file",
        "protect:/etc/shadow",
    );
    assert_eq!(v["event"]["type"][0], "creation");
}

#[test]
fn records_with_values_fence_does_not_write_are_refused() {
    let mut e = NetEvent::default();
    e.header.kind = EventKind::Net as u8;
    e.header.verdict = 9;
    assert!(build(&KernelEvent::Net(e), &Directory::default(), &FakeHost).is_err());
}

#[test]
fn broker_refusals_name_the_secret_never_a_value() {
    use crate::events::decode::SecretEvent;
    let header = EventHeader {
        kind: EventKind::Secret as u8,
        verdict: Verdict::Denied as u8,
        operation: Operation::SecretGet as u8,
        mechanism: Mechanism::Broker as u8,
        reason: Reason::SecretNeedsGrant as u8,
        identity: 7,
        tgid: 42,
        pid: 42,
        ..Default::default()
    };
    let why = "secret \"db\" is given only while a grant of \"prod-db\" is in force".to_owned();
    let e = SecretEvent { header, name: "db".into(), why: why.clone() };
    let v = check_bypass(KernelEvent::Secret(Box::new(e)), &format!("secret \"db\" refused: {why}"), "secrets");
    assert_eq!(v["fence"]["target"]["kind"], "secret");
    assert_eq!(v["fence"]["target"]["path"], "db");
    assert_eq!(v["fence"]["reason"], "secret-needs-grant");
    assert_eq!(v["event"]["category"][0], "iam");
    // An unfenced caller: no identity, still a valid record.
    let header = EventHeader { identity: 0, reason: Reason::SecretNotAllowed as u8, ..header };
    let why = "only a fenced process may ask".to_owned();
    let e = SecretEvent { header, name: "db".into(), why: why.clone() };
    let v = check_bypass(KernelEvent::Secret(Box::new(e)), &format!("secret \"db\" refused: {why}"), "secrets");
    assert_eq!(v["fence"]["identity"], "");
    // The kernel never writes such a record.
    let bytes = unsafe_bytes(&header);
    assert!(crate::events::decode::decode(&bytes).is_err());
}

fn unsafe_bytes(h: &EventHeader) -> Vec<u8> {
    // SAFETY: EventHeader is a repr(C) record of integers; its bytes are plain data.
    unsafe { std::slice::from_raw_parts((h as *const EventHeader).cast::<u8>(), std::mem::size_of::<EventHeader>()) }
        .to_vec()
}
