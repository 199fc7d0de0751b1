//! Validation tests: every kind of bad policy gives an error naming file, identity, field and
//! reason; good policies come through whole. The cgroup resolver is a table: these tests are
//! about validation, not about the host's cgroups.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use jiff::Timestamp;

use super::*;

struct Table {
    root: PathBuf,
    ids: HashMap<&'static str, u64>,
    own: Option<String>,
    managed: Option<String>,
}

impl CgroupResolver for Table {
    fn root(&self) -> &Path {
        &self.root
    }
    fn resolve(&self, path: &str) -> Result<u64, ResolveError> {
        self.ids.get(path).copied().ok_or(ResolveError::NotFound)
    }
    fn own_cgroup(&self) -> Option<String> {
        self.own.clone()
    }
    fn managed_parent(&self) -> Option<&str> {
        self.managed.as_deref()
    }
    fn find_unit(&self, unit: &str) -> Vec<String> {
        self.ids.keys().filter(|p| p.rsplit('/').next() == Some(unit)).map(|p| p.to_string()).collect()
    }
}

fn table() -> Table {
    Table {
        root: "/sys/fs/cgroup".into(),
        ids: HashMap::from([
            ("/fence/a", 10),
            ("/fence/b", 11),
            ("/fence/a/sub", 12),
            ("/system.slice/agent.service", 13),
        ]),
        own: Some("/system.slice/agent.service".into()),
        managed: None,
    }
}

fn now() -> Timestamp {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn parse(text: &str, format: Format) -> Result<SourceDocument, PolicyErrors> {
    parse_document(text, format).map(|document| SourceDocument { path: "p.yaml".into(), document }).map_err(|kind| {
        PolicyErrors(vec![PolicyError { file: "p.yaml".into(), identity: None, field: String::new(), kind }])
    })
}

fn check(text: &str) -> Result<PolicySet, PolicyErrors> {
    let doc = parse(text, Format::Yaml)?;
    validate(&[doc], Some(&table()), now())
}

/// The single error of a refused policy, as printed.
fn error_of(text: &str) -> String {
    match check(text) {
        Ok(_) => panic!("policy was accepted:\n{text}"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "expected one error, got: {e}");
            e.0[0].to_string()
        }
    }
}

const GOOD: &str = r#"
schema: 1
identities:
  - name: ci-bot
    owner: platform@example.com
    purpose: runs CI
    mode: enforce
    selectors: [{cgroup: /fence/a}]
    egress:
      - name: https
        to: [10.0.0.0/8, "fd00::/8"]
        ports: [443, "8000-8080"]
        protocol: tcp
"#;

fn with(line_from: &str, line_to: &str) -> String {
    assert!(GOOD.contains(line_from), "{line_from}");
    GOOD.replace(line_from, line_to)
}

#[test]
fn a_good_policy_validates() {
    let set = check(GOOD).unwrap();
    let id = &set.identities[0];
    assert_eq!(id.name, "ci-bot");
    assert_eq!(id.mode, Mode::Enforce);
    assert_eq!(id.cgroups, vec![BoundCgroup { path: "/fence/a".into(), id: Some(10), kind: SelectorKind::Cgroup }]);
    assert_eq!(id.egress[0].name, "https");
    assert_eq!(id.egress[0].nets.len(), 2);
    assert!(!id.expired);
}

#[test]
fn the_same_policy_in_toml_and_json_validates_identically() {
    let toml = r#"
schema = 1
[[identities]]
name = "ci-bot"
owner = "platform@example.com"
purpose = "runs CI"
mode = "enforce"
selectors = [{ cgroup = "/fence/a" }]
[[identities.egress]]
name = "https"
to = ["10.0.0.0/8", "fd00::/8"]
ports = [443, "8000-8080"]
protocol = "tcp"
"#;
    let json = r#"{"schema":1,"identities":[{"name":"ci-bot","owner":"platform@example.com",
      "purpose":"runs CI","mode":"enforce","selectors":[{"cgroup":"/fence/a"}],
      "egress":[{"name":"https","to":["10.0.0.0/8","fd00::/8"],"ports":[443,"8000-8080"],"protocol":"tcp"}]}]}"#;
    let yaml_set = check(GOOD).unwrap();
    for (text, format) in [(toml, Format::Toml), (json, Format::Json)] {
        let doc = parse(text, format).unwrap();
        let set = validate(&[doc], Some(&table()), now()).unwrap();
        assert_eq!(set.identities[0].egress, yaml_set.identities[0].egress);
        assert_eq!(set.identities[0].version, yaml_set.identities[0].version, "same document, same version");
    }
}

#[test]
fn bad_unknown_field() {
    let e = error_of(&with("    mode: enforce\n", "    mode: enforce\n    moda: audit\n"));
    assert!(e.contains("identities[0]") && e.contains("unknown field `moda`"), "{e}");
}

#[test]
fn bad_malformed_cidr() {
    let e = error_of(&with("10.0.0.0/8,", "10.0.0/8,"));
    assert!(e.contains("identity \"ci-bot\": egress[0].to[0]: \"10.0.0/8\" is not a valid CIDR"), "{e}");
}

#[test]
fn bad_out_of_range_prefix() {
    let e = error_of(&with("10.0.0.0/8,", "10.0.0.0/33,"));
    assert!(e.contains("egress[0].to[0]") && e.contains("prefix length 33 is out of range (0-32)"), "{e}");
}

#[test]
fn bad_host_bits() {
    let e = error_of(&with("10.0.0.0/8,", "10.1.2.3/8,"));
    assert!(e.contains("has host bits set; did you mean 10.0.0.0/8?"), "{e}");
}

#[test]
fn bad_dns_names_name_identity_field_and_reason() {
    let e = error_of(&with("\"fd00::/8\"]", "api.example.com, \"*.com\"]"));
    assert!(
        e.contains(
            "identity \"ci-bot\": egress[0].to[2]: \"*.com\" is not a valid DNS name: the wildcard is \
             directly over the public suffix \"com\""
        ),
        "{e}"
    );
    let e = error_of(&with("10.0.0.0/8,", "a..example.com,"));
    assert!(e.contains("egress[0].to[0]: \"a..example.com\" is not a valid DNS name: it has an empty label"), "{e}");
    let e = error_of(&with("10.0.0.0/8,", "\"**.co.uk\","));
    assert!(e.contains("egress[0].to[0]") && e.contains("public suffix \"co.uk\""), "{e}");
    let e = error_of(&with("10.0.0.0/8,", "com,"));
    assert!(e.contains("egress[0].to[0]: \"com\" is not a valid DNS name: it is a public suffix"), "{e}");
}

#[test]
fn bad_port_out_of_range() {
    let e = error_of(&with("[443, ", "[70000, "));
    assert!(e.contains("egress[0].ports[0]: 70000 is out of range (ports are 1-65535)"), "{e}");
    let e = error_of(&with("[443, ", "[0, "));
    assert!(e.contains("egress[0].ports[0]: 0 is out of range"), "{e}");
}

#[test]
fn bad_port_range() {
    let e = error_of(&with("\"8000-8080\"", "\"8080-8000\""));
    assert!(e.contains("egress[0].ports[1]") && e.contains("first port is greater"), "{e}");
}

#[test]
fn bad_empty_identity_name() {
    let e = error_of(&with("name: ci-bot", "name: \"\""));
    assert!(e.contains("identities[0].name") && e.contains("must not be empty"), "{e}");
}

#[test]
fn bad_identity_name_characters() {
    let e = error_of(&with("name: ci-bot", "name: CI Bot"));
    assert!(e.contains("\"CI Bot\" is not a valid name"), "{e}");
}

#[test]
fn bad_duplicate_identity() {
    let doubled =
        format!("{GOOD}  - name: ci-bot\n    owner: o\n    purpose: p\n    selectors: [{{cgroup: /fence/b}}]\n");
    let e = error_of(&doubled);
    assert!(e.contains("identity \"ci-bot\": name: identity is also defined in this file"), "{e}");
}

#[test]
fn bad_duplicate_identity_across_files() {
    let a = parse(GOOD, Format::Yaml).unwrap();
    let mut b = parse(&GOOD.replace("/fence/a", "/fence/b"), Format::Yaml).unwrap();
    b.path = "other.yaml".into();
    let e = validate(&[a, b], Some(&table()), now()).unwrap_err().to_string();
    assert!(e.contains("other.yaml: identity \"ci-bot\": name: identity is also defined in p.yaml"), "{e}");
}

#[test]
fn bad_missing_cgroup() {
    let e = error_of(&with("/fence/a}", "/fence/missing}"));
    assert!(e.contains("selectors[0].cgroup: cgroup \"/fence/missing\" does not exist under /sys/fs/cgroup"), "{e}");
}

#[test]
fn bad_root_cgroup_and_dotdot() {
    let e = error_of(&with("/fence/a}", "/}"));
    assert!(e.contains("the root cgroup holds every process"), "{e}");
    let e = error_of(&with("/fence/a}", "/fence/../a}"));
    assert!(e.contains("'.' and '..' are not allowed"), "{e}");
}

#[test]
fn bad_cgroup_of_the_agent_itself() {
    let e = error_of(&with("/fence/a}", "/system.slice}"));
    assert!(e.contains("it contains the fence agent itself"), "{e}");
}

#[test]
fn bad_conflicting_modes_on_one_cgroup() {
    let two = format!(
        "{GOOD}  - name: other\n    owner: o\n    purpose: p\n    mode: audit\n    selectors: [{{cgroup: /fence/a}}]\n"
    );
    let e = error_of(&two);
    assert!(
        e.contains("identity \"other\": selectors[0]")
            && e.contains("also bound to identity \"ci-bot\" (mode enforce)"),
        "{e}"
    );
}

#[test]
fn bad_unreadable_and_empty_files() {
    let e = load_paths(&["/nonexistent/policy.yaml".into()]).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/policy.yaml: cannot read"), "{e}");
    let dir_guard = tempfile::tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "  \n").unwrap();
    let e = load_paths(std::slice::from_ref(&empty)).unwrap_err().to_string();
    assert!(e.contains("empty.yaml: file is empty"), "{e}");
    let odd = dir.join("policy.ini");
    std::fs::write(&odd, "x").unwrap();
    let e = load_paths(&[odd]).unwrap_err().to_string();
    assert!(e.contains("unsupported file type"), "{e}");
}

#[test]
fn bad_wrong_types() {
    let e = error_of(&with("mode: enforce", "mode: 5"));
    assert!(e.contains("identities[0].mode"), "{e}");
    let e = error_of(&with("protocol: tcp", "protocol: icmp"));
    assert!(e.contains("identities[0].egress[0].protocol") && e.contains("unknown variant `icmp`"), "{e}");
    let e = error_of(&with("ports: [443, \"8000-8080\"]", "ports: 443"));
    assert!(e.contains("identities[0].egress[0].ports"), "{e}");
    let e = error_of(&with("ports: [443, ", "ports: [http, "));
    assert!(e.contains("\"http\" is not a port or port range"), "{e}");
}

#[test]
fn bad_syntax_names_the_format() {
    let e = error_of("schema: 1\nidentities: [\n");
    assert!(e.contains("not valid YAML"), "{e}");
}

#[test]
fn bad_missing_owner_or_purpose() {
    let e = error_of(&with("    owner: platform@example.com\n", ""));
    assert!(e.contains("identity \"ci-bot\": owner: is required"), "{e}");
    let e = error_of(&with("purpose: runs CI", "purpose: \"  \""));
    assert!(e.contains("identity \"ci-bot\": purpose: is required"), "{e}");
}

#[test]
fn bad_schema() {
    let e = error_of(&with("schema: 1", "schema: 2"));
    assert!(e.contains("schema 2 is not supported"), "{e}");
    let e = error_of(&with("schema: 1\n", ""));
    assert!(e.contains("schema: is required"), "{e}");
}

#[test]
fn bad_dates() {
    let e = error_of(&with("    mode: enforce\n", "    mode: enforce\n    expires: next tuesday\n"));
    assert!(e.contains("expires: \"next tuesday\" is not a valid date"), "{e}");
    let e =
        error_of(&with("    mode: enforce\n", "    mode: enforce\n    created: 2027-01-01\n    expires: 2026-01-01\n"));
    assert!(e.contains("expires: 2026-01-01 is before created 2027-01-01"), "{e}");
}

#[test]
fn bad_empty_lists() {
    let e = error_of(&with("selectors: [{cgroup: /fence/a}]", "selectors: []"));
    assert!(e.contains("selectors: must not be empty"), "{e}");
    let e = error_of(&with("to: [10.0.0.0/8, \"fd00::/8\"]", "to: []"));
    assert!(e.contains("egress[0].to: must not be empty"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = GOOD
        .replace("10.0.0.0/8,", "10.0.0.0/99,")
        .replace("[443, ", "[0, ")
        .replace("owner: platform@example.com", "owner: \"\"");
    let e = check(&bad).unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn expired_identities_are_flagged_not_refused() {
    let set = check(&with("    mode: enforce\n", "    mode: enforce\n    expires: 2026-01-01\n")).unwrap();
    assert!(set.identities[0].expired);
    let set = check(&with("    mode: enforce\n", "    mode: enforce\n    expires: 2027-01-01T00:00:00Z\n")).unwrap();
    assert!(!set.identities[0].expired);
}

#[test]
fn offline_validation_skips_host_checks() {
    let doc = parse(&with("/fence/a}", "/not/on/this/host}"), Format::Yaml).unwrap();
    let set = validate(&[doc], None, now()).unwrap();
    assert_eq!(
        set.identities[0].cgroups[0],
        BoundCgroup { path: "/not/on/this/host".into(), id: None, kind: SelectorKind::Cgroup }
    );
}

#[test]
fn policy_versions_change_with_content() {
    let a = check(GOOD).unwrap().identities[0].version;
    let b = check(&with("[443, ", "[444, ")).unwrap().identities[0].version;
    assert_ne!(a, b);
    assert!(a.to_string().starts_with("sha256:") && a.to_string().len() == 7 + 64);
}

#[test]
fn the_example_policy_in_the_repository_validates() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let docs = load_paths(&[path]).unwrap();
    let set = validate(&docs, None, now()).unwrap();
    assert_eq!(set.identities.len(), 2);
}

const NAMES: &str = r#"
schema: 1
identities:
  - name: agent
    owner: ml@example.com
    purpose: calls model APIs
    selectors: [{cgroup: /fence/a}]
    egress:
      - name: apis
        to: [10.0.0.0/8, API.OpenAI.com., "*.example.com"]
        ports: [443]
        protocol: tcp
      - name: deep
        to: ["**.example.com"]
        ports: ["8000-8080", 443]
        protocol: any
"#;

#[test]
fn a_rule_mixes_networks_and_names() {
    let set = check(NAMES).unwrap();
    let id = &set.identities[0];
    assert_eq!(id.egress[0].nets, vec![net::IpNet::parse("10.0.0.0/8").unwrap()]);
    let names: Vec<String> = id.names().map(ToString::to_string).collect();
    assert_eq!(names, ["api.openai.com", "*.example.com", "**.example.com"]);
    assert!(id.egress[1].nets.is_empty());
}

#[test]
fn names_add_nothing_to_the_compiled_prefixes() {
    use crate::{
        compile::{IdAllocator, compile},
        resolve::Resolved,
    };
    let set = check(NAMES).unwrap();
    let mut without = set.clone();
    without.identities[0].egress.iter_mut().for_each(|r| r.names.clear());
    let entries = |s: &PolicySet| compile(s, &Resolved::default(), &mut IdAllocator::default()).unwrap().entries;
    assert_eq!(entries(&set), entries(&without));
}

#[test]
fn dns_allowance_is_the_union_of_the_matching_rules() {
    use fence_common::{PROTO_TCP, PROTO_UDP};
    let set = check(NAMES).unwrap();
    let id = &set.identities[0];
    let ports = |a: DnsAllowance| a.ports.iter().map(|p| (p.lo, p.hi, p.protocols)).collect::<Vec<_>>();
    let both = id.dns_allowance("WWW.example.com.").unwrap();
    assert_eq!(both.rules, ["apis", "deep"]);
    assert_eq!(ports(both), [(443, 443, PROTO_TCP | PROTO_UDP), (8000, 8080, PROTO_TCP | PROTO_UDP)]);
    let deep = id.dns_allowance("a.b.example.com").unwrap();
    assert_eq!(deep.rules, ["deep"]);
    let api = id.dns_allowance("api.openai.com").unwrap();
    assert_eq!((api.rules.clone(), ports(api)), (vec!["apis".to_owned()], vec![(443, 443, PROTO_TCP)]));
    for none in ["example.com", "openai.com", "x.api.openai.com", "a\\.b.example.com"] {
        assert_eq!(id.dns_allowance(none), None, "{none}");
    }
    let mut expired = id.clone();
    expired.expired = true;
    assert_eq!(expired.dns_allowance("api.openai.com"), None);
}

#[test]
fn policy_versions_change_with_names() {
    let a = check(NAMES).unwrap().identities[0].version;
    let b = check(&NAMES.replace("API.OpenAI.com.", "api.anthropic.com")).unwrap().identities[0].version;
    assert_ne!(a, b);
}

const GRANTS: &str = r#"
    grants:
      - name: prod-db
        egress: [{to: [10.1.2.3], ports: [5432], protocol: tcp}]
        max_ttl: 1h
        approval: auto
      - name: creds
        files: [/etc/deploy/token]
        unix: [/run/docker.sock, "@bus"]
"#;

#[test]
fn grantable_targets_validate_with_their_defaults() {
    let set = check(&format!("{GOOD}{GRANTS}")).unwrap();
    let id = &set.identities[0];
    assert_eq!(id.grantable.len(), 2);
    let db = id.grantable("prod-db").unwrap();
    assert_eq!(db.max_ttl, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(db.approval, Approval::Auto);
    assert_eq!(db.egress[0].grant, 0, "not in force until granted");
    let creds = id.grantable("creds").unwrap();
    assert_eq!(creds.approval, Approval::Console, "a person approves unless the policy says auto");
    assert_eq!(creds.max_ttl, None);
    assert_eq!(creds.unix.abstract_names, vec![b"bus".to_vec()]);
    assert!(id.grants_in_force.is_empty());
    assert_eq!(id.egress.len(), 1, "grantable rules are not standing");
}

/// `identities --json` gets the reach as values; the reviewer's lines are their `Display`.
#[test]
fn standing_and_grantable_reach_are_values_with_a_line() {
    use crate::grants::reach::{GrantableTarget, Standing};
    let set = check(&format!("{GOOD}{GRANTS}")).unwrap();
    let id = &set.identities[0];
    let standing = Standing::of(id);
    assert_eq!(standing.egress.len(), 1, "{standing:?}");
    assert_eq!(
        standing.to_string(),
        format!("egress {}; exec unrestricted; files no exceptions; unix host default-deny", standing.egress[0])
    );
    let db = GrantableTarget::of(id.grantable("prod-db").unwrap());
    assert_eq!((db.approval.as_str(), db.max_ttl_seconds), ("auto", Some(3600)));
    assert_eq!(db.to_string(), format!("prod-db (auto, max 1h): egress {}", db.egress[0]));
    assert!(db.egress[0].starts_with("10.1.2.3/32 5432/tcp"), "{db:?}");
    let creds = GrantableTarget::of(id.grantable("creds").unwrap());
    assert_eq!(creds.unix, vec!["/run/docker.sock".to_owned(), "@bus".to_owned()]);
    assert_eq!(
        creds.to_string(),
        "creds (console, max the host's cap): files /etc/deploy/token; unix /run/docker.sock, @bus"
    );
    let json = serde_json::to_value(&creds).unwrap();
    assert_eq!(json["files"], serde_json::json!(["/etc/deploy/token"]));
    assert!(json.get("max_ttl_seconds").is_none() && json.get("egress").is_none(), "{json}");
}

#[test]
fn bad_grants_name_the_grant_field_and_reason() {
    let bad = |from: &str, to: &str| error_of(&format!("{GOOD}{}", GRANTS.replace(from, to)));
    let e = bad("max_ttl: 1h", "max_ttl: 1w");
    assert!(e.contains("grants[0].max_ttl") && e.contains("not a duration"), "{e}");
    let e = bad("to: [10.1.2.3]", "to: [10.1.2.3/8]");
    assert!(e.contains("grants[0].egress[0].to[0]") && e.contains("host bits"), "{e}");
    let e = bad("name: creds", "name: prod-db");
    assert!(e.contains("grants[1].name") && e.contains("another grant"), "{e}");
    let e = bad("approval: auto", "approval: sometimes");
    assert!(e.contains("approval"), "{e}");
    let e = bad("files: [/etc/deploy/token]\n        unix: [/run/docker.sock, \"@bus\"]", "max_ttl: 5m");
    assert!(e.contains("grants[1]") && e.contains("grants nothing"), "{e}");
    let e = bad("files: [/etc/deploy/token]", "exec: [/usr/bin/deploy]");
    assert!(e.contains("grants[1].exec") && e.contains("no exec allow-list"), "{e}");
}

#[test]
fn a_grant_in_force_joins_the_egress_rules_with_its_slot() {
    let set = check(&format!("{GOOD}{GRANTS}")).unwrap();
    let mut id = set.identities[0].clone();
    let target = id.grantable("prod-db").unwrap().clone();
    id.put_in_force(vec![GrantInForce { slot: 9, target }]);
    assert_eq!(id.egress.len(), 2);
    assert_eq!(id.egress[1].grant, 9);
    assert_eq!(id.egress[1].name, "grant:prod-db");
}

const SECRETS: &str = r#"
    secrets:
      - name: api-key
        kv: {path: ai/openai, key: api_key}
      - name: db
        dynamic: {role: database/creds/ai-readonly, ttl: 15m}
        grant: prod-db
"#;

#[test]
fn secrets_validate_with_their_sources() {
    let set = check(&format!("{GOOD}{GRANTS}{SECRETS}")).unwrap();
    let id = &set.identities[0];
    assert_eq!(
        id.secret("api-key").unwrap().source,
        crate::policy::SecretSource::Kv { path: "ai/openai".into(), key: "api_key".into() }
    );
    let db = id.secret("db").unwrap();
    assert_eq!(
        db.source,
        crate::policy::SecretSource::Dynamic {
            path: "database/creds/ai-readonly".into(),
            ttl: Some(std::time::Duration::from_secs(900))
        }
    );
    assert_eq!(db.grant.as_deref(), Some("prod-db"));
}

#[test]
fn bad_secrets_name_the_secret_field_and_reason() {
    let bad = |from: &str, to: &str| error_of(&format!("{GOOD}{GRANTS}{}", SECRETS.replace(from, to)));
    let e = bad("grant: prod-db", "grant: nope");
    assert!(e.contains("secrets[1].grant") && e.contains("no such target"), "{e}");
    let e = bad("path: ai/openai", "path: ai/../sys");
    assert!(e.contains("secrets[0].kv.path") && e.contains(".."), "{e}");
    let e = bad("role: database/creds/ai-readonly", "role: database/roles/ai-readonly");
    assert!(e.contains("secrets[1].dynamic.role") && e.contains("MOUNT/creds/ROLE"), "{e}");
    let e = bad("ttl: 15m", "ttl: 0s");
    assert!(e.contains("secrets[1].dynamic.ttl"), "{e}");
    let e = bad("name: db", "name: api-key");
    assert!(e.contains("secrets[1].name") && e.contains("another secret"), "{e}");
    let e = bad(
        "kv: {path: ai/openai, key: api_key}",
        "kv: {path: ai/openai, key: api_key}\n        dynamic: {role: a/creds/b}",
    );
    assert!(e.contains("secrets[0]") && e.contains("exactly one"), "{e}");
    let e = bad("key: api_key", "key: \"\"");
    assert!(e.contains("secrets[0].kv.key"), "{e}");
    let e = bad("kv: {path: ai/openai, key: api_key}", "kv: {path: ai/openai, key: api_key, mount: x}");
    assert!(e.contains("mount"), "unknown fields are refused: {e}");
}
