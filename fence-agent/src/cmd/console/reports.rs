//! `fence-agent report --hosts`: the compliance report of every host, as its agent published it
//! to the vault (`status/<host>/report`), with a fleet table of each control's status per host.

use std::process::ExitCode;

use jiff::Timestamp;

use super::{VaultArgs, runtime, vault_config};
use crate::{
    report::{Report, Status, controls::CONTROLS, render},
    vault::{
        client::VaultClient,
        layout::{REPORT, STATUS_DIR},
        report::REPORT_EVERY,
    },
};

/// How the reports are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

/// A host whose published report cannot be read, and why.
struct Unreadable {
    host: String,
    why: String,
}

pub fn reports(args: &VaultArgs, format: Format) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(args)?;
    let client = VaultClient::new(&cfg)?;
    let (reports, unreadable) = runtime()?.block_on(async {
        client.login().await?;
        let mut reports = Vec::new();
        let mut unreadable = Vec::new();
        // `status/` lists each host's status (`host`) and, once it published a report, its
        // folder (`host/`): every host with either is listed, a missing report as such.
        let names = client.kv_list(STATUS_DIR).await?;
        let mut hosts: Vec<&str> = names.iter().map(|n| n.strip_suffix('/').unwrap_or(n)).collect();
        hosts.sort_unstable();
        hosts.dedup();
        for host in hosts {
            let mut bad = |why: String| unreadable.push(Unreadable { host: host.to_owned(), why });
            match client.kv_read(&format!("{STATUS_DIR}/{host}/{REPORT}"), None).await {
                Ok(None) => bad(format!(
                    "no report published (an agent older than this one, or its ACL lacks {STATUS_DIR}/<host>/{REPORT})"
                )),
                Err(e) => bad(format!("cannot be read: {e}")),
                Ok(Some(doc)) => match serde_json::from_value::<Report>(doc.data).map_err(|e| e.to_string()) {
                    Ok(r) if r.host != host => bad("the report names another host".into()),
                    Ok(r) => match r.checked() {
                        Ok(r) => reports.push(r),
                        Err(why) => bad(format!("not a report: {why}")),
                    },
                    Err(e) => bad(format!("not a report: {e}")),
                },
            }
        }
        anyhow::Ok((reports, unreadable))
    })?;
    for u in &unreadable {
        eprintln!(
            "fence-agent report --hosts: {}: {}",
            crate::names::printable(&u.host),
            crate::names::printable(&u.why)
        );
    }
    let now = Timestamp::now();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Markdown => print!("{}", fleet_markdown(&reports, &unreadable, now)),
        Format::Text => print!("{}", fleet_text(&reports, now)),
    }
    Ok(if !unreadable.is_empty() {
        ExitCode::from(2)
    } else if reports.iter().any(|r| r.status == Status::NotMet || stale(r, now)) {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether the agent has not rewritten its report for two periods (stopped, or cut off from
/// the vault): it is no evidence of now.
fn stale(r: &Report, now: Timestamp) -> bool {
    r.generated
        .parse::<Timestamp>()
        .ok()
        .and_then(|t| now.duration_since(t).try_into().ok())
        .is_none_or(|d: std::time::Duration| d > 2 * REPORT_EVERY)
}

/// `generated`, marked when stale.
fn age(r: &Report, now: Timestamp) -> String {
    let generated = crate::names::printable(&r.generated);
    if stale(r, now) { format!("{generated} (STALE)") } else { generated }
}

fn fleet_markdown(reports: &[Report], unreadable: &[Unreadable], now: Timestamp) -> String {
    let mut out = format!("# fence compliance report: {} host(s)\n\n", reports.len());
    let controls: Vec<&str> = CONTROLS.iter().map(|c| c.0).collect();
    let mut head = vec!["Host", "Generated", "Overall"];
    head.extend(&controls);
    let mut rows = Vec::new();
    for r in reports {
        let mut row = vec![r.host.clone(), age(r, now), r.status.as_str().to_owned()];
        row.extend(controls.iter().map(|c| {
            r.controls.iter().find(|s| s.control == *c).map_or("-".to_owned(), |s| s.status.as_str().to_owned())
        }));
        rows.push(row);
    }
    for u in unreadable {
        let mut row = vec![u.host.clone(), "-".into(), format!("unreadable: {}", u.why)];
        row.extend(controls.iter().map(|_| "-".to_owned()));
        rows.push(row);
    }
    out.push_str(&render::table(&head, &rows));
    for r in reports {
        // Each host's report one heading level down.
        let own = render::markdown(r);
        out.push('\n');
        for line in own.lines() {
            if line.starts_with('#') {
                out.push('#');
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn fleet_text(reports: &[Report], now: Timestamp) -> String {
    let mut out = String::new();
    for r in reports {
        let controls: Vec<String> = r.controls.iter().map(|c| format!("{}={}", c.control, c.status.as_str())).collect();
        out.push_str(&format!(
            "{}  {}  overall={}  {}\n",
            crate::names::printable(&r.host),
            age(r, now),
            r.status.as_str(),
            controls.join("  ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{build, tests::inputs};

    #[test]
    fn the_fleet_table_has_a_row_per_host_and_marks_stale_and_unreadable_ones() {
        let mut a = build(inputs());
        a.generated = "2026-11-30T10:00:00Z".into();
        let mut b = a.clone();
        b.host = "host-b".into();
        b.generated = "2026-11-30T06:00:00Z".into();
        let bad = [Unreadable { host: "host-c".into(), why: "not a report: missing field `controls`".into() }];
        let now: Timestamp = "2026-11-30T10:30:00Z".parse().unwrap();
        let md = fleet_markdown(&[a, b], &bad, now);
        assert!(md.starts_with("# fence compliance report: 2 host(s)\n"), "{md}");
        assert!(
            md.contains(
                "| Host | Generated | Overall | AC-6 | IA-5 | SC-7 | ISO 5.15 | ISO 5.16 | CC6.1 | GDPR 5(1)(c) |"
            ),
            "{md}"
        );
        assert!(md.contains("| host-a | 2026-11-30T10:00:00Z | not met | not met |"), "{md}");
        assert!(md.contains("| host-b | 2026-11-30T06:00:00Z (STALE) | not met |"), "{md}");
        assert!(md.contains("| host-c | - | unreadable: not a report: missing field `controls` | - |"), "{md}");
        // Each host's own report, one heading level down.
        assert!(md.contains("\n## fence compliance report: host-b\n"), "{md}");
        assert!(md.contains("\n### AC-6 Least privilege"), "{md}");
        let text = fleet_text(&[build(inputs())], now);
        assert!(text.contains("host-a  2026-11-30T00:00:00Z (STALE)  overall=not met  AC-6=not met"), "{text}");
    }
}
