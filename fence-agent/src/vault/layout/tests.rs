use std::path::PathBuf;

use jiff::Timestamp;

use super::*;
use crate::policy::{Format, SourceDocument, parse_document, validate};

fn host(name: &str, labels: &[(&str, &str)]) -> HostFacts {
    HostFacts {
        hostname: name.to_owned(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

fn identity_doc(name: &str) -> String {
    format!(
        "schema: 1\nidentities:\n  - name: {name}\n    owner: a@example.com\n    purpose: test\n    \
         selectors:\n      - managed: true\n"
    )
}

fn rule_errors(text: &str) -> Vec<AssignmentError> {
    match parse_assignments(text) {
        Err(LayoutError::Assignments(errors)) => errors,
        other => panic!("expected rule errors, got {other:?}"),
    }
}

#[test]
fn identity_paths_follow_the_policy_name_rule() {
    assert_eq!(identity_path("ci-runner").unwrap(), "identities/ci-runner");
    // Agreement with the policy validator, name by name.
    for name in ["ci-runner", "a", "0x.y_z", "", "..", "a/b", "A", "-x", "x y", &"a".repeat(64), &"a".repeat(63)] {
        let docs = vec![SourceDocument {
            path: PathBuf::from("t.yaml"),
            document: parse_document(&identity_doc("placeholder"), Format::Yaml).unwrap(),
        }];
        let mut docs = docs;
        docs[0].document.identities[0].name = name.to_owned();
        let validator_ok = match validate(&docs, None, Timestamp::now()) {
            Ok(_) => true,
            Err(e) => !e.0.iter().any(|e| e.field.ends_with(".name")),
        };
        assert_eq!(identity_path(name).is_ok(), validator_ok, "{name:?}");
    }
    assert!(matches!(identity_path("../assignments"), Err(LayoutError::InvalidName { .. })));
}

#[test]
fn status_paths_refuse_separators() {
    assert_eq!(status_path("web-1.example.com").unwrap(), "status/web-1.example.com");
    for bad in ["", "a/b", "..", ".hidden", "x y", "-web"] {
        assert!(status_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn signed_document_kv_round_trip() {
    let doc = SignedDocument {
        document: identity_doc("ci-runner"),
        serial: 1_750_000_000_123,
        key_id: "0011223344556677".into(),
        signature: "c2ln".into(),
    };
    let kv = doc.to_kv();
    assert_eq!(kv["serial"], 1_750_000_000_123u64);
    assert_eq!(SignedDocument::from_kv(&kv).unwrap(), doc);
    // Unsigned: no key_id or signature written, read back as empty.
    let unsigned = SignedDocument { key_id: String::new(), signature: String::new(), ..doc };
    let kv = unsigned.to_kv();
    assert!(kv.get("signature").is_none() && kv.get("key_id").is_none());
    assert_eq!(SignedDocument::from_kv(&kv).unwrap(), unsigned);
}

#[test]
fn signed_document_kv_errors_name_the_field() {
    let cases = [
        (serde_json::json!({"serial": 1}), "KV field `document`: is missing"),
        (serde_json::json!({"document": "x"}), "KV field `serial`: is missing"),
        (serde_json::json!({"document": "x", "serial": -1}), "KV field `serial`: must be a non-negative integer"),
        (serde_json::json!({"document": "x", "serial": "1"}), "KV field `serial`: must be a non-negative integer"),
        (serde_json::json!({"document": 3, "serial": 1}), "KV field `document`: must be a string"),
        (serde_json::json!({"document": "x", "serial": 1, "signature": 5}), "KV field `signature`: must be a string"),
        (serde_json::json!(["x"]), "KV field `data`: must be a JSON object"),
    ];
    for (kv, want) in cases {
        let e = SignedDocument::from_kv(&kv).unwrap_err().to_string();
        assert!(e.contains(want), "{kv}: {e}");
    }
}

#[test]
fn index_round_trip_and_entries() {
    let doc = SignedDocument { document: "x".into(), serial: 17, key_id: String::new(), signature: String::new() };
    let mut index = Index { schema: 1, issued_at: "2026-11-25T00:00:00Z".into(), ..Index::default() };
    index.set("identities/ci-runner", IndexEntry::of(&doc, 3));
    index.set(ASSIGNMENTS, IndexEntry::of(&doc, 1));
    index.set("status/x", IndexEntry::of(&doc, 9));
    assert_eq!(index.identities.len(), 1);
    let e = index.entry("identities/ci-runner").unwrap();
    assert_eq!((e.version, e.serial), (3, 17));
    assert_eq!(e.sha256, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
    assert!(e.names(&doc));
    assert!(!e.names(&SignedDocument { serial: 18, ..doc.clone() }));
    assert!(!e.names(&SignedDocument { document: "y".into(), ..doc.clone() }));
    assert_eq!(index.entry(ASSIGNMENTS).unwrap().version, 1);
    assert!(index.entry("identities/other").is_none() && index.entry("index").is_none());
    assert_eq!(Index::parse(&index.to_text()).unwrap(), index);
    let future = r#"{"schema":1,"issued_at":"t","identities":{},"future":true}"#;
    assert!(Index::parse(future).unwrap().identities.is_empty());
    let e = Index::parse(r#"{"schema":1,"issued_at":"t","identities":{"x":{"version":1}}}"#).unwrap_err();
    assert!(e.to_string().starts_with("index: KV field `identities.x`"), "{e}");
    assert!(e.to_string().contains("missing field `serial`"), "{e}");
    let e = Index::parse(r#"{"schema":2,"issued_at":"t"}"#).unwrap_err().to_string();
    assert!(e.contains("`schema`: 2 is not supported"), "{e}");
    assert!(Index::parse("not json").is_err());
}

#[test]
fn identity_document_must_name_its_path() {
    check_identity_document("ci-runner", &identity_doc("ci-runner")).unwrap();
    let e = check_identity_document("model-runner", &identity_doc("ci-runner")).unwrap_err().to_string();
    assert!(e.starts_with("identities/model-runner: ") && e.contains("\"ci-runner\""), "{e}");
    let two = format!("{}{}", identity_doc("a"), "  - name: b\n    selectors: [{managed: true}]\n");
    let e = check_identity_document("a", &two).unwrap_err().to_string();
    assert!(e.contains("defines 2 identities"), "{e}");
    let e = check_identity_document("a", "schema: 1\n").unwrap_err().to_string();
    assert!(e.contains("defines 0 identities"), "{e}");
    let e = check_identity_document("a", "schema: 1\nidentities: [{name: a, bogus: 1}]\n").unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    assert!(matches!(check_identity_document("A", &identity_doc("A")), Err(LayoutError::InvalidName { .. })));
}

const ASSIGNMENTS_DOC: &str = r#"
schema: 1
assignments:
  - name: prod-web
    hosts: ["web-*", "api-1"]
    labels: {env: prod}
    identities: [ci-runner, model-runner]
    protect: {paths: ["/srv/app/secrets/**"], env_roots: ["/srv"]}
  - name: all-prod
    labels: {env: prod}
    identities: [node-exporter]
    protect: {paths: ["/srv/app/secrets/**", "/etc/app.key"]}
  - name: builders
    hosts: ["build-??"]
    identities: [ci-runner]
"#;

#[test]
fn hosts_get_the_union_of_matching_rules() {
    let a = parse_assignments(ASSIGNMENTS_DOC).unwrap();
    assert_eq!(a.rules.len(), 3);

    let web = a.for_host(&host("WEB-3", &[("env", "prod"), ("zone", "a")]));
    assert_eq!(web.rules, ["prod-web", "all-prod"]);
    assert_eq!(
        web.identities.iter().map(String::as_str).collect::<Vec<_>>(),
        ["ci-runner", "model-runner", "node-exporter"]
    );
    assert_eq!(web.protect_paths, ["/srv/app/secrets/**", "/etc/app.key"]);
    assert_eq!(web.env_roots, [PathBuf::from("/srv")]);

    // Host glob matches but a label does not: both must match.
    let staging = a.for_host(&host("web-3", &[("env", "staging")]));
    assert_eq!(staging, HostAssignment::default());
    // Labels only.
    let db = a.for_host(&host("db-1", &[("env", "prod")]));
    assert_eq!(db.rules, ["all-prod"]);
    // `?` is one character; `api-1` is literal.
    assert_eq!(a.for_host(&host("build-07", &[])).rules, ["builders"]);
    assert!(a.for_host(&host("build-7", &[])).rules.is_empty());
    assert_eq!(a.for_host(&host("api-1", &[("env", "prod")])).rules, ["prod-web", "all-prod"]);
    assert_eq!(a.for_host(&host("api-10", &[("env", "prod")])).rules, ["all-prod"]);
    // No labels at all: a label rule does not match.
    assert!(a.for_host(&host("db-1", &[])).rules.is_empty());
}

#[test]
fn rule_without_hosts_or_labels_is_refused() {
    let errors = rule_errors("schema: 1\nassignments:\n  - name: nobody\n    identities: [a]\n");
    assert_eq!(errors.len(), 1);
    let e = errors[0].to_string();
    assert!(e.starts_with("rule \"nobody\" (assignments[0])") && e.contains("match no host"), "{e}");
    let errors = rule_errors("schema: 1\nassignments:\n  - {name: empty, hosts: [], labels: {}}\n");
    assert!(errors[0].why.contains("neither `hosts` nor `labels`"));
}

#[test]
fn unknown_fields_and_types_name_rule_and_field() {
    let errors = rule_errors("schema: 1\nassignments:\n  - name: web\n    hostz: [a]\n");
    assert_eq!(errors[0].rule.as_deref(), Some("web"));
    assert!(errors[0].to_string().contains("unknown field `hostz`"), "{}", errors[0]);
    let errors = rule_errors("schema: 1\nassignments:\n  - name: web\n    hosts: [a]\n    protect: {pathz: []}\n");
    assert_eq!(errors[0].field, "protect.pathz");
    assert!(errors[0].why.contains("pathz"));
    let errors = rule_errors("schema: 1\nassignments:\n  - name: web\n    hosts: [a]\n    labels: {tier: [1]}\n");
    assert_eq!(errors[0].field, "labels.tier", "{}", errors[0]);
    let e = parse_assignments("schema: 1\nassignmentz: []\n").unwrap_err().to_string();
    assert!(e.starts_with("assignments: ") && e.contains("assignmentz"), "{e}");
}

#[test]
fn bad_values_are_all_reported() {
    let text = r#"
schema: 1
assignments:
  - name: web
    hosts: ["web/*", "web[1-3]", "", "ok-*"]
    labels: {"bad key": x}
    identities: [ci-runner, "../x"]
    protect: {paths: ["relative"], env_roots: ["srv", "/a/../b"]}
  - name: web
    hosts: [a]
  - name: Bad
    hosts: [a]
"#;
    let errors = rule_errors(text);
    let fields: Vec<(Option<&str>, &str)> = errors.iter().map(|e| (e.rule.as_deref(), e.field.as_str())).collect();
    assert_eq!(
        fields,
        [
            (Some("web"), "hosts[0]"),
            (Some("web"), "hosts[1]"),
            (Some("web"), "hosts[2]"),
            (Some("web"), "labels.bad key"),
            (Some("web"), "identities[1]"),
            (Some("web"), "protect.paths[0]"),
            (Some("web"), "protect.env_roots[0]"),
            (Some("web"), "protect.env_roots[1]"),
            (Some("web"), "name"),
            (None, "name"),
        ]
    );
    assert!(errors[0].why.contains("not a valid host-name glob"));
    assert!(errors[8].why.contains("also used by assignments[0]"));
    let all = LayoutError::Assignments(errors).to_string();
    assert!(
        all.starts_with("assignments: rejected (10 errors)\n  - rule \"web\" (assignments[0]): hosts[0]: "),
        "{all}"
    );
}

#[test]
fn document_level_errors() {
    for (text, want) in [
        ("", "empty"),
        ("assignments: []\n", "schema: is required"),
        ("schema: 2\nassignments: []\n", "schema 2 is not supported"),
        ("schema: 1\nassignments: [\n", "not valid YAML"),
    ] {
        let e = parse_assignments(text).unwrap_err().to_string();
        assert!(e.starts_with("assignments: ") && e.contains(want), "{text:?}: {e}");
    }
    assert_eq!(parse_assignments("schema: 1\n").unwrap(), Assignments::default());
}
