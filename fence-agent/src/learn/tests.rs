use std::fs;

use serde_json::{Value, json};

use super::*;
use crate::{
    cmd::logs::fixtures,
    policy::{
        load::SourceDocument,
        model::{PolicyDocument, SelectorDoc},
    },
};

/// A record as the event file has it, from the fixture with `edit` applied.
fn record(base: Value, edit: impl FnOnce(&mut Value)) -> Record {
    let mut v = base;
    edit(&mut v);
    serde_json::from_value(v).unwrap()
}

fn connect(identity: &str, verdict: &str, transport: &str, ip: &str, port: u16) -> Record {
    record(fixtures::denied_connect(), |v| {
        v["fence"]["identity"] = identity.into();
        v["fence"]["verdict"] = verdict.into();
        v["network"]["transport"] = transport.into();
        v["destination"] = json!({"address": ip, "ip": ip, "port": port});
    })
}

fn object(operation: &str, reason: &str, path: &str) -> Record {
    record(fixtures::would_deny_exec(), |v| {
        v["fence"]["identity"] = "ai".into();
        v["fence"]["operation"] = operation.into();
        v["fence"]["reason"] = reason.into();
        v["fence"]["target"]["path"] = path.into();
        v["file"]["path"] = path.into();
    })
}

fn base() -> IdentityDoc {
    IdentityDoc {
        name: "ai".into(),
        owner: Some("ml@example.com".into()),
        purpose: Some("agent".into()),
        created: None,
        expires: None,
        mode: Mode::Audit,
        selectors: vec![SelectorDoc {
            cgroup: Some("/fence/ai".into()),
            unit: None,
            slice: None,
            ..serde_json::from_value(json!({"cgroup": "/fence/ai"})).unwrap()
        }],
        egress: vec![],
        exec: Some(ExecDoc { allow: vec![ExecEntryDoc::Path("/usr/bin/true".into())], fileless: false }),
        files: None,
        unix: Some(UnixDoc { allow: vec![] }),
        grants: vec![],
        secrets: vec![],
    }
}

fn observed() -> Observed {
    let mut seen = Observed::default();
    let records = [
        connect("ai", "would-deny", "tcp", "10.1.2.3", 5432),
        connect("ai", "would-deny", "tcp", "10.1.2.3", 5432),
        connect("ai", "denied", "tcp", "93.184.216.34", 443),
        connect("ai", "would-deny", "tcp", "93.184.216.35", 443),
        connect("ai", "would-deny", "udp", "::ffff:169.254.169.254", 80),
        // Another identity's: not this identity's to learn.
        connect("other", "would-deny", "tcp", "10.9.9.9", 22),
        object("exec", "exec-not-allowed", "/usr/bin/python3.12"),
        object("exec", "exec-not-allowed", "/tmp/x/run.sh"),
        object("open", "file-protected", "/home/a/.aws/credentials"),
        object("unix-connect", "unix-not-allowed", "/run/docker.sock"),
        object("unix-connect", "unix-not-allowed", "@app-bus"),
        object("socket", "socket-kind-not-allowed", "raw"),
        object("exec", "exec-not-allowed", ".../lib/tool"),
        record(fixtures::denied_connect(), |v| {
            v["fence"]["identity"] = "ai".into();
            v["fence"]["operation"] = "dns-query".into();
            v["fence"]["reason"] = "name-not-allowed".into();
            v["dns"] = json!({"question": {"name": "API.Example.com.", "type": "A"}});
        }),
    ];
    for r in &records {
        seen.add("ai", r, &crate::mountinfo::MountInfo::default());
    }
    seen
}

#[test]
fn what_was_seen_is_gathered_for_the_identity_only() {
    let seen = observed();
    assert_eq!(seen.events, 13, "the other identity's event is not counted");
    let egress: Vec<String> = seen.egress.iter().map(|((p, ip), ports)| format!("{p:?} {ip} {ports:?}")).collect();
    assert_eq!(
        egress,
        ["Tcp 10.1.2.3 {5432}", "Tcp 93.184.216.34 {443}", "Tcp 93.184.216.35 {443}", "Udp 169.254.169.254 {80}"]
    );
    assert_eq!(seen.names.iter().collect::<Vec<_>>(), ["api.example.com"]);
    assert_eq!(seen.exec.iter().collect::<Vec<_>>(), ["/tmp/x/run.sh", "/usr/bin/python3.12"]);
    assert_eq!(seen.files.iter().collect::<Vec<_>>(), ["/home/a/.aws/credentials"]);
    assert_eq!(seen.unix.iter().collect::<Vec<_>>(), ["/run/docker.sock", "@app-bus"]);
    assert_eq!(seen.not_allowable.get("socket-kind-not-allowed"), Some(&1));
    assert!(seen.partial_paths.contains(".../lib/tool"));
}

#[test]
fn the_suggestion_adds_exactly_what_was_seen_and_flags_the_risks() {
    let (doc, risks) = suggest(&base(), &observed());
    assert_eq!(doc.mode, Mode::Enforce);
    let rules: Vec<String> = doc
        .egress
        .iter()
        .map(|r| {
            format!("{:?} {:?} {:?}", r.protocol, r.to, r.ports.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>())
        })
        .collect();
    assert_eq!(
        rules,
        [
            r#"Tcp ["93.184.216.34/32", "93.184.216.35/32"] ["Number(443)"]"#,
            r#"Tcp ["10.1.2.3/32"] ["Number(5432)"]"#,
            r#"Udp ["169.254.169.254/32"] ["Number(80)"]"#,
            r#"Tcp ["api.example.com"] ["Number(443)"]"#,
        ],
        "no CIDR wider than an address, the ports and protocol seen"
    );
    let exec: Vec<String> = doc.exec.as_ref().unwrap().allow.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(exec, [r#"Path("/usr/bin/true")"#, r#"Path("/tmp/x/run.sh")"#, r#"Path("/usr/bin/python3.12")"#]);
    assert_eq!(doc.files.as_ref().unwrap().allow, ["/home/a/.aws/credentials"]);
    assert_eq!(doc.unix.as_ref().unwrap().allow, ["/run/docker.sock", "@app-bus"]);
    let text: Vec<String> = risks.iter().map(ToString::to_string).collect();
    let has = |what: &str, why: &str| {
        assert!(text.iter().any(|r| r.contains(what) && r.contains(why)), "no risk {what} ({why}) in {text:#?}")
    };
    has("read /home/a/.aws/credentials", "credentials");
    has("unix socket /run/docker.sock", "container runtime");
    has("egress to 169.254.169.254", "metadata");
    has("egress to 10.1.2.3", "private network");
    has("exec /usr/bin/python3.12", "interpreter");
    has("exec /tmp/x/run.sh", "writable or temporary");
    has("socket-kind-not-allowed", "no policy allows");
    has("path .../lib/tool", "not added");
    has("names api.example.com", "no connect to what they resolved to was seen");
    assert!(!text.iter().any(|r| r.contains("93.184.216.34")), "a public address is not a risk by itself");

    // The agent takes it.
    let document = PolicyDocument { schema: Some(1), identities: vec![doc] };
    let check = [SourceDocument { path: "s.yaml".into(), document: document.clone() }];
    crate::policy::validate::validate(&check, None, jiff::Timestamp::now()).unwrap();
    // And it reads back from the YAML it is printed as.
    let yaml = serde_saphyr::to_string(&document).unwrap();
    let back: PolicyDocument = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(back, document, "{yaml}");
}

#[test]
fn nothing_is_added_where_nothing_was_seen() {
    let (doc, risks) = suggest(&base(), &Observed::default());
    assert_eq!((doc.egress.len(), doc.files.is_none(), risks.len()), (0, true, 0));
    assert_eq!(doc.exec, base().exec);
}

#[test]
fn paths_relative_to_their_file_system_are_made_whole_through_the_mounts() {
    // /tmp as a file system of its own (the vm tier's tmpfs): the kernel gives the socket's
    // path from that file system's root.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("job")).unwrap();
    fs::write(dir.path().join("job/docker.sock"), "").unwrap();
    let mounts = crate::mountinfo::MountInfo::parse(&format!(
        "20 1 8:1 / / rw - ext4 /dev/sda1 rw\n31 20 0:44 / {} rw - tmpfs tmpfs rw\n",
        dir.path().display()
    ));
    let mut r = object("unix-connect", "unix-not-allowed", "/job/docker.sock");
    r.fence.target.as_mut().unwrap().fs_relative = true;
    r.file.as_mut().unwrap().device = Some("0:44".into());
    let mut seen = Observed::default();
    seen.add("ai", &r, &mounts);
    assert_eq!(seen.unix.iter().collect::<Vec<_>>(), [&dir.path().join("job/docker.sock").display().to_string()]);
    // Not mounted whole here: not a path policy can name; listed, not added.
    r.file.as_mut().unwrap().device = Some("0:99".into());
    let mut seen = Observed::default();
    seen.add("ai", &r, &mounts);
    assert!(seen.unix.is_empty() && seen.partial_paths.contains("(on 0:99) /job/docker.sock"), "{seen:?}");
}

#[test]
fn connects_to_what_a_name_resolved_to_are_the_names_with_their_own_ports() {
    let mut seen = Observed::default();
    let mounts = crate::mountinfo::MountInfo::default();
    let dns = |name: &str, resolved: Value| {
        record(fixtures::would_deny_exec(), |v| {
            v["fence"]["identity"] = "ai".into();
            v["fence"]["operation"] = "dns-query".into();
            v["fence"]["reason"] = "name-not-allowed".into();
            v["fence"]["target"] = Value::Null;
            v["file"] = Value::Null;
            v["dns"] = json!({"question": {"name": name, "type": "A"}, "resolved_ip": resolved});
        })
    };
    for r in [
        dns("api.example.com", json!(["93.184.216.34", "93.184.216.35"])),
        dns("db.internal", json!(["10.1.2.3"])),
        dns("unused.example.com", json!(["198.51.100.7"])),
        connect("ai", "would-deny", "tcp", "93.184.216.34", 443),
        connect("ai", "would-deny", "tcp", "::ffff:93.184.216.35", 8443),
        connect("ai", "would-deny", "tcp", "10.1.2.3", 5432),
        connect("ai", "would-deny", "udp", "192.0.2.9", 53),
    ] {
        seen.add("ai", &r, &mounts);
    }
    let (doc, risks) = suggest(&base(), &seen);
    let rules: Vec<String> = doc.egress.iter().map(|r| format!("{:?} {:?} {:?}", r.protocol, r.to, r.ports)).collect();
    assert_eq!(
        rules,
        [
            r#"Udp ["192.0.2.9/32"] [Number(53)]"#,
            r#"Tcp ["unused.example.com"] [Number(443)]"#,
            r#"Tcp ["api.example.com"] [Number(443), Number(8443)]"#,
            r#"Tcp ["db.internal"] [Number(5432)]"#,
        ],
        "each name gets the ports seen to its own addresses; no address rule for them"
    );
    let text: Vec<String> = risks.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|r| r.contains("egress to db.internal, which resolved to 10.1.2.3")), "{text:#?}");
    assert!(text.iter().any(|r| r.contains("egress to api.example.com (tcp): by name")), "{text:#?}");
    assert!(text.iter().any(|r| r.contains("names unused.example.com")), "{text:#?}");
    assert!(!text.iter().any(|r| r.contains("names api.example.com")), "{text:#?}");
}

#[test]
fn an_address_several_names_answered_with_stays_an_address() {
    let mut seen = Observed::default();
    let mounts = crate::mountinfo::MountInfo::default();
    for (name, ip) in [("evil.example", "10.0.0.5"), ("db.internal", "10.0.0.5")] {
        let r = record(fixtures::would_deny_exec(), |v| {
            v["fence"]["identity"] = "ai".into();
            v["fence"]["operation"] = "dns-query".into();
            v["fence"]["reason"] = "name-not-allowed".into();
            v["fence"]["target"] = Value::Null;
            v["file"] = Value::Null;
            v["dns"] = json!({"question": {"name": name, "type": "A"}, "resolved_ip": [ip]});
        });
        seen.add("ai", &r, &mounts);
    }
    seen.add("ai", &connect("ai", "would-deny", "tcp", "10.0.0.5", 5432), &mounts);
    let (doc, risks) = suggest(&base(), &seen);
    let rules: Vec<String> = doc.egress.iter().map(|r| format!("{:?} {:?}", r.to, r.ports)).collect();
    assert_eq!(rules[0], r#"["10.0.0.5/32"] [Number(5432)]"#, "{rules:?}");
    let text: Vec<String> = risks.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|r| r.contains("an answer for several names (db.internal, evil.example)")), "{text:#?}");
}
