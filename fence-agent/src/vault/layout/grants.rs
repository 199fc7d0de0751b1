//! Grants through the vault: an agent publishes each request that needs a person at
//! `grants/requests/<host>/<id>` (unsigned facts: who asked, for what, why), and a console
//! answers at `grants/decisions/<host>/<id>` with a [`SignedDocument`] holding a
//! [`Decision`]. The signature covers the path, so a decision cannot be moved to another host
//! or request; the decision repeats the request's identity, target and ttl and carries a
//! `not_after`, and a request is decided once: a replayed or stale decision changes nothing.

use serde::{Deserialize, Serialize};

use super::LayoutError;
use crate::names;

/// Requests, one directory per host.
pub const REQUESTS_DIR: &str = "grants/requests";
/// Decisions, one directory per host.
pub const DECISIONS_DIR: &str = "grants/decisions";

/// What a console decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
    Revoke,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
            Verdict::Revoke => "revoke",
        }
    }
}

/// A console's decision on one request (the document of a signed decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub id: String,
    pub host: String,
    pub identity: String,
    pub target: String,
    pub ttl_seconds: u64,
    pub verdict: Verdict,
    #[serde(default)]
    pub reason: String,
    /// RFC 3339: the decision is refused after this (a delayed or replayed one is stale).
    pub not_after: String,
}

/// A request as published for consoles (what `grant approve -c` shows before signing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestDoc {
    pub id: String,
    pub host: String,
    pub identity: String,
    pub target: String,
    pub ttl_seconds: u64,
    pub reason: String,
    pub requested_at: String,
    pub requester_pid: u32,
    pub requester_uid: u32,
    #[serde(default)]
    pub requester_executable: Option<String>,
}

/// `g-` and 16 lowercase hexadecimal digits: a grant id, safe as one path component.
pub fn check_grant_id(id: &str) -> Result<(), LayoutError> {
    let ok = id.len() == 18
        && id.starts_with("g-")
        && id[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LayoutError::InvalidName { name: id.to_owned(), why: "not a grant id (g- and 16 hex digits)" })
    }
}

fn host_id(host: &str, id: &str) -> Result<(), LayoutError> {
    names::check_host_name(host).map_err(|why| LayoutError::InvalidHostName { name: host.to_owned(), why })?;
    check_grant_id(id)
}

/// `grants/requests/<host>/<id>`.
pub fn request_path(host: &str, id: &str) -> Result<String, LayoutError> {
    host_id(host, id)?;
    Ok(format!("{REQUESTS_DIR}/{host}/{id}"))
}

/// `grants/decisions/<host>/<id>` (the path its signature covers).
pub fn decision_path(host: &str, id: &str) -> Result<String, LayoutError> {
    host_id(host, id)?;
    Ok(format!("{DECISIONS_DIR}/{host}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_only_real_ids_and_host_names() {
        assert_eq!(request_path("web-1", "g-0123456789abcdef").unwrap(), "grants/requests/web-1/g-0123456789abcdef");
        assert_eq!(decision_path("web-1", "g-0123456789abcdef").unwrap(), "grants/decisions/web-1/g-0123456789abcdef");
        for bad in ["g-0123", "g-0123456789ABCDEF", "x-0123456789abcdef", "g-../../../../..", ""] {
            assert!(decision_path("web-1", bad).is_err(), "{bad}");
        }
        assert!(decision_path("../web", "g-0123456789abcdef").is_err());
    }

    #[test]
    fn decisions_refuse_unknown_fields() {
        let text = r#"{"id":"g-0123456789abcdef","host":"h","identity":"a","target":"db","ttl_seconds":60,"verdict":"approve","not_after":"2026-01-01T00:00:00Z","extra":1}"#;
        assert!(serde_json::from_str::<Decision>(text).is_err());
    }
}
