//! The assignments document: which identities and protected files apply to which hosts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
};

use serde::Deserialize;
use thiserror::Error;

use super::{ASSIGNMENTS, LayoutError};
use crate::{
    names,
    policy::{
        PolicyErrorKind, SCHEMA_VERSION,
        glob::{PathGlob, component_matches},
    },
};

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

pub(super) struct AssignmentErrors<'a>(pub(super) &'a [AssignmentError]);

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
            .filter(|n| names::check_name(n).is_ok())
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
    let rule = names::check_name(&doc.name).is_ok().then(|| doc.name.clone());
    let mut push = |field: String, why: String| {
        errors.push(AssignmentError { index, rule: rule.clone(), field, why });
    };
    if let Err(why) = names::check_name(&doc.name) {
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
        match names::check_host_pattern(pattern) {
            Ok(()) => hosts.push(pattern.to_ascii_lowercase()),
            Err(why) => push(format!("hosts[{i}]"), format!("{pattern:?} is not a valid host-name glob: {why}")),
        }
    }
    for key in doc.labels.keys() {
        if let Err(why) = names::check_label_key(key) {
            push(format!("labels.{key}"), format!("{key:?} is not a valid label name: {why}"));
        }
    }
    let mut identities = BTreeSet::new();
    for (i, name) in doc.identities.iter().enumerate() {
        match names::check_name(name) {
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
