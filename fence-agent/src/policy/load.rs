//! Reading policy files. A path is a file or a directory (its `.yaml`, `.yml`, `.toml` and
//! `.json` files, sorted by name). Every file is parsed into a generic tree first (so that
//! syntax errors carry the parser's line and column), then into [`PolicyDocument`] (so that
//! type errors and unknown fields carry the field path).

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{PolicyError, PolicyErrorKind, PolicyErrors, model::PolicyDocument};

/// A parsed document and where it came from.
#[derive(Debug, Clone)]
pub struct SourceDocument {
    pub path: PathBuf,
    pub document: PolicyDocument,
}

/// Largest policy file accepted (a typo'd path to a huge file should not eat memory).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads and parses every policy file under `paths`. All problems are reported together.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<SourceDocument>, PolicyErrors> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match expand(path) {
            Ok(files) => {
                for file in files {
                    match read_one(&file) {
                        Ok(document) => docs.push(SourceDocument { path: file, document }),
                        Err(e) => errors.extend(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(docs) } else { Err(PolicyErrors(errors)) }
}

fn file_error(path: &Path, kind: PolicyErrorKind) -> PolicyError {
    PolicyError { file: path.to_owned(), identity: None, field: String::new(), kind }
}

fn is_policy_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "toml" | "json"))
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let meta = fs::metadata(path).map_err(|e| file_error(path, PolicyErrorKind::Unreadable(e.to_string())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = fs::read_dir(path).map_err(|e| file_error(path, PolicyErrorKind::Unreadable(e.to_string())))?;
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_policy_file(p)).collect();
    files.sort();
    if files.is_empty() {
        return Err(file_error(path, PolicyErrorKind::EmptyDirectory));
    }
    Ok(files)
}

/// One file's document, or every problem found in it.
fn read_one(path: &Path) -> Result<PolicyDocument, Vec<PolicyError>> {
    let err = |kind| vec![file_error(path, kind)];
    let meta = fs::metadata(path).map_err(|e| err(PolicyErrorKind::Unreadable(e.to_string())))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(PolicyErrorKind::Unreadable(format!(
            "file is {} bytes; the limit is {MAX_FILE_BYTES}",
            meta.len()
        ))));
    }
    let bytes = fs::read(path).map_err(|e| err(PolicyErrorKind::Unreadable(e.to_string())))?;
    let text = String::from_utf8(bytes).map_err(|_| err(PolicyErrorKind::Unreadable("not UTF-8 text".to_owned())))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Format::Yaml,
        Some("toml") => Format::Toml,
        Some("json") => Format::Json,
        _ => return Err(err(PolicyErrorKind::UnsupportedExtension)),
    };
    parse_document_all(&text, format).map_err(|kinds| kinds.into_iter().map(|k| file_error(path, k)).collect())
}

/// Policy file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Toml => "TOML",
            Format::Json => "JSON",
        }
    }
}

/// Parses one document's text; the first problem found.
pub fn parse_document(text: &str, format: Format) -> Result<PolicyDocument, PolicyErrorKind> {
    parse_document_all(text, format).map_err(|mut all| all.swap_remove(0))
}

/// Parses one document's text; every problem the parsers let us find: a syntax error stops
/// the parser, but shape errors are looked for in the document and in each identity apart,
/// so that a file with mistakes in three identities gets three errors (the first of each).
pub fn parse_document_all(text: &str, format: Format) -> Result<PolicyDocument, Vec<PolicyErrorKind>> {
    parse_tree(text, format)
        .map_err(|e| vec![e])
        .and_then(|tree| typed::<PolicyDocument>(tree.clone(), "").map_err(|first| shape_errors(tree, first)))
}

/// Each shape error of `tree`, whose whole-document error was `first`: the document's with
/// the identities left out, then each identity's.
fn shape_errors(mut tree: serde_json::Value, first: PolicyErrorKind) -> Vec<PolicyErrorKind> {
    let identities = tree.get_mut("identities").and_then(|i| i.as_array_mut()).map(std::mem::take);
    let mut errors: Vec<PolicyErrorKind> = typed::<PolicyDocument>(tree, "").err().into_iter().collect();
    for (i, identity) in identities.into_iter().flatten().enumerate() {
        if let Err(e) = typed::<super::model::IdentityDoc>(identity, &format!("identities[{i}]")) {
            errors.push(e);
        }
    }
    if errors.is_empty() { vec![first] } else { errors }
}

/// `tree` as a `T`; an error names the field's path below `at`.
fn typed<T: serde::de::DeserializeOwned>(tree: serde_json::Value, at: &str) -> Result<T, PolicyErrorKind> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let path = match (at, path.as_str()) {
            (_, ".") => at.to_owned(),
            ("", p) => p.to_owned(),
            (at, p) if p.starts_with('[') => format!("{at}{p}"),
            (at, p) => format!("{at}.{p}"),
        };
        PolicyErrorKind::Schema(if path.is_empty() { inner } else { format!("{path}: {inner}") })
    })
}

/// The generic tree of a document, its schema number checked.
fn parse_tree(text: &str, format: Format) -> Result<serde_json::Value, PolicyErrorKind> {
    if text.trim().is_empty() {
        return Err(PolicyErrorKind::Empty);
    }
    let syntax = |message: String| PolicyErrorKind::Syntax { format: format.name(), message };
    let tree: serde_json::Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
        Format::Yaml => serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?,
        Format::Toml => {
            let value: toml::Value = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
            toml_to_json(value)
        }
    };
    if tree.is_null() {
        return Err(PolicyErrorKind::Empty);
    }
    // Check the schema number before the shape, so that a future document gets a clear answer
    // instead of a list of unknown fields.
    if let Some(found) = tree.get("schema").and_then(|s| s.as_u64())
        && found != u64::from(super::SCHEMA_VERSION)
    {
        return Err(PolicyErrorKind::UnsupportedSchema { found, supported: super::SCHEMA_VERSION });
    }
    Ok(tree)
}

/// TOML datetimes become strings (dates in policies are strings in every format).
fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_errors_are_reported_for_every_identity_of_a_file() {
        let text = "schema: 1\nsurprise: 1\nidentities:\n  - name: a\n    owner: o\n    purpose: p\n    egress: [{to: [10.0.0.0/8], ports: [80]}]\n  - name: ok\n    owner: o\n    purpose: p\n    selectors: [{cgroup: /fence/a}]\n  - name: c\n    bogus: 1\n";
        let errors: Vec<String> =
            parse_document_all(text, Format::Yaml).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("surprise: unknown field"), "{errors:#?}");
        assert!(errors[1].starts_with("identities[0].egress[0]: missing field `protocol`"), "{errors:#?}");
        assert!(errors[2].starts_with("identities[2].bogus: unknown field"), "{errors:#?}");
        // The single-error form gives the first; a syntax error stops the parser (one error).
        assert!(parse_document(text, Format::Yaml).unwrap_err().to_string().starts_with("surprise"));
        assert_eq!(parse_document_all("schema: 1\nidentities: [\n", Format::Yaml).unwrap_err().len(), 1);
        // Identities that are not a list: the document's error alone.
        let e = parse_document_all("schema: 1\nidentities: 3\n", Format::Yaml).unwrap_err();
        assert!(e.len() == 1 && e[0].to_string().starts_with("identities: "), "{e:?}");
    }
}
