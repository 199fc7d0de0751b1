//! Every event and audit line a test reads is checked: it validates against the published JSON
//! Schema (`fence-agent/schema/event.schema.json`, `audit.schema.json`) and uses only field
//! names of the ECS version it declares (outside `fence.*`).

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
}
