//! Policy errors. Each names the file, the identity (when there is one), the field (a path
//! such as `egress[1].ports[0]`) and the reason.

use std::{fmt, path::PathBuf};

use thiserror::Error;

/// One problem found in a policy.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub identity: Option<String>,
    /// Field path inside the document or identity, empty for whole-file problems.
    pub field: String,
    pub kind: PolicyErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(identity) = &self.identity {
            write!(f, ": identity \"{identity}\"")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// Why a policy was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyErrorKind {
    #[error("cannot read: {0}")]
    Unreadable(String),
    #[error("file is empty")]
    Empty,
    #[error("unsupported file type (use .yaml, .yml, .toml or .json)")]
    UnsupportedExtension,
    #[error("no policy files (.yaml, .yml, .toml, .json) in this directory")]
    EmptyDirectory,
    #[error("not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("{0}")]
    Schema(String),
    #[error("schema {found} is not supported (this agent reads schema {supported})")]
    UnsupportedSchema { found: u64, supported: u32 },
    #[error("is required{0}")]
    Required(&'static str),
    #[error("must not be empty")]
    EmptyList,
    #[error("{value:?} is not a valid name: {why}")]
    InvalidName { value: String, why: &'static str },
    #[error("identity is also defined in {other}")]
    DuplicateIdentity { other: String },
    #[error("{value:?} is not a valid CIDR or IP address: {why}")]
    InvalidCidr { value: String, why: String },
    #[error("{value:?} is not a valid DNS name: {why}")]
    InvalidDnsName { value: String, why: super::NameError },
    #[error("{value:?} has host bits set; did you mean {suggestion}?")]
    HostBitsSet { value: String, suggestion: String },
    #[error("{value} is out of range (ports are 1-65535)")]
    PortOutOfRange { value: String },
    #[error("{value:?} is not a port or port range (write 443, \"8000-8080\" or \"any\"): {why}")]
    InvalidPort { value: String, why: String },
    #[error("{value:?} is not a valid {what}: {why}")]
    InvalidValue { what: &'static str, value: String, why: String },
    #[error("{expires} is before created {created}")]
    ExpiresBeforeCreated { created: String, expires: String },
    #[error("cgroup {path:?} does not exist under {root}")]
    CgroupNotFound { path: String, root: String },
    #[error("cgroup {path:?} cannot be used: {why}")]
    CgroupUnusable { path: String, why: String },
    #[error(
        "cgroup {path:?} is also bound to identity \"{other}\" (mode {other_mode}); one cgroup \
         has one identity and one mode"
    )]
    CgroupConflict { path: String, other: String, other_mode: &'static str },
    #[error(
        "destinations in {prefix} carry {count} distinct port rules after merging overlapping \
         rules; the limit is {max} per prefix (merge ports into ranges)"
    )]
    TooManyPortRules { prefix: String, count: usize, max: usize },
    #[error("the policy needs {needed} {what} entries; this agent holds at most {max}")]
    TooLarge { what: &'static str, needed: usize, max: usize },
}

/// All problems found in a policy set; `Display` prints one per line.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "policy rejected ({n} error{})", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        PolicyErrors(vec![e])
    }
}
