//! The signed documents as KV stores them, and the signed index that names the current one
//! at every path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ASSIGNMENTS, IDENTITIES_DIR, INDEX, LayoutError, identity_path};
use crate::policy::{Format, parse_document};

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
