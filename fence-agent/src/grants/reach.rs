//! One line per reach, for reviewers: what an identity holds standing, and what it may be
//! granted (`policy check`, `fence-agent identities`), so that standing privilege is visible.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    kernel::port_rules_text,
    policy::{EgressRule, Grantable, Identity, net::Ports},
};

/// An identity's standing reach, structured (`identities --json`); its `Display` is the
/// reviewer's line: `egress 10.0.0.0/8 443/tcp; exec allow-list of 3; files 1 exception(s);
/// unix host default-deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// One entry per egress rule, as `TO... PORTS` (`10.0.0.0/8 443/tcp`); empty: no egress.
    pub egress: Vec<String>,
    /// Entries of the exec allow-list; absent: exec is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_allow: Option<usize>,
    pub file_exceptions: usize,
    /// Entries of the unix-socket allow-list; absent: only the host's default-deny set applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_allow: Option<usize>,
}

impl Standing {
    pub fn of(i: &Identity) -> Standing {
        Standing {
            egress: egress(&i.egress),
            exec_allow: i.exec.as_ref().map(|e| e.allow.len()),
            file_exceptions: i.file_exceptions.len(),
            unix_allow: i.unix.as_ref().map(|u| u.paths.len() + u.abstract_names.len()),
        }
    }
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", EgressText(&self.egress))?;
        match self.exec_allow {
            Some(n) => write!(f, "; exec allow-list of {n}")?,
            None => write!(f, "; exec unrestricted")?,
        }
        match self.file_exceptions {
            0 => write!(f, "; files no exceptions")?,
            n => write!(f, "; files {n} exception(s)")?,
        }
        match self.unix_allow {
            Some(n) => write!(f, "; unix allow-list of {n}"),
            None => write!(f, "; unix host default-deny"),
        }
    }
}

/// The identity's standing reach, one line.
pub fn standing(i: &Identity) -> String {
    Standing::of(i).to_string()
}

/// A grantable target, structured; its `Display` is `db (auto, max 1h): egress 10.9.9.9/32
/// 5432/tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantableTarget {
    pub name: String,
    /// `auto` or `console`.
    pub approval: String,
    /// The target's own cap; absent: the host's (`[grants] max_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Paths, and abstract names as `@name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unix: Vec<String>,
}

impl GrantableTarget {
    pub fn of(g: &Grantable) -> GrantableTarget {
        GrantableTarget {
            name: g.name.clone(),
            approval: g.approval.as_str().to_owned(),
            max_ttl_seconds: g.max_ttl.map(|d| d.as_secs()),
            egress: egress(&g.egress),
            exec: g.exec.iter().map(|e| e.glob.to_string()).collect(),
            files: g.files.iter().map(ToString::to_string).collect(),
            unix: g
                .unix
                .paths
                .iter()
                .map(ToString::to_string)
                .chain(g.unix.abstract_names.iter().map(|n| format!("@{}", String::from_utf8_lossy(n))))
                .collect(),
        }
    }
}

impl fmt::Display for GrantableTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.egress.is_empty() {
            parts.push(EgressText(&self.egress).to_string());
        }
        for (what, items) in [("exec", &self.exec), ("files", &self.files), ("unix", &self.unix)] {
            if !items.is_empty() {
                parts.push(format!("{what} {}", items.join(", ")));
            }
        }
        let max = self
            .max_ttl_seconds
            .map_or("the host's cap".to_owned(), |s| crate::duration::show(std::time::Duration::from_secs(s)));
        write!(f, "{} ({}, max {max}): {}", self.name, self.approval, parts.join("; "))
    }
}

/// A grantable target, one line.
pub fn grantable(g: &Grantable) -> String {
    GrantableTarget::of(g).to_string()
}

/// `egress 10.0.0.0/8 443/tcp, api.example.com 443/tcp`, or `egress none`.
struct EgressText<'a>(&'a [String]);

impl fmt::Display for EgressText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("egress none") } else { write!(f, "egress {}", self.0.join(", ")) }
    }
}

/// One `TO... PORTS` entry per egress rule (`10.0.0.0/8 443/tcp`).
fn egress(rules: &[EgressRule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let to: Vec<String> =
                r.nets.iter().map(ToString::to_string).chain(r.names.iter().map(ToString::to_string)).collect();
            let own: Vec<_> = r.ports.iter().map(|p| (p.lo, p.hi, r.protocols, 0)).collect();
            format!("{} {}", to.join(" "), port_rules_text(&Ports::of(None, &own).rules()))
        })
        .collect()
}
