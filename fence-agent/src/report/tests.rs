use serde_json::{Value, json};

use super::*;
use crate::{
    cmd::logs::fixtures,
    control::protocol::{Handled, PolicyStatus, Source},
    grants::reach::Standing,
    policy::Mode,
};

fn lines(values: &[Value]) -> Vec<Vec<u8>> {
    values.iter().map(|v| v.to_string().into_bytes()).collect()
}

fn grant_line(action: &str, at: &str, extra: Value) -> Value {
    let mut grant = json!({"id": "g-1", "target": "db", "reason": "migration", "ttl": "2s", "ttl_seconds": 2,
        "approval": "auto", "state": action, "requester": {"pid": 1, "uid": 0}});
    grant.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"@timestamp": at, "message": "m", "event": {"action": format!("grant-{action}")},
        "fence": {"schema_version": 1, "identity": "granted", "grant": grant}})
}

fn evidence() -> LogEvidence {
    let mut logs = LogEvidence::default();
    for raw in
        lines(&[fixtures::denied_connect(), fixtures::would_deny_exec(), fixtures::suppressed(), fixtures::dropped()])
    {
        logs.event_line(&raw, None);
    }
    logs.event_line(b"not json", None);
    let audit = [
        grant_line("requested", "2026-11-25T17:00:00Z", json!({})),
        grant_line("active", "2026-11-25T17:00:00Z", json!({"approver": "auto", "expires": "x"})),
        grant_line("expired", "2026-11-25T17:00:02Z", json!({"uses": 3})),
        json!({"@timestamp": "2026-11-25T17:01:00Z", "event": {"action": "secret-issued"},
            "fence": {"identity": "granted", "secret": {"name": "db-creds", "kind": "dynamic", "ttl_seconds": 60}}}),
        json!({"@timestamp": "2026-11-25T17:01:05Z", "event": {"action": "secret-issued"},
            "fence": {"identity": "granted", "secret": {"name": "db-creds", "kind": "dynamic", "ttl_seconds": 90}}}),
        json!({"@timestamp": "2026-11-25T17:02:00Z", "event": {"action": "secret-refused"},
            "fence": {"identity": "", "secret": {"name": "x", "kind": ""}}}),
    ];
    for raw in lines(&audit) {
        logs.audit_line(&raw, None);
    }
    logs
}

#[test]
fn the_logs_give_denials_by_kind_grant_lives_and_secrets() {
    let logs = evidence();
    let ci = &logs.denials["ci-runner"]["connect"];
    assert_eq!((ci.denied, ci.would_deny), (1 + 1234, 0), "events and the suppressed ones count");
    assert_eq!(logs.denials["model-runner"]["exec"].would_deny, 1);
    assert_eq!(logs.dropped, 5);
    assert_eq!(logs.unreadable, 1);
    assert_eq!(logs.oldest.as_deref(), Some("2026-11-25T17:00:00Z"));
    let g = &logs.grants[0];
    assert_eq!(logs.grants.len(), 1);
    assert_eq!((g.state.as_str(), g.uses, g.approver.as_deref()), ("expired", Some(3), Some("auto")));
    assert_eq!(g.active.as_deref(), Some("2026-11-25T17:00:00Z"));
    assert_eq!(g.ended.as_deref(), Some("2026-11-25T17:00:02Z"));
    let s = &logs.secrets["granted"][0];
    assert_eq!((s.name.as_str(), s.issued, s.max_ttl_seconds), ("db-creds", 2, Some(90)));
    assert_eq!(logs.secrets_refused, 1);

    // The period leaves out what came before it.
    let mut recent = LogEvidence::default();
    let since = "2026-11-25T17:20:30Z".parse().unwrap();
    for raw in lines(&[fixtures::denied_connect(), fixtures::would_deny_exec(), fixtures::suppressed()]) {
        recent.event_line(&raw, Some(since));
    }
    assert!(!recent.denials.contains_key("model-runner"), "{recent:?}");
    assert_eq!(recent.denials["ci-runner"]["connect"].denied, 1234);
}

fn identity(name: &str, mode: Mode, expires: Option<&str>, expired: bool) -> IdentityStatus {
    IdentityStatus {
        name: name.into(),
        owner: "platform".into(),
        purpose: "tests".into(),
        mode,
        policy_version: "sha256:ab".into(),
        created: Some("2026-11-01T00:00:00Z".into()),
        expires: expires.map(Into::into),
        expired,
        selectors: vec![],
        processes: 1,
        egress_rules: 1,
        standing: Standing {
            egress: vec!["127.0.0.1/32 443/tcp".into()],
            exec_allow: Some(2),
            file_exceptions: 0,
            unix_allow: None,
        },
        grantable: vec![],
        granted: vec![],
        exec_programs: Some(2),
    }
}

fn fence(name: &str, enforced: bool) -> FenceState {
    FenceState {
        fence: name.into(),
        enforced,
        mechanism: if enforced { "lsm".into() } else { "unavailable".into() },
        notes: if enforced { String::new() } else { "BPF LSM is not active".into() },
        remedy: (!enforced).then(|| "boot with lsm=...,bpf".into()),
    }
}

pub(crate) fn inputs() -> Inputs {
    let identities = vec![
        identity("ci-runner", Mode::Enforce, None, false),
        identity("granted", Mode::Enforce, Some("2027-01-01T00:00:00Z"), false),
        identity("model-runner", Mode::Audit, Some("2027-01-01T00:00:00Z"), false),
        identity("old", Mode::Enforce, Some("2026-01-01T00:00:00Z"), true),
    ];
    let fences = ["egress", "dns", "exec", "credential-files", "grants", "secrets", "no-way-out", "host-settings"]
        .iter()
        .map(|f| fence(f, true))
        .chain([fence("unix-sockets", false), fence("unit-restarts", true)])
        .collect();
    Inputs {
        host: "host-a".into(),
        generated: "2026-11-30T00:00:00Z".into(),
        since: None,
        status: StatusReply {
            source: Source::Local,
            sequence: Some(3),
            handled: Handled::default(),
            policy: identities
                .iter()
                .map(|i| PolicyStatus {
                    identity: i.name.clone(),
                    version: i.policy_version.clone(),
                    mode: i.mode,
                    expired: i.expired,
                })
                .collect(),
            vault: None,
            fences,
        },
        identities,
        logs: evidence(),
        event_file: true,
        retention: (1000, 3),
        integrity: vec![
            LogIntegrity {
                log: "events".into(),
                files: 2,
                lines: 10,
                signed_checkpoints: 1,
                unsigned_tail: 2,
                intact: Some(true),
                problem: None,
            },
            LogIntegrity {
                log: "audit".into(),
                files: 1,
                lines: 5,
                signed_checkpoints: 1,
                unsigned_tail: 0,
                intact: Some(false),
                problem: Some("audit.jsonl line 3: does not link to the line before it".into()),
            },
        ],
        env_unreadable: 0,
        env: Ok(vec![EnvCredentials {
            identity: "ci-runner".into(),
            variables: vec!["GITHUB_TOKEN (known-name) in pid 9 (sh)".into()],
        }]),
    }
}

fn status_of(r: &Report, control: &str, subject: &str) -> (Status, String) {
    let section = r.controls.iter().find(|s| s.control == control).unwrap_or_else(|| panic!("no {control}"));
    let f = section
        .findings
        .iter()
        .find(|f| f.subject == subject)
        .unwrap_or_else(|| panic!("no finding on {subject} in {control}: {:#?}", section.findings));
    (f.status, f.reason.clone())
}

#[test]
fn each_piece_of_evidence_is_a_finding_with_its_status() {
    let r = build(inputs());
    let check = |control: &str, subject: &str, want: Status, says: &str| {
        let (status, reason) = status_of(&r, control, subject);
        assert_eq!(status, want, "{control} {subject}: {reason}");
        assert!(reason.contains(says), "{control} {subject}: {reason:?} does not say {says:?}");
    };
    check("ISO 5.16", "identity ci-runner", Status::Partial, "no expiry");
    check("ISO 5.16", "identity granted", Status::Met, "expires 2027-01-01");
    check("ISO 5.16", "identity old", Status::NotMet, "past its expiry");
    check("AC-6", "identity ci-runner", Status::Met, "1235 operation(s) denied");
    check("AC-6", "identity model-runner", Status::Partial, "audit mode");
    check("AC-6", "identity model-runner", Status::Partial, "exec 1");
    check("AC-6", "grant g-1", Status::Met, "ended by the kernel on time; 3 use(s)");
    check("AC-6", "fence unix-sockets", Status::NotMet, "fix: boot with");
    check("SC-7", "identity ci-runner", Status::Met, "connect 1235");
    check("SC-7", "fence egress", Status::Met, "enforced");
    check("IA-5", "identity ci-runner", Status::NotMet, "GITHUB_TOKEN");
    check("IA-5", "identity granted", Status::Met, "no credential-looking");
    check("IA-5", "secrets for identity granted", Status::Met, "db-creds (dynamic, 2 time(s), leases up to 90s)");
    check("ISO 5.15", "policy", Status::Partial, "not signed");
    check("ISO 5.15", "identity granted", Status::Met, "owner platform");
    check("CC6.1", "log events", Status::Met, "intact");
    check("CC6.1", "log audit", Status::NotMet, "line 3");
    check("CC6.1", "fences", Status::Partial, "unix-sockets");
    check("GDPR 5(1)(c)", "event retention", Status::Met, "at most 4000 bytes");
    assert_eq!(r.status, Status::NotMet);
    let section = |c: &str| r.controls.iter().find(|s| s.control == c).unwrap().status;
    assert_eq!(section("ISO 5.15"), Status::Partial);
    assert_eq!(section("GDPR 5(1)(c)"), Status::Met);
    // Every fence is reported under exactly one control.
    for f in &r.evidence.fences {
        let n =
            r.controls.iter().filter(|s| s.findings.iter().any(|x| x.subject == format!("fence {}", f.fence))).count();
        assert_eq!(n, 1, "fence {}", f.fence);
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["controls"][0]["findings"][0]["status"], "met");
    assert_eq!(json["status"], "not-met");
}

#[test]
fn a_signed_vault_policy_meets_access_control_and_a_failing_sync_does_not() {
    let mut i = inputs();
    let mut v = crate::vault::agent::SyncStatus {
        hostname: "host-a".into(),
        source: Source::Vault,
        vault: None,
        signatures: "verified (keys 1a2b)".into(),
        applied: Default::default(),
        rules: vec![],
        index_version: None,
        last_poll: None,
        last_success: None,
        last_applied: None,
        last_error: None,
        consecutive_failures: 0,
        refusing: false,
        token_expires_in_seconds: None,
    };
    i.status.source = Source::Vault;
    i.status.vault = Some(v.clone());
    let r = build(i.clone());
    assert_eq!(status_of(&r, "ISO 5.15", "policy").0, Status::Met);
    v.consecutive_failures = 2;
    v.last_error = Some("connection refused".into());
    i.status.vault = Some(v);
    let r = build(i);
    let (status, reason) = status_of(&r, "ISO 5.15", "vault sync");
    assert_eq!(status, Status::Partial);
    assert!(reason.contains("connection refused"), "{reason}");
}

#[test]
fn markdown_is_tables_with_cells_that_cannot_break_them() {
    let mut i = inputs();
    i.identities[0].purpose = "pipes | and\nlines \u{1b}[31m".into();
    let md = render::markdown(&build(i));
    assert!(md.starts_with("# fence compliance report: host-a\n"), "{md}");
    assert!(md.contains("| Control | Framework | Title | Status |\n| --- | --- | --- | --- |\n"), "{md}");
    assert!(md.contains("\n## AC-6 Least privilege (NIST SP 800-53 Rev. 5): not met\n"), "{md}");
    assert!(md.contains("| not met | identity old | created 2026-11-01T00:00:00Z; past its expiry"), "{md}");
    assert!(md.contains("pipes \\| and?lines ?[31m"), "{md}");
    assert!(!md.contains('\u{1b}'));
    // Every table row has as many cells as its header.
    let all: Vec<&str> = md.lines().collect();
    let mut width = 0;
    for (n, line) in all.iter().enumerate() {
        let cells = line.replace("\\|", "").matches(" |").count();
        if all.get(n + 1).is_some_and(|next| next.starts_with("| ---")) {
            width = cells;
        } else if line.starts_with("| ") {
            assert_eq!(cells, width, "{line}");
        }
    }
    let text = render::text(&build(inputs()));
    assert!(text.contains("overall: NOT MET"), "{text}");
    assert!(text.contains("  NOT MET  identity old: "), "{text}");
}

#[test]
fn a_published_report_reads_back_as_it_was() {
    let r = build(inputs());
    let json = serde_json::to_value(&r).unwrap();
    let back: Report = serde_json::from_value(json.clone()).expect("a report reads back");
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
}

#[test]
fn an_event_file_of_ocsf_lines_only_is_said_not_counted() {
    let mut i = inputs();
    let mut logs = LogEvidence::default();
    let record: crate::events::record::Record = serde_json::from_value(fixtures::denied_connect()).unwrap();
    let ocsf = serde_json::to_string(&crate::events::ocsf::event(&record).unwrap()).unwrap();
    logs.event_line(ocsf.as_bytes(), None);
    assert_eq!((logs.ocsf_lines, logs.event_lines, logs.unreadable), (1, 0, 0));
    i.logs = logs;
    let r = build(i);
    let (status, reason) = status_of(&r, "CC6.1", "event file");
    assert_eq!(status, Status::Partial);
    assert!(reason.contains("file_format"), "{reason}");
}

#[test]
fn wide_egress_and_fallback_fences_are_partial() {
    let mut i = inputs();
    i.identities[1].standing.egress = vec!["10.0.0.0/8 0.0.0.0/0 443/tcp".into()];
    i.status.fences[0].remedy = Some("boot with BPF LSM".into());
    let r = build(i);
    let (status, reason) = status_of(&r, "AC-6", "identity granted");
    assert_eq!(status, Status::Partial, "{reason}");
    assert!(reason.contains("egress to any address"), "{reason}");
    assert_eq!(status_of(&r, "SC-7", "identity granted").0, Status::Partial);
    assert_eq!(status_of(&r, "SC-7", "identity ci-runner").0, Status::Met, "a /32 is not wide");
    let (status, reason) = status_of(&r, "SC-7", "fence egress");
    assert_eq!(status, Status::Partial);
    assert!(reason.contains("fallback") && reason.contains("fix: boot with BPF LSM"), "{reason}");
}

#[test]
fn a_report_from_elsewhere_is_checked_and_its_statuses_worked_out_again() {
    let good = build(inputs());
    // Forged statuses and headings give way to what the findings and this program say.
    let mut forged = good.clone();
    forged.status = Status::Met;
    forged.controls[0].status = Status::Met;
    forged.controls[0].title = "Least privilege\n\n## IA-5 all fine".into();
    let checked = forged.checked().unwrap();
    assert_eq!(checked.status, Status::NotMet);
    assert_eq!(checked.controls[0].status, good.controls[0].status);
    assert_eq!(checked.controls[0].title, "Least privilege");
    let mut unknown = good.clone();
    unknown.controls[2].control = "XX-1".into();
    assert!(unknown.checked().unwrap_err().contains("XX-1"));
    let mut short = good;
    short.controls.pop();
    assert!(short.checked().is_err());
}
