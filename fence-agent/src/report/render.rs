//! The report as text for a terminal and as Markdown (tables) for an auditor's file. Every
//! string the agent or a policy wrote passes through [`crate::names::printable`]: no terminal
//! escapes; Markdown cells have their `|` escaped and no line breaks.

use std::fmt::Write as _;

use super::{Report, Status};

fn clean(text: &str) -> String {
    crate::names::printable(text)
}

/// One Markdown table cell.
fn cell(text: &str) -> String {
    clean(text).replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
}

fn header(out: &mut String, names: &[&str]) {
    let _ = writeln!(out, "| {} |", names.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(names.len()));
}

/// A Markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    header(&mut out, head);
    for r in rows {
        row(&mut out, r);
    }
    out
}

fn period(r: &Report) -> String {
    match (&r.since, &r.evidence.logs.oldest) {
        (Some(s), _) => format!("since {s}"),
        (None, Some(o)) => format!("all the logs hold (since {o})"),
        (None, None) => "all the logs hold (nothing yet)".into(),
    }
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# fence compliance report: {}\n", cell(&r.host));
    let _ = writeln!(
        out,
        "Generated {} from the running agent's state and logs; period: {}. Overall: **{}**.\n",
        cell(&r.generated),
        cell(&period(r)),
        r.status.as_str()
    );
    header(&mut out, &["Control", "Framework", "Title", "Status"]);
    for s in &r.controls {
        row(&mut out, &[s.control.clone(), s.framework.clone(), s.title.clone(), s.status.as_str().into()]);
    }
    for s in &r.controls {
        let _ = writeln!(out, "\n## {} {} ({}): {}\n", s.control, s.title, s.framework, s.status.as_str());
        let _ = writeln!(out, "What fence enforces: {}\n", s.enforces);
        header(&mut out, &["Status", "Subject", "Finding"]);
        for f in &s.findings {
            row(&mut out, &[f.status.as_str().into(), f.subject.clone(), f.reason.clone()]);
        }
    }
    let e = &r.evidence;
    let _ = writeln!(out, "\n## Identities\n");
    header(
        &mut out,
        &["Identity", "Owner", "Purpose", "Mode", "Created", "Expires", "Standing", "Denied", "Would-deny"],
    );
    for i in &e.identities {
        let t = e.logs.totals(&i.name);
        let mode = if i.expired { "expired (deny-all)".to_owned() } else { i.mode.to_string() };
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        row(
            &mut out,
            &[
                i.name.clone(),
                i.owner.clone(),
                i.purpose.clone(),
                mode,
                dash(&i.created),
                dash(&i.expires),
                i.standing.to_string(),
                t.denied.to_string(),
                t.would_deny.to_string(),
            ],
        );
    }
    let _ = writeln!(out, "\n## Fences on this host\n");
    header(&mut out, &["Fence", "Enforced", "Mechanism"]);
    for f in &e.fences {
        let mechanism = if f.enforced { f.mechanism.clone() } else { f.notes.clone() };
        row(&mut out, &[f.fence.clone(), if f.enforced { "yes" } else { "NO" }.into(), mechanism]);
    }
    let _ = writeln!(out, "\n## Log integrity\n");
    header(&mut out, &["Log", "Files", "Lines", "Signed checkpoints", "Intact", "Problem"]);
    for l in &e.integrity {
        row(
            &mut out,
            &[
                l.log.clone(),
                l.files.to_string(),
                l.lines.to_string(),
                l.signed_checkpoints.to_string(),
                match l.intact {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "not checked",
                }
                .into(),
                l.problem.clone().unwrap_or_else(|| "-".into()),
            ],
        );
    }
    out
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fence report for {}   generated {}   period: {}   overall: {}",
        clean(&r.host),
        r.generated,
        clean(&period(r)),
        r.status.as_str().to_uppercase()
    );
    for s in &r.controls {
        let _ = writeln!(out, "\n{} {} ({}): {}", s.control, s.title, s.framework, s.status.as_str().to_uppercase());
        for f in &s.findings {
            let mark = match f.status {
                Status::Met => "met     ",
                Status::Partial => "PARTIAL ",
                Status::NotMet => "NOT MET ",
            };
            let _ = writeln!(out, "  {mark} {}: {}", clean(&f.subject), clean(&f.reason));
        }
    }
    out
}
