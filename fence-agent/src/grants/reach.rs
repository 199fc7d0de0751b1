//! One line per reach, for reviewers: what an identity holds standing, and what it may be
//! granted (`policy check`, `fence-agent identities`), so that standing privilege is visible.

use std::fmt::Write as _;

use crate::{
    kernel::port_rules_text,
    policy::{EgressRule, Grantable, Identity, net::Ports},
};

/// The identity's standing reach: `egress 10.0.0.0/8 443/tcp; exec allow-list of 3; files
/// 1 exception; unix host default-deny`.
pub fn standing(i: &Identity) -> String {
    let mut out = egress(&i.egress);
    let _ = write!(
        out,
        "; exec {}; files {}; unix {}",
        i.exec.as_ref().map_or("unrestricted".to_owned(), |e| format!("allow-list of {}", e.allow.len())),
        match i.file_exceptions.len() {
            0 => "no exceptions".to_owned(),
            n => format!("{n} exception(s)"),
        },
        i.unix.as_ref().map_or("host default-deny".to_owned(), |u| format!(
            "allow-list of {}",
            u.paths.len() + u.abstract_names.len()
        )),
    );
    out
}

/// A grantable target: `db (auto, max 1h): egress 10.9.9.9/32 5432/tcp`.
pub fn grantable(g: &Grantable) -> String {
    let mut parts = Vec::new();
    if !g.egress.is_empty() {
        parts.push(egress(&g.egress));
    }
    if !g.exec.is_empty() {
        parts.push(format!("exec {}", g.exec.iter().map(|e| e.glob.to_string()).collect::<Vec<_>>().join(", ")));
    }
    if !g.files.is_empty() {
        parts.push(format!("files {}", g.files.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")));
    }
    let unix: Vec<String> = g
        .unix
        .paths
        .iter()
        .map(ToString::to_string)
        .chain(g.unix.abstract_names.iter().map(|n| format!("@{}", String::from_utf8_lossy(n))))
        .collect();
    if !unix.is_empty() {
        parts.push(format!("unix {}", unix.join(", ")));
    }
    let max = g.max_ttl.map_or("the host's cap".to_owned(), crate::duration::show);
    format!("{} ({}, max {max}): {}", g.name, g.approval.as_str(), parts.join("; "))
}

/// `egress 10.0.0.0/8 443/tcp, api.example.com 443/tcp`, or `egress none`.
fn egress(rules: &[EgressRule]) -> String {
    if rules.is_empty() {
        return "egress none".to_owned();
    }
    let items: Vec<String> = rules
        .iter()
        .map(|r| {
            let to: Vec<String> =
                r.nets.iter().map(ToString::to_string).chain(r.names.iter().map(ToString::to_string)).collect();
            let own: Vec<_> = r.ports.iter().map(|p| (p.lo, p.hi, r.protocols, 0)).collect();
            format!("{} {}", to.join(" "), port_rules_text(&Ports::of(None, &own).rules()))
        })
        .collect();
    format!("egress {}", items.join(", "))
}
