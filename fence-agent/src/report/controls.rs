//! The rules: which evidence meets which control, and how far.

use std::collections::BTreeMap;

use super::{Finding, Inputs, Section, Status, evidence::Counts};
use crate::{
    control::protocol::{IdentityStatus, Source},
    policy::Mode,
};

/// The controls, in the order they are reported, with the fences whose mechanism row belongs
/// to each (every fence belongs to one).
pub const CONTROLS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "AC-6",
        "NIST SP 800-53 Rev. 5",
        "Least privilege",
        "per identity, in the kernel: egress, programs, credential files and unix sockets its policy allows, \
         everything else denied; just-in-time grants the kernel ends on time instead of standing access",
        &["exec", "unix-sockets", "grants"],
    ),
    (
        "IA-5",
        "NIST SP 800-53 Rev. 5",
        "Authenticator management",
        "workloads get secrets from the broker, attested by the kernel, for their own identity and for a lease; \
         credential files are protected from fenced identities; credentials in environments are found",
        &["credential-files", "secrets"],
    ),
    (
        "SC-7",
        "NIST SP 800-53 Rev. 5",
        "Boundary protection",
        "egress allow-lists per identity (TCP/UDP, IPv4/IPv6, by address or DNS name), DNS steered to the agent, \
         other sockets refused",
        &["egress", "dns"],
    ),
    (
        "ISO 5.15",
        "ISO/IEC 27001:2022 Annex A",
        "Access control",
        "every identity has an owner and a purpose, its policy is versioned (sha256), every change is audited, \
         and with a vault the policy is signed",
        &[],
    ),
    (
        "ISO 5.16",
        "ISO/IEC 27001:2022 Annex A",
        "Identity management",
        "identities are created, changed and removed through policy only, and expire (deny-all from `expires`)",
        &[],
    ),
    (
        "CC6.1",
        "SOC 2 (2017 TSC)",
        "Logical access security",
        "all of the above enforced at the kernel per identity, the agent's own tampering refused, and its logs \
         linked by hash and signed",
        &["no-way-out", "host-settings", "unit-restarts"],
    ),
    (
        "GDPR 5(1)(c)",
        "GDPR",
        "Data minimisation",
        "events and audit lines carry who, what and why: never payloads, secret values or environment values; \
         the event file is kept within a bound",
        &[],
    ),
];

/// Every control's section for `inputs`.
pub fn assess(inputs: &Inputs) -> Vec<Section> {
    CONTROLS
        .iter()
        .map(|&(control, framework, title, enforces, fences)| {
            let mut findings = fence_findings(inputs, fences);
            findings.extend(match control {
                "AC-6" => least_privilege(inputs),
                "IA-5" => authenticators(inputs),
                "SC-7" => boundary(inputs),
                "ISO 5.15" => access_control(inputs),
                "ISO 5.16" => identity_management(inputs),
                "CC6.1" => logical_access(inputs),
                _ => minimisation(inputs),
            });
            let status = findings.iter().map(|f| f.status).max().unwrap_or(Status::Met);
            Section {
                control: control.into(),
                framework: framework.into(),
                title: title.into(),
                enforces: enforces.into(),
                status,
                findings,
            }
        })
        .collect()
}

fn finding(status: Status, subject: impl Into<String>, reason: impl Into<String>) -> Finding {
    Finding { status, subject: subject.into(), reason: reason.into() }
}

fn identity(i: &IdentityStatus) -> String {
    format!("identity {}", i.name)
}

/// Each listed fence's mechanism on this host, as the running agent loaded it.
fn fence_findings(inputs: &Inputs, fences: &[&str]) -> Vec<Finding> {
    let rows = &inputs.status.fences;
    fences
        .iter()
        .map(|&name| match rows.iter().find(|r| r.fence == name) {
            // A fallback (the doctor gives a fix): enforced, with the gaps its notes name.
            Some(r) if r.enforced && r.remedy.is_some() => finding(
                Status::Partial,
                format!("fence {name}"),
                format!(
                    "enforced by a fallback: {}; {}; fix: {}",
                    r.mechanism,
                    r.notes,
                    r.remedy.as_deref().unwrap_or_default()
                ),
            ),
            Some(r) if r.enforced => {
                finding(Status::Met, format!("fence {name}"), format!("enforced: {}", r.mechanism))
            }
            Some(r) => {
                let fix = r.remedy.as_ref().map(|x| format!("; fix: {x}")).unwrap_or_default();
                finding(Status::NotMet, format!("fence {name}"), format!("NOT enforced on this host: {}{fix}", r.notes))
            }
            None => {
                finding(Status::NotMet, format!("fence {name}"), "the agent reports no such fence (an older agent?)")
            }
        })
        .collect()
}

/// `connect 3, exec 1` for the kinds with a count of `which`.
fn kinds(inputs: &Inputs, name: &str, which: fn(&Counts) -> u64, only: Option<&[&str]>) -> (u64, String) {
    let empty = BTreeMap::new();
    let by_kind = inputs.logs.denials.get(name).unwrap_or(&empty);
    let listed: Vec<(String, u64)> = by_kind
        .iter()
        .filter(|(op, _)| only.is_none_or(|o| o.contains(&op.as_str())))
        .map(|(op, c)| (op.clone(), which(c)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total = listed.iter().map(|(_, n)| n).sum();
    let text = listed.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", ");
    (total, if text.is_empty() { "none".into() } else { text })
}

/// Whether a standing egress rule reaches any address: a /0 or /1 network among its
/// destinations (`10.0.0.0/8 0.0.0.0/0 443/tcp`).
fn wide_egress(i: &IdentityStatus) -> bool {
    i.standing.egress.iter().flat_map(|e| e.split_whitespace()).any(|t| {
        t.split_once('/').is_some_and(|(addr, len)| {
            addr.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 1)
        })
    })
}

fn denied(c: &Counts) -> u64 {
    c.denied
}

fn would_deny(c: &Counts) -> u64 {
    c.would_deny
}

fn period(inputs: &Inputs) -> String {
    match (&inputs.since, &inputs.logs.oldest) {
        (Some(s), _) => format!("since {s}"),
        (None, Some(o)) => format!("since {o} (the oldest line kept)"),
        (None, None) => "in the logs (empty)".into(),
    }
}

fn least_privilege(inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    for i in &inputs.identities {
        let grantable = if i.grantable.is_empty() {
            String::new()
        } else {
            let g: Vec<String> = i.grantable.iter().map(|g| format!("{} ({})", g.name, g.approval)).collect();
            format!("; grantable on request: {}", g.join(", "))
        };
        if i.expired {
            out.push(finding(Status::Met, identity(i), "past its expiry: the kernel denies it everything"));
            continue;
        }
        let (n, kinds_denied) = kinds(inputs, &i.name, denied, None);
        if i.mode == Mode::Audit {
            let (w, kinds_would) = kinds(inputs, &i.name, would_deny, None);
            out.push(finding(
                Status::Partial,
                identity(i),
                format!(
                    "audit mode: nothing is denied; {w} operation(s) would have been ({kinds_would}) {}; \
                     `fence-agent policy suggest --identity {}` writes the least-privilege policy to enforce",
                    period(inputs),
                    i.name
                ),
            ));
            continue;
        }
        let mut wide = Vec::new();
        if i.standing.exec_allow.is_none() {
            wide.push("exec unrestricted (any program may run)");
        }
        if wide_egress(i) {
            wide.push("egress to any address (a /0 or /1 rule)");
        }
        let status = if wide.is_empty() { Status::Met } else { Status::Partial };
        let wide = if wide.is_empty() { String::new() } else { format!("{}; ", wide.join("; ")) };
        out.push(finding(
            status,
            identity(i),
            format!(
                "{wide}enforce mode; standing: {}{grantable}; {n} operation(s) denied ({kinds_denied}) {}",
                i.standing,
                period(inputs)
            ),
        ));
    }
    for g in &inputs.logs.grants {
        let by = g.approver.as_ref().map(|a| format!(" by {a}")).unwrap_or_default();
        let uses = g.uses.map(|u| format!("; {u} use(s)")).unwrap_or_default();
        let life = match (g.state.as_str(), &g.active, &g.ended) {
            ("expired", Some(a), Some(e)) => format!("in force {a} to {e}, ended by the kernel on time"),
            ("expired", _, Some(e)) => format!("ended by the kernel on time at {e}"),
            ("revoked", _, Some(e)) => format!("revoked at {e}"),
            ("denied", _, Some(e)) => format!("request denied at {e}"),
            ("active", Some(a), _) => format!("in force since {a}"),
            ("approved", _, _) => "approved, not yet in force".to_owned(),
            _ => "requested, not approved".to_owned(),
        };
        out.push(finding(
            Status::Met,
            format!("grant {}", g.id),
            format!("{} for {}, {}s, approval {}{by}; {life}{uses}", g.target, g.identity, g.ttl_seconds, g.approval),
        ));
    }
    // Grants in force now that began before the period.
    for i in &inputs.identities {
        for g in i.granted.iter().filter(|g| !inputs.logs.grants.iter().any(|l| l.id == g.id)) {
            out.push(finding(
                Status::Met,
                format!("grant {}", g.id),
                format!(
                    "{} for {}, in force now (from before the period); the kernel ends it in {}s",
                    g.target, i.name, g.seconds_left
                ),
            ));
        }
    }
    out
}

fn authenticators(inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    match &inputs.env {
        Ok(found) => {
            for i in &inputs.identities {
                match found.iter().find(|f| f.identity == i.name) {
                    Some(f) => out.push(finding(
                        Status::NotMet,
                        identity(i),
                        format!(
                            "credential-looking environment variable(s), names only: {}; deliver them through \
                             the broker (`fence-agent secret`) instead",
                            f.variables.join("; ")
                        ),
                    )),
                    None if i.processes == 0 => out.push(finding(
                        Status::Met,
                        identity(i),
                        "no process running at the time of the report: no environment to hold credentials",
                    )),
                    None => out.push(finding(
                        Status::Met,
                        identity(i),
                        format!("no credential-looking environment variable in its {} process(es)", i.processes),
                    )),
                }
            }
        }
        Err(e) => out.push(finding(Status::Partial, "environment scan", format!("could not be made: {e}"))),
    }
    if inputs.env_unreadable > 0 {
        out.push(finding(
            Status::Partial,
            "environment scan",
            format!(
                "{} process(es) exited or could not be read during the scan; the scan is evidence of practice, \
                 not enforcement (a process can rewrite its own environment)",
                inputs.env_unreadable
            ),
        ));
    }
    for (who, secrets) in &inputs.logs.secrets {
        let list: Vec<String> = secrets
            .iter()
            .map(|s| {
                let ttl = s.max_ttl_seconds.map(|t| format!(", leases up to {t}s")).unwrap_or_default();
                format!("{} ({}, {} time(s){ttl})", s.name, s.kind, s.issued)
            })
            .collect();
        let whom = if who.is_empty() {
            "secrets for unfenced callers".to_owned()
        } else {
            format!("secrets for identity {who}")
        };
        out.push(finding(
            Status::Met,
            whom,
            format!("secrets delivered by the broker {}: {}", period(inputs), list.join(", ")),
        ));
    }
    if inputs.logs.secrets_refused > 0 {
        out.push(finding(
            Status::Met,
            "broker",
            format!("{} secret request(s) refused {}", inputs.logs.secrets_refused, period(inputs)),
        ));
    }
    out
}

fn boundary(inputs: &Inputs) -> Vec<Finding> {
    const NET: &[&str] = &["connect", "sendmsg", "socket", "packet", "dns-query"];
    inputs
        .identities
        .iter()
        .map(|i| {
            let egress = if i.standing.egress.is_empty() { "none".to_owned() } else { i.standing.egress.join(", ") };
            if i.expired {
                return finding(Status::Met, identity(i), "past its expiry: no egress at all");
            }
            if i.mode == Mode::Audit {
                let (w, k) = kinds(inputs, &i.name, would_deny, Some(NET));
                return finding(
                    Status::Partial,
                    identity(i),
                    format!(
                        "audit mode: egress is not limited; {w} would-deny {} ({k}); allowed: {egress}",
                        period(inputs)
                    ),
                );
            }
            let (n, k) = kinds(inputs, &i.name, denied, Some(NET));
            finding(
                if wide_egress(i) { Status::Partial } else { Status::Met },
                identity(i),
                format!("egress limited to: {egress}; {n} network operation(s) denied ({k}) {}", period(inputs)),
            )
        })
        .collect()
}

fn access_control(inputs: &Inputs) -> Vec<Finding> {
    let s = &inputs.status;
    let seq = s.sequence.map(|n| format!(", sequence {n}")).unwrap_or_default();
    let mut out = vec![match (s.source, &s.vault) {
        (Source::Vault, Some(v)) if v.signatures.starts_with("verified") => {
            finding(Status::Met, "policy", format!("from the vault{seq}; signatures {}", v.signatures))
        }
        (Source::Vault, Some(v)) => finding(
            Status::Partial,
            "policy",
            format!("from the vault{seq}, signatures {}: configure signing keys ([vault] signing_keys)", v.signatures),
        ),
        (Source::Cache, _) => finding(
            Status::Partial,
            "policy",
            format!("the last-known-good cache{seq}, applied at start: the vault has not answered since"),
        ),
        _ => finding(
            Status::Partial,
            "policy",
            format!(
                "local policy files{seq}: versioned (sha256) and every change in the audit log, but not signed; \
                 a vault with signing keys makes it signed"
            ),
        ),
    }];
    if let Some(v) = s.vault.as_ref().filter(|v| v.consecutive_failures > 0) {
        out.push(finding(
            Status::Partial,
            "vault sync",
            format!(
                "failing for {} poll(s): {}; the policy in force stays",
                v.consecutive_failures,
                v.last_error.as_deref().unwrap_or("-")
            ),
        ));
    }
    for i in &inputs.identities {
        out.push(finding(
            Status::Met,
            identity(i),
            format!("owner {}; purpose {}; policy version {}", i.owner, i.purpose, i.policy_version),
        ));
    }
    out
}

fn identity_management(inputs: &Inputs) -> Vec<Finding> {
    inputs
        .identities
        .iter()
        .map(|i| {
            let created = i.created.as_ref().map(|c| format!("created {c}; ")).unwrap_or_default();
            match (&i.expires, i.expired) {
                (Some(e), true) => finding(
                    Status::NotMet,
                    identity(i),
                    format!("{created}past its expiry ({e}): the kernel denies it everything; renew or remove it"),
                ),
                (Some(e), false) => finding(Status::Met, identity(i), format!("{created}expires {e}")),
                (None, _) => finding(
                    Status::Partial,
                    identity(i),
                    format!("{created}no expiry: nothing ends its access; set `expires` to force a review"),
                ),
            }
        })
        .collect()
}

fn logical_access(inputs: &Inputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let fences = &inputs.status.fences;
    let off: Vec<&str> = fences.iter().filter(|f| !f.enforced).map(|f| f.fence.as_str()).collect();
    out.push(if fences.is_empty() {
        finding(Status::NotMet, "fences", "the agent reports no fence")
    } else if off.is_empty() {
        finding(Status::Met, "fences", format!("all {} fences enforced on this host", fences.len()))
    } else {
        finding(
            Status::Partial,
            "fences",
            format!("{} of {} fences not enforced on this host: {}", off.len(), fences.len(), off.join(", ")),
        )
    });
    if !inputs.event_file {
        out.push(finding(
            Status::Partial,
            "event file",
            "no event file ([events] file): events go to stdout or the journal only, outside the signed chain",
        ));
    }
    for l in &inputs.integrity {
        let subject = format!("log {}", l.log);
        let problem = l.problem.as_deref().unwrap_or("-");
        out.push(match (l.intact, l.signed_checkpoints) {
            (Some(false), _) => finding(Status::NotMet, subject, format!("BROKEN: {problem}")),
            (None, _) => finding(Status::Partial, subject, format!("not checked: {problem}")),
            (Some(true), 0) => finding(
                Status::Partial,
                subject,
                format!("{} line(s) linked, no signed checkpoint yet (one comes at the interval or stop)", l.lines),
            ),
            (Some(true), n) => {
                let tail = match l.unsigned_tail {
                    0 => "every line is under a signed checkpoint".to_owned(),
                    t => format!("the newest {t} line(s) are linked and signed at the next checkpoint"),
                };
                finding(
                    Status::Met,
                    subject,
                    format!("intact: {} line(s) in {} file(s), {n} signed checkpoint(s); {tail}", l.lines, l.files),
                )
            }
        });
    }
    if inputs.logs.ocsf_lines > 0 && inputs.logs.event_lines == 0 {
        out.push(finding(
            Status::Partial,
            "event file",
            format!("denials not counted: {}", crate::cmd::logs::OCSF_ONLY),
        ));
    }
    if inputs.logs.dropped > 0 {
        out.push(finding(
            Status::Partial,
            "event delivery",
            format!(
                "{} event(s) lost before they were written {} (counted in events-dropped lines)",
                inputs.logs.dropped,
                period(inputs)
            ),
        ));
    }
    out
}

fn minimisation(inputs: &Inputs) -> Vec<Finding> {
    let mut out = vec![finding(
        Status::Met,
        "event content",
        "events and audit lines hold identities, processes, addresses, paths and policy versions; never \
         payloads, secret values or environment values (schema/event.schema.json, schema/audit.schema.json)",
    )];
    let (max_bytes, keep) = inputs.retention;
    if inputs.event_file {
        out.push(if max_bytes == 0 {
            finding(Status::Partial, "event retention", "the event file is never rotated: it grows without bound")
        } else {
            finding(
                Status::Met,
                "event retention",
                format!(
                    "at most {} bytes: the live file and {keep} rotated file(s) of {max_bytes} bytes; older \
                     events are removed",
                    max_bytes.saturating_mul(u64::from(keep) + 1)
                ),
            )
        });
    }
    out
}
