//! Every event and audit line a test reads is checked: it validates against the published JSON
//! Schema (`fence-agent/schema/event.schema.json`, `audit.schema.json`) and uses only field
//! names of the ECS version it declares (outside `fence.*`). Every event line is also checked
//! in OCSF: the OCSF line the agent writes for it (`[events] format = "ocsf"` or `"both"`,
//! made by the agent's own encoder) validates against `ocsf.schema.json`; and the OCSF lines
//! the test agents write to stdout (`format = "both"` there) are checked as written.

use std::sync::OnceLock;

use serde_json::Value;

fn compile(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Panics, naming what is wrong, if the event line breaks its schema or uses a field ECS lacks.
#[track_caller]
pub fn check_event(line: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check("event", V.get_or_init(|| compile(include_str!("../../fence-agent/schema/event.schema.json"))), line);
}

/// The same for an audit line.
#[track_caller]
pub fn check_audit(line: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    check("audit", V.get_or_init(|| compile(include_str!("../../fence-agent/schema/audit.schema.json"))), line);
}

#[track_caller]
fn check(what: &str, validator: &jsonschema::Validator, line: &Value) {
    let errors: Vec<String> = validator.iter_errors(line).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "an {what} line does not validate against its schema: {errors:?}\n{line}");
    let unknown = fence_agent::events::record::fields_not_in_ecs(line);
    assert!(unknown.is_empty(), "an {what} line uses fields its ECS version does not define: {unknown:?}\n{line}");
    let unexpected = fence_agent::events::record::types_not_expected(line);
    assert!(
        unexpected.is_empty(),
        "an {what} line has event types its categories do not expect: {unexpected:?}\n{line}"
    );
    if what == "event"
        && let Some(ocsf) = ocsf_of(line)
    {
        check_ocsf(&ocsf);
    }
}

/// The OCSF line the agent writes for an ECS event line, by the agent's own encoder; None for
/// the log's checkpoint lines, which are not events.
#[track_caller]
pub fn ocsf_of(ecs: &Value) -> Option<Value> {
    use fence_agent::{
        cmd::logs::{Line, is_checkpoint},
        events::ocsf,
    };
    let raw = ecs.to_string();
    let line = match Line::parse(raw.as_bytes()) {
        Ok(Line::Event(r)) => ocsf::event_line(&r),
        Ok(Line::Summary(s)) => ocsf::summary_line(&s),
        Err(_) if is_checkpoint(raw.as_bytes()) => return None,
        Err(e) => panic!("an event line does not read back as an event ({e}): {ecs}"),
    };
    let line = line.unwrap_or_else(|e| panic!("no OCSF line for an event ({e}): {ecs}"));
    Some(serde_json::from_str(&line).expect("the OCSF line is JSON"))
}

/// Panics, naming what is wrong, if an OCSF line breaks `ocsf.schema.json` or its `type_uid`
/// is not `class_uid * 100 + activity_id`.
#[track_caller]
pub fn check_ocsf(line: &Value) {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = V.get_or_init(|| compile(include_str!("../../fence-agent/schema/ocsf.schema.json")));
    let errors: Vec<String> = validator.iter_errors(line).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "an OCSF line does not validate against its schema: {errors:?}\n{line}");
    let uid = |k: &str| line[k].as_u64().unwrap_or_else(|| panic!("no {k}: {line}"));
    assert_eq!(uid("type_uid"), uid("class_uid") * 100 + uid("activity_id"), "type_uid of {line}");
}

/// The OCSF lines among `lines` (from `from` on; written with `format = "both"`): each
/// validates, and is the OCSF line of the ECS line of the same event (`metadata.uid` =
/// `event.id`) before it, but for its chain link.
#[track_caller]
pub fn check_ocsf_pairs(lines: &[Value], from: usize) {
    for (i, line) in lines.iter().enumerate().skip(from) {
        if !fence_agent::events::ocsf::is_ocsf(line) {
            continue;
        }
        check_ocsf(line);
        let id = &line["metadata"]["uid"];
        let ecs = lines[..i]
            .iter()
            .rev()
            .find(|e| &e["event"]["id"] == id)
            .unwrap_or_else(|| panic!("an OCSF line without the ECS line of its event before it: {line}"));
        let mut want = ocsf_of(ecs).expect("an event");
        // In the event file, each line has its own chain link.
        let mut got = line.clone();
        got["unmapped"].as_object_mut().and_then(|u| u.remove("chain"));
        // A line with effective ids and no real ones (the broker's, for a caller already gone)
        // reads back as a line of ECS 8.11, whose lone ids were the real ones: the actor's ids
        // are then compared with the ECS line itself.
        let p = &ecs["process"];
        if (p.get("user").is_some() && p.get("real_user").is_none())
            || (p.get("group").is_some() && p.get("real_group").is_none())
        {
            let actor = got.get("actor").or(got.pointer("/evidences/0/actor")).cloned().unwrap_or_default();
            assert_eq!(actor["process"]["user"]["uid"], p["user"]["id"], "the effective user: {line}");
            for v in [&mut got, &mut want] {
                let o = v.as_object_mut().unwrap();
                o.remove("actor");
                o.remove("evidences");
                o["unmapped"].as_object_mut().and_then(|u| u.remove("process"));
            }
        }
        assert_eq!(got, want, "the OCSF line is not the one of its event's ECS line {ecs}");
    }
}
