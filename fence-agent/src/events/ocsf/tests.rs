//! The OCSF mapping's tests: every operation under every verdict, and both summaries, map to
//! the class the module names and validate against `schema/ocsf.schema.json`; the schema
//! refuses what breaks it; the chain's link lands in `unmapped`.

use fence_common::{Operation, Verdict};
use serde_json::{Value, json};

use super::*;

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../../schema/ocsf.schema.json")).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

#[track_caller]
fn assert_valid(v: &jsonschema::Validator, line: &Value) {
    let errors: Vec<String> = v.iter_errors(line).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{line:#}\n{errors:#?}");
}

/// An enforcement record of `operation` with `verdict`, with the fields the builder gives
/// records of that operation (destination, DNS question, file, target).
fn record(operation: Operation, verdict: Verdict) -> Record {
    let outcome = if verdict == Verdict::WouldDeny { "success" } else { "failure" };
    let mut v = json!({"@timestamp":"2026-11-25T17:16:53.178883875Z","message":"ci: why",
        "ecs":{"version":"8.17.0"},"agent":{"type":"fence","version":"0.1.0"},
        "event":{"id":"b00t-1a2b-812","sequence":812,"kind":"alert","category":["network"],"type":["connection","denied"],
                 "action":operation.as_str(),"outcome":outcome,"module":"fence","dataset":"fence.enforcement","reason":"why"},
        "host":{"hostname":"h","name":"h"},
        "process":{"pid":10,"thread":{"id":11},"name":"curl","executable":"/usr/bin/curl","parent":{"pid":9},
                   "user":{"id":"0"},"group":{"id":"50"},"real_user":{"id":"1000"},"real_group":{"id":"1000"}},
        "rule":{"name":"default-deny"},
        "fence":{"schema_version":1,"identity":"ci","identity_id":7,"mode":"enforce","verdict":verdict.as_str(),
                 "operation":operation.as_str(),"mechanism":"cgroup/connect4","policy_version":"sha256:abcdabcd",
                 "rule":"default-deny","reason":"no-matching-rule","cgroup":{"id":99,"path":"/fence/ci"}}});
    let (class, _, _) = class_of(operation);
    let socket = matches!(operation, Operation::UnixConnect | Operation::UnixSend);
    if class == NETWORK_ACTIVITY || class == DNS_ACTIVITY || operation == Operation::Socket {
        v["network"] = json!({"type":"ipv4","transport":"tcp","iana_number":"6"});
    }
    if (class == NETWORK_ACTIVITY && !socket) || class == DNS_ACTIVITY {
        v["destination"] = json!({"address":"10.0.0.1","ip":"10.0.0.1","port":53});
    }
    if operation == Operation::DnsQuery {
        v["dns"] = json!({"question":{"name":"example.com","type":"A"},"resolved_ip":["192.0.2.1","2001:db8::1"]});
    }
    if class == FILE_SYSTEM_ACTIVITY || socket || operation == Operation::Exec {
        v["file"] = json!({"path":"/srv/x","name":"x","inode":"42","device":"8:1"});
        v["fence"]["target"] = json!({"kind":"file","path":"/srv/x"});
    }
    if matches!(operation, Operation::Ptrace | Operation::Signal) {
        v["fence"]["target"] = json!({"kind":"process","pid":4242,"detail":9});
    }
    serde_json::from_value(v).unwrap()
}

#[test]
fn every_operation_and_verdict_maps_to_its_class_and_validates() {
    let schema = validator();
    for &operation in Operation::ALL {
        for &verdict in Verdict::ALL {
            let r = record(operation, verdict);
            let line: Value = serde_json::from_str(&event_line(&r).unwrap()).unwrap();
            assert_valid(&schema, &line);
            let (class, activity, _) = class_of(operation);
            assert_eq!(line["class_uid"], class.uid, "{line:#}");
            assert_eq!(line["category_uid"], class.category_uid);
            assert_eq!(line["activity_id"], activity);
            assert_eq!(line["type_uid"], class.uid * 100 + activity);
            // A real refusal and audit mode's would-deny are told apart.
            let (action, disposition) = if verdict == Verdict::WouldDeny { (1, 15) } else { (2, 2) };
            assert_eq!(
                (line["action_id"].clone(), line["disposition_id"].clone()),
                (json!(action), json!(disposition))
            );
            assert_eq!(line["time"], 1_795_627_013_178_i64, "2026-11-25T17:16:53.178Z");
            assert_eq!(line["metadata"]["uid"], "b00t-1a2b-812");
            assert_eq!(line["metadata"]["version"], OCSF_VERSION);
            // fence's own fields: the ECS line's `fence`, under the same names.
            let ecs = serde_json::to_value(&r).unwrap();
            for (k, value) in ecs["fence"].as_object().unwrap() {
                assert_eq!(&line["unmapped"][k], value, "unmapped.{k}");
            }
            assert_eq!(line["unmapped"]["process"]["real_user"]["id"], "1000");
            // `unmapped` is the last member, where the file's chain link goes.
            let text = event_line(&r).unwrap();
            let last = text.rfind("\"unmapped\":").unwrap();
            assert!(text[last..].matches('{').count() >= 1 && !text[last..].contains("\"class_uid\""));
        }
    }
}

#[test]
fn the_classes_hold_what_their_class_needs() {
    let net = serde_json::to_value(event(&record(Operation::Connect, Verdict::Denied)).unwrap()).unwrap();
    assert_eq!(net["dst_endpoint"], json!({"ip":"10.0.0.1","port":53}));
    assert_eq!(net["connection_info"]["protocol_num"], 6);
    assert_eq!(net["actor"]["process"]["file"]["path"], "/usr/bin/curl");
    assert_eq!(net["actor"]["user"]["uid"], "0", "the effective user");
    let dns = serde_json::to_value(event(&record(Operation::DnsQuery, Verdict::WouldDeny)).unwrap()).unwrap();
    assert_eq!(dns["query"], json!({"hostname":"example.com","type":"A"}));
    assert_eq!(dns["answers"], json!([{"rdata":"192.0.2.1","type":"A"},{"rdata":"2001:db8::1","type":"AAAA"}]));
    let unix = serde_json::to_value(event(&record(Operation::UnixConnect, Verdict::Denied)).unwrap()).unwrap();
    assert_eq!(unix["dst_endpoint"], json!({"name":"/srv/x"}));
    let open = serde_json::to_value(event(&record(Operation::Open, Verdict::Denied)).unwrap()).unwrap();
    assert_eq!(open["file"], json!({"name":"x","path":"/srv/x","type_id":0,"uid":"42"}));
    let exec = serde_json::to_value(event(&record(Operation::Exec, Verdict::Killed)).unwrap()).unwrap();
    assert_eq!(exec["process"]["file"]["path"], "/srv/x", "the program launched");
    assert_eq!(exec["unmapped"]["verdict"], "killed");
    let ptrace = serde_json::to_value(event(&record(Operation::Ptrace, Verdict::Denied)).unwrap()).unwrap();
    assert_eq!(ptrace["process"]["pid"], 4242, "the process traced");
    let escape = serde_json::to_value(event(&record(Operation::Bpf, Verdict::Denied)).unwrap()).unwrap();
    assert_eq!(escape["finding_info"]["types"], json!(["bpf"]));
    assert_eq!(escape["finding_info"]["analytic"]["name"], "default-deny");
    assert_eq!(escape["evidences"][0]["actor"]["process"]["pid"], 10);
    assert_eq!(escape["severity_id"], 4, "leaving the fence is High");
}

#[test]
fn summaries_are_findings_that_count_over_the_interval() {
    use crate::cmd::logs::{Line, fixtures};
    let schema = validator();
    let summary = |v: Value| match fixtures::line(&v) {
        Line::Summary(s) => *s,
        Line::Event(_) => panic!("a summary"),
    };
    let (suppressed, dropped) = (summary(fixtures::suppressed()), summary(fixtures::dropped()));
    for (s, count, disposition) in [(&suppressed, 1234, 20), (&dropped, 5, 27)] {
        let line: Value = serde_json::from_str(&summary_line(s).unwrap()).unwrap();
        assert_valid(&schema, &line);
        let at: jiff::Timestamp = s.timestamp.parse().unwrap();
        assert_eq!(line["class_uid"], DETECTION_FINDING.uid);
        assert_eq!(line["count"], count);
        assert_eq!(line["disposition_id"], disposition);
        assert_eq!(line["end_time"], at.as_millisecond());
        assert_eq!(line["start_time"], at.as_millisecond() - 10_000, "an interval of 10 s");
        assert_eq!(line["finding_info"]["types"][0], s.event.action.as_ref());
        assert_eq!(line["unmapped"], serde_json::to_value(&s.fence).unwrap());
    }
}

#[test]
fn the_schema_refuses_what_breaks_it() {
    let schema = validator();
    let good: Value = serde_json::from_str(&event_line(&record(Operation::Connect, Verdict::Denied)).unwrap()).unwrap();
    type Change<'a> = (&'a str, &'a dyn Fn(&mut Value));
    let broken: [Change; 7] = [
        ("a type_uid not of its class", &|v| v["type_uid"] = json!(100701)),
        ("an activity the class lacks", &|v| v["activity_id"] = json!(14)),
        ("no endpoint", &|v| {
            v.as_object_mut().unwrap().remove("dst_endpoint");
        }),
        ("an unknown class", &|v| v["class_uid"] = json!(3002)),
        ("an unknown action", &|v| v["action_id"] = json!(7)),
        ("another OCSF version", &|v| v["metadata"]["version"] = json!("1.0.0")),
        ("an unknown verdict", &|v| v["unmapped"]["verdict"] = json!("maybe")),
    ];
    for (what, change) in broken {
        let mut bad = good.clone();
        change(&mut bad);
        assert!(!schema.is_valid(&bad), "the schema should refuse {what}: {bad:#}");
    }
}

/// The schema's value lists of fence's own fields are the enums' names, exactly, and its
/// type_uid lists are class_uid * 100 + activity_id.
#[test]
fn the_schema_names_exactly_the_enum_values_and_type_uids() {
    use crate::events::record::tests::{schema_names, sorted};
    let schema: Value = serde_json::from_str(include_str!("../../../schema/ocsf.schema.json")).unwrap();
    let names = |pointer: &str| schema_names(&schema, pointer);
    assert_eq!(names("/$defs/operation/enum"), sorted(&mut Operation::ALL.iter().map(|o| o.as_str())));
    assert_eq!(names("/$defs/verdict/enum"), sorted(&mut Verdict::ALL.iter().map(|o| o.as_str())));
    use fence_common::{Mechanism, Reason};
    assert_eq!(names("/$defs/mechanism/enum"), sorted(&mut Mechanism::ALL.iter().map(|o| o.as_str())));
    assert_eq!(names("/$defs/eventFence/properties/reason/enum"), sorted(&mut Reason::ALL.iter().map(|o| o.as_str())));
    for rule in schema["allOf"].as_array().unwrap() {
        let Some(class) = rule.pointer("/if/properties/class_uid/const").and_then(Value::as_u64) else { continue };
        let activities = rule.pointer("/then/properties/activity_id/enum").unwrap().as_array().unwrap();
        let want: Vec<u64> = activities.iter().map(|a| class * 100 + a.as_u64().unwrap()).collect();
        let types: Vec<u64> = rule
            .pointer("/then/properties/type_uid/enum")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(types, want, "class {class}");
        assert!(CLASSES.iter().any(|c| u64::from(c.uid) == class), "class {class} is not one fence writes");
    }
}

#[test]
fn the_chain_link_goes_into_unmapped_and_is_found_there() {
    let schema = validator();
    let mut chain = crate::chain::Chain::resume(crate::chain::LogKind::Events, &[]);
    let mut sealed = Vec::new();
    for op in [Operation::Connect, Operation::Exec] {
        chain.seal(&event_line(&record(op, Verdict::Denied)).unwrap(), &mut sealed);
    }
    let text = String::from_utf8(sealed).unwrap();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_valid(&schema, &v);
        assert_eq!(v["unmapped"]["chain"]["seq"], n, "{line}");
        assert_eq!(crate::chain::link_of(line.as_bytes()).unwrap().seq, n as u64);
        assert!(is_ocsf(&v));
    }
}
