//! Where fence keeps its documents in a KV v2 mount, and what they hold. Pure: no network.
//!
//! Under the configured prefix (default `fence`):
//!
//! | path | written by | content |
//! |---|---|---|
//! | `identities/<name>` | console | a [`SignedDocument`]: a policy file with exactly that identity |
//! | `assignments` | console | a [`SignedDocument`]: which identities and protected files apply where |
//! | `index` | console, after every push | a [`SignedDocument`]: the [`Index`], which names the exact current document at every path |
//! | `status/<hostname>` | each agent | what it applied and when (unsigned, no secrets) |
//!
//! The path given to signing and verification is the path relative to the prefix
//! (`identities/ci-runner`, `assignments`): a signature does not carry over to another path,
//! but does carry over to the same path under another prefix or mount. Environments that must
//! not accept each other's documents (staging, production) use separate signing keys.
//!
//! An assignments document:
//!
//! ```yaml
//! schema: 1
//! assignments:
//!   - name: prod-web                  # rule name
//!     hosts: ["web-*", "api-1"]       # host-name globs (`*`, `?`), any may match
//!     labels: {env: prod}             # all must match; with `hosts`, both must match
//!     identities: [ci-runner, model-runner]
//!     protect: {paths: ["/srv/app/secrets/**"], env_roots: ["/srv"]}   # added to the host's set
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::{
    Format, PolicyErrorKind, SCHEMA_VERSION,
    glob::{PathGlob, component_matches},
    parse_document,
};

/// One identity per secret below this directory.
pub const IDENTITIES_DIR: &str = "identities";
/// The signed assignments document.
pub const ASSIGNMENTS: &str = "assignments";
/// The signed index (manifest) the agents poll.
pub const INDEX: &str = "index";
/// One status secret per host below this directory.
pub const STATUS_DIR: &str = "status";

/// Longest host name (DNS) and host pattern accepted.
const MAX_HOST_LEN: usize = 253;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    #[error("identity name {name:?} is not valid: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("host name {name:?} is not valid: {why}")]
    InvalidHostName { name: String, why: &'static str },
    #[error("{document}: KV field `{field}`: {why}")]
    Kv { document: &'static str, field: String, why: String },
    #[error("{path}: {why}")]
    IdentityDocument { path: String, why: String },
    #[error("{}: {why}", ASSIGNMENTS)]
    AssignmentsDocument { why: String },
    #[error("{}", AssignmentErrors(.0))]
    Assignments(Vec<AssignmentError>),
}

/// One problem in one assignment rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct AssignmentError {
    /// Position in `assignments`.
    pub index: usize,
    /// The rule's name, when it has a usable one.
    pub rule: Option<String>,
    /// Field inside the rule (`hosts[1]`), empty for the whole rule.
    pub field: String,
    pub why: String,
}

impl fmt::Display for AssignmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(name) => write!(f, "rule \"{name}\" (assignments[{}])", self.index)?,
            None => write!(f, "assignments[{}]", self.index)?,
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.why)
    }
}

struct AssignmentErrors<'a>(&'a [AssignmentError]);

impl fmt::Display for AssignmentErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{ASSIGNMENTS}: rejected ({n} error{})", if n == 1 { "" } else { "s" })?;
        for e in self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// The KV path (relative to the prefix) of identity `name`: `identities/<name>`. The name
/// follows the policy's identity-name rule, which also keeps it one path component.
pub fn identity_path(name: &str) -> Result<String, LayoutError> {
    check_name(name).map_err(|why| LayoutError::InvalidName { name: name.to_owned(), why })?;
    Ok(format!("{IDENTITIES_DIR}/{name}"))
}

/// The KV path (relative to the prefix) of a host's status: `status/<hostname>`.
pub fn status_path(hostname: &str) -> Result<String, LayoutError> {
    check_host_name(hostname).map_err(|why| LayoutError::InvalidHostName { name: hostname.to_owned(), why })?;
    Ok(format!("{STATUS_DIR}/{hostname}"))
}

/// The identity-name rule of the policy validator (`policy::validate`): `[a-z0-9][a-z0-9._-]*`,
/// at most 63 characters. A test checks that both agree.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("must start with a lowercase letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        return Err("only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_HOST_LEN {
        return Err("longer than 253 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must start with a letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A signed document as stored in KV: the document text, its serial and signature.
/// `key_id` and `signature` are empty for an unsigned document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SignedDocument {
    pub document: String,
    pub serial: u64,
    pub key_id: String,
    pub signature: String,
}

impl SignedDocument {
    /// Reads the KV data of a secret (`data.data` of a KV v2 read). `document` and `serial`
    /// are required; `key_id` and `signature` may be missing (an unsigned document, which the
    /// verifier refuses when signing keys are configured). Unknown fields are ignored.
    pub fn from_kv(data: &serde_json::Value) -> Result<SignedDocument, LayoutError> {
        let err = |field: &str, why: &str| LayoutError::Kv {
            document: "signed document",
            field: field.to_owned(),
            why: why.to_owned(),
        };
        let Some(object) = data.as_object() else {
            return Err(err("data", "must be a JSON object"));
        };
        let text = |field: &str, required: bool| match object.get(field) {
            None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
            None | Some(serde_json::Value::Null) => Err(err(field, "is missing")),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(err(field, "must be a string")),
        };
        let serial = match object.get("serial") {
            None | Some(serde_json::Value::Null) => return Err(err("serial", "is missing")),
            Some(v) => v.as_u64().ok_or_else(|| err("serial", "must be a non-negative integer"))?,
        };
        Ok(SignedDocument {
            document: text("document", true)?,
            serial,
            key_id: text("key_id", false)?,
            signature: text("signature", false)?,
        })
    }

    /// The KV data to write. `key_id` and `signature` are left out when empty.
    pub fn to_kv(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("document".into(), self.document.clone().into());
        object.insert("serial".into(), self.serial.into());
        if !self.key_id.is_empty() {
            object.insert("key_id".into(), self.key_id.clone().into());
        }
        if !self.signature.is_empty() {
            object.insert("signature".into(), self.signature.clone().into());
        }
        serde_json::Value::Object(object)
    }
}

/// The signed manifest of what is current: for every document, its KV version, its serial and
/// the SHA-256 of its text, and when the console issued it. Stored at `index` as a
/// [`SignedDocument`] whose text is this, as JSON; agents poll only its version. An agent
/// accepts a document only when it is exactly the one the index names (serial and digest), so
/// a vault writer without the signing key can neither replay an older signed document nor
/// mix documents from different pushes; an older index is refused by its own serial.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub schema: u32,
    /// RFC 3339: when the console signed this index (checked against `vault.max_index_age`).
    pub issued_at: String,
    #[serde(default)]
    pub identities: BTreeMap<String, IndexEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignments: Option<IndexEntry>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// KV v2 version of the secret.
    pub version: u64,
    /// Serial inside the signed document.
    pub serial: u64,
    /// SHA-256 of the document's text, hex.
    pub sha256: String,
}

impl IndexEntry {
    /// The entry for `doc` stored at KV `version`.
    pub fn of(doc: &SignedDocument, version: u64) -> IndexEntry {
        IndexEntry { version, serial: doc.serial, sha256: digest(&doc.document) }
    }

    /// Whether `doc` is the document this entry names.
    pub fn names(&self, doc: &SignedDocument) -> bool {
        self.serial == doc.serial && self.sha256 == digest(&doc.document)
    }
}

/// Hex SHA-256 of a document's text.
pub fn digest(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Index {
    /// Reads an index's text (JSON). Unknown fields are ignored (newer consoles may add some).
    /// Identity names are not checked here: [`identity_path`] checks each before it is used.
    pub fn parse(text: &str) -> Result<Index, LayoutError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let index: Index = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let why = e.into_inner().to_string();
            LayoutError::Kv { document: INDEX, field: if field == "." { "document".to_owned() } else { field }, why }
        })?;
        if index.schema != 1 {
            return Err(LayoutError::Kv {
                document: INDEX,
                field: "schema".to_owned(),
                why: format!("{} is not supported (this agent reads 1)", index.schema),
            });
        }
        Ok(index)
    }

    /// The index's text, to sign and store.
    pub fn to_text(&self) -> String {
        // A struct of strings, maps and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The entry for a document path (`assignments` or `identities/<name>`).
    pub fn entry(&self, path: &str) -> Option<&IndexEntry> {
        match path.strip_prefix(IDENTITIES_DIR).and_then(|r| r.strip_prefix('/')) {
            Some(name) => self.identities.get(name),
            None if path == ASSIGNMENTS => self.assignments.as_ref(),
            None => None,
        }
    }

    /// Sets the entry for a document path; other paths are ignored.
    pub fn set(&mut self, path: &str, entry: IndexEntry) {
        match path.strip_prefix(IDENTITIES_DIR).and_then(|r| r.strip_prefix('/')) {
            Some(name) => {
                self.identities.insert(name.to_owned(), entry);
            }
            None if path == ASSIGNMENTS => self.assignments = Some(entry),
            None => {}
        }
    }
}

/// Checks that an identity document stored at `identities/<path_name>` holds exactly one
/// identity and that it is `path_name`: a validly signed document copied to another identity's
/// path is refused. The document is parsed as a policy file (YAML), without host resolution;
/// full validation is the policy validator's.
pub fn check_identity_document(path_name: &str, document: &str) -> Result<(), LayoutError> {
    let path = identity_path(path_name)?;
    let err = |why: String| LayoutError::IdentityDocument { path: path.clone(), why };
    let doc = parse_document(document, Format::Yaml).map_err(|e| err(e.to_string()))?;
    match doc.identities.as_slice() {
        [one] if one.name == path_name => Ok(()),
        [one] => Err(err(format!(
            "the document defines identity \"{}\", but is stored at the path of identity \"{path_name}\"",
            one.name
        ))),
        many => Err(err(format!("the document defines {} identities; exactly one is expected", many.len()))),
    }
}

/// A parsed, validated assignments document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignments {
    pub rules: Vec<AssignmentRule>,
}

/// One rule: which hosts, and what they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRule {
    pub name: String,
    /// Host-name globs, lowercase; any may match. Empty: host names are not looked at.
    pub hosts: Vec<String>,
    /// All must equal the host's labels. Empty: labels are not looked at.
    pub labels: BTreeMap<String, String>,
    pub identities: BTreeSet<String>,
    pub protect_paths: Vec<String>,
    pub env_roots: Vec<PathBuf>,
}

impl AssignmentRule {
    /// Whether the rule applies to `host`: a host pattern matches (when any is given) and every
    /// label is equal (when any is given). Host names are compared without regard to case.
    pub fn matches(&self, host: &HostFacts) -> bool {
        if self.hosts.is_empty() && self.labels.is_empty() {
            return false;
        }
        let hostname = host.hostname.to_ascii_lowercase();
        let hosts_ok = self.hosts.is_empty() || self.hosts.iter().any(|p| component_matches(p, &hostname));
        let labels_ok = self.labels.iter().all(|(k, v)| host.labels.get(k) == Some(v));
        hosts_ok && labels_ok
    }
}

/// What the agent knows about its host for matching assignment rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
}

/// What applies to one host: the union over the rules that match it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAssignment {
    pub identities: BTreeSet<String>,
    /// Added to the host's protected set (`[protect] paths`), without duplicates, in rule order.
    pub protect_paths: Vec<String>,
    /// Added to the host's `.env*` roots, without duplicates, in rule order.
    pub env_roots: Vec<PathBuf>,
    /// Names of the matching rules, in document order.
    pub rules: Vec<String>,
}

impl Assignments {
    pub fn for_host(&self, host: &HostFacts) -> HostAssignment {
        let mut out = HostAssignment::default();
        for rule in self.rules.iter().filter(|r| r.matches(host)) {
            out.rules.push(rule.name.clone());
            out.identities.extend(rule.identities.iter().cloned());
            for p in &rule.protect_paths {
                if !out.protect_paths.contains(p) {
                    out.protect_paths.push(p.clone());
                }
            }
            for r in &rule.env_roots {
                if !out.env_roots.contains(r) {
                    out.env_roots.push(r.clone());
                }
            }
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignmentsDoc {
    schema: Option<u64>,
    #[serde(default)]
    assignments: Vec<RuleDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    protect: Option<ProtectDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectDoc {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    env_roots: Vec<String>,
}

/// Parses and validates an assignments document (YAML). All problems are reported together,
/// each naming its rule and field.
pub fn parse_assignments(text: &str) -> Result<Assignments, LayoutError> {
    let doc_err = |why: String| LayoutError::AssignmentsDocument { why };
    if text.trim().is_empty() {
        return Err(doc_err("the document is empty".into()));
    }
    let tree: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| doc_err(format!("not valid YAML: {e}")))?;
    if tree.is_null() {
        return Err(doc_err("the document is empty".into()));
    }
    match tree.get("schema").map(|s| s.as_u64()) {
        None => return Err(doc_err(format!("schema: is required (schema: {SCHEMA_VERSION})"))),
        Some(Some(found)) if found != u64::from(SCHEMA_VERSION) => {
            return Err(doc_err(format!(
                "schema: {}",
                PolicyErrorKind::UnsupportedSchema { found, supported: SCHEMA_VERSION }
            )));
        }
        _ => {}
    }
    let doc: AssignmentsDoc = serde_path_to_error::deserialize(&tree).map_err(|e| shape_error(&tree, e))?;
    if doc.schema.is_none() {
        return Err(doc_err(format!("schema: is required (schema: {SCHEMA_VERSION})")));
    }
    let mut errors = Vec::new();
    let mut rules: Vec<AssignmentRule> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, rule) in doc.assignments.into_iter().enumerate() {
        if let Some(r) = check_rule(index, rule, &mut seen, &mut errors) {
            rules.push(r);
        }
    }
    if errors.is_empty() { Ok(Assignments { rules }) } else { Err(LayoutError::Assignments(errors)) }
}

/// A type error or unknown field, named by rule: `rule "prod-web" (assignments[0]): hosts[1]: ...`.
fn shape_error(tree: &serde_json::Value, e: serde_path_to_error::Error<serde_json::Error>) -> LayoutError {
    let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
    let path = e.path().to_string();
    let why = e.into_inner().to_string();
    use serde_path_to_error::Segment;
    if let [Segment::Map { key }, Segment::Seq { index }, rest @ ..] = segments.as_slice()
        && key == "assignments"
    {
        let rule = tree
            .get("assignments")
            .and_then(|a| a.get(*index))
            .and_then(|r| r.get("name"))
            .and_then(|n| n.as_str())
            .filter(|n| check_name(n).is_ok())
            .map(str::to_owned);
        let field = rest
            .iter()
            .map(|s| match s {
                Segment::Seq { index } => format!("[{index}]"),
                Segment::Map { key } | Segment::Enum { variant: key } => format!(".{key}"),
                Segment::Unknown => ".?".to_owned(),
            })
            .collect::<String>();
        let field = field.trim_start_matches('.').to_owned();
        return LayoutError::Assignments(vec![AssignmentError { index: *index, rule, field, why }]);
    }
    LayoutError::AssignmentsDocument { why: if path == "." { why } else { format!("{path}: {why}") } }
}

fn check_rule(
    index: usize,
    doc: RuleDoc,
    seen: &mut BTreeMap<String, usize>,
    errors: &mut Vec<AssignmentError>,
) -> Option<AssignmentRule> {
    let before = errors.len();
    let rule = check_name(&doc.name).is_ok().then(|| doc.name.clone());
    let mut push = |field: String, why: String| {
        errors.push(AssignmentError { index, rule: rule.clone(), field, why });
    };
    if let Err(why) = check_name(&doc.name) {
        push("name".into(), format!("{:?} is not a valid rule name: {why}", doc.name));
    } else if let Some(other) = seen.get(&doc.name) {
        push("name".into(), format!("the rule name is also used by assignments[{other}]"));
    } else {
        seen.insert(doc.name.clone(), index);
    }
    if doc.hosts.is_empty() && doc.labels.is_empty() {
        push(
            String::new(),
            "gives neither `hosts` nor `labels`, so it would match no host; give host-name globs, labels or both"
                .into(),
        );
    }
    let mut hosts = Vec::new();
    for (i, pattern) in doc.hosts.iter().enumerate() {
        match check_host_pattern(pattern) {
            Ok(()) => hosts.push(pattern.to_ascii_lowercase()),
            Err(why) => push(format!("hosts[{i}]"), format!("{pattern:?} is not a valid host-name glob: {why}")),
        }
    }
    for key in doc.labels.keys() {
        if let Err(why) = check_label_key(key) {
            push(format!("labels.{key}"), format!("{key:?} is not a valid label name: {why}"));
        }
    }
    let mut identities = BTreeSet::new();
    for (i, name) in doc.identities.iter().enumerate() {
        match check_name(name) {
            Ok(()) => {
                identities.insert(name.clone());
            }
            Err(why) => push(format!("identities[{i}]"), format!("{name:?} is not a valid identity name: {why}")),
        }
    }
    let protect = doc.protect.unwrap_or(ProtectDoc { paths: Vec::new(), env_roots: Vec::new() });
    for (i, p) in protect.paths.iter().enumerate() {
        if let Err(e) = PathGlob::parse(p) {
            push(format!("protect.paths[{i}]"), e.to_string());
        }
    }
    let mut env_roots = Vec::new();
    for (i, r) in protect.env_roots.iter().enumerate() {
        let dir = PathBuf::from(r);
        if !dir.is_absolute() || r.split('/').any(|c| c == "..") || r.contains('\0') {
            push(format!("protect.env_roots[{i}]"), format!("{r:?} must be an absolute directory (no '..')"));
        } else {
            env_roots.push(dir);
        }
    }
    if errors.len() != before {
        return None;
    }
    Some(AssignmentRule {
        name: doc.name,
        hosts,
        labels: doc.labels,
        identities,
        protect_paths: protect.paths,
        env_roots,
    })
}

/// A host-name glob: host-name characters plus `*` (any run of characters) and `?` (one).
fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("must not be empty");
    }
    if pattern.len() > MAX_HOST_LEN {
        return Err("longer than 253 characters");
    }
    if !pattern.chars().all(|c| c.is_ascii_alphanumeric() || "._-*?".contains(c)) {
        return Err("only letters, digits, '.', '_', '-' and the wildcards '*' and '?' are allowed");
    }
    Ok(())
}

fn check_label_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err("only letters, digits, '.', '_', '-' and '/' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jiff::Timestamp;

    use super::*;
    use crate::policy::{SourceDocument, validate};

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
        for bad in ["", "a/b", "..", ".hidden", "x y"] {
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
            (
                serde_json::json!({"document": "x", "serial": 1, "signature": 5}),
                "KV field `signature`: must be a string",
            ),
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
}
