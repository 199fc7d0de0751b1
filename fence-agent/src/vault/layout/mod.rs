//! Where fence keeps its documents in a KV v2 mount, and what they hold. Pure: no network.
//! The signed documents and the index are in `documents`, the assignments in `assignments`;
//! names follow the rules of [`crate::names`].
//!
//! Under the configured prefix (default `fence`):
//!
//! | path | written by | content |
//! |---|---|---|
//! | `identities/<name>` | console | a [`SignedDocument`]: a policy file with exactly that identity |
//! | `assignments` | console | a [`SignedDocument`]: which identities and protected files apply where |
//! | `index` | console, after every push | a [`SignedDocument`]: the [`Index`], which names the exact current document at every path |
//! | `status/<hostname>` | each agent | what it applied and when (unsigned, no secrets) |
//! | `grants/requests/<hostname>/<id>` | each agent | a grant request waiting for a person (unsigned facts) |
//! | `grants/decisions/<hostname>/<id>` | console | a [`SignedDocument`]: approve, deny or revoke (see [`grants`]) |
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

mod assignments;
mod documents;
pub mod grants;
#[cfg(test)]
mod tests;

use thiserror::Error;

pub use self::{
    assignments::{AssignmentError, AssignmentRule, Assignments, HostAssignment, HostFacts, parse_assignments},
    documents::{Index, IndexEntry, SignedDocument, check_identity_document, digest},
};
use crate::names;

/// One identity per secret below this directory.
pub const IDENTITIES_DIR: &str = "identities";
/// The signed assignments document.
pub const ASSIGNMENTS: &str = "assignments";
/// The signed index (manifest) the agents poll.
pub const INDEX: &str = "index";
/// One status secret per host below this directory.
pub const STATUS_DIR: &str = "status";

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
    #[error("{}", assignments::AssignmentErrors(.0))]
    Assignments(Vec<AssignmentError>),
}

/// The KV path (relative to the prefix) of identity `name`: `identities/<name>`. The name
/// follows the policy's identity-name rule, which also keeps it one path component.
pub fn identity_path(name: &str) -> Result<String, LayoutError> {
    names::check_name(name).map_err(|why| LayoutError::InvalidName { name: name.to_owned(), why })?;
    Ok(format!("{IDENTITIES_DIR}/{name}"))
}

/// The KV path (relative to the prefix) of a host's compliance report:
/// `status/<hostname>/report` (beside its status, so that the agents' vault policy covers it).
pub fn report_path(hostname: &str) -> Result<String, LayoutError> {
    Ok(format!("{}/{REPORT}", status_path(hostname)?))
}

/// The last path component of a host's report (see [`report_path`]).
pub const REPORT: &str = "report";

/// The KV path (relative to the prefix) of a host's status: `status/<hostname>`.
pub fn status_path(hostname: &str) -> Result<String, LayoutError> {
    names::check_host_name(hostname).map_err(|why| LayoutError::InvalidHostName { name: hostname.to_owned(), why })?;
    Ok(format!("{STATUS_DIR}/{hostname}"))
}
