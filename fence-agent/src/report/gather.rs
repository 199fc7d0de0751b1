//! The [`Inputs`] of a report on this host, from the agent's answers (status, identities) and
//! its files: the event file and audit log (read for the period), the logs' check (as `logs
//! verify` makes it), the identities' processes' environments (names only). Used by
//! `fence-agent report` and by the agent when it publishes its report to the vault.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use thiserror::Error;

use super::{EnvCredentials, Inputs, LogEvidence, LogIntegrity};
use crate::{
    cmd::{
        identities::{env_findings, why_text},
        logs::verify::{check_set, configured_sets, public_key, rotated_set},
    },
    config::Config,
    control::protocol::{IdentityStatus, StatusReply},
};

#[derive(Debug, Error)]
pub enum GatherError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// The report's inputs on this host.
pub fn local(
    config: &Config,
    host: String,
    status: StatusReply,
    identities: Vec<IdentityStatus>,
    since: Option<Timestamp>,
) -> Result<Inputs, GatherError> {
    let logs = read_logs(config, since)?;
    let (env, env_unreadable) = env_scan(&identities);
    Ok(Inputs {
        host,
        generated: Timestamp::now().to_string(),
        since: since.map(|s| s.to_string()),
        env,
        env_unreadable,
        integrity: integrity(config),
        event_file: config.events.file.is_some(),
        retention: (config.events.max_bytes, config.events.keep),
        status,
        identities,
        logs,
    })
}

/// This host's name as the report gives it: the vault's name for it, else the kernel's.
pub fn host_name(status: &StatusReply) -> String {
    status
        .vault
        .as_ref()
        .map(|v| v.hostname.clone())
        .or_else(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_default()
}

/// Each non-empty line of `path` (without its newline), one at a time: a log of any size is
/// read in constant memory (the agent gathers its own report to publish it). A missing file
/// has no lines.
fn each_line(path: &Path, mut f: impl FnMut(&[u8])) -> Result<(), GatherError> {
    use std::io::BufRead as _;
    let err = |source| GatherError::Read { path: path.to_owned(), source };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(err)? == 0 {
            return Ok(());
        }
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        if !raw.is_empty() {
            f(raw);
        }
    }
}

/// The event file (with its rotated files) and the audit log, lines of the period counted.
fn read_logs(config: &Config, since: Option<Timestamp>) -> Result<LogEvidence, GatherError> {
    let mut logs = LogEvidence::default();
    if let Some(events) = &config.events.file {
        for file in rotated_set(events, config.events.keep) {
            each_line(&file, |raw| logs.event_line(raw, since))?;
        }
    }
    each_line(&config.audit.file, |raw| logs.audit_line(raw, since))?;
    Ok(logs)
}

/// Each configured log checked as `logs verify` checks it (against the agent's key, its kept
/// checkpoint and its record of the last line written).
fn integrity(config: &Config) -> Vec<LogIntegrity> {
    let key = public_key(config, None);
    configured_sets(config)
        .into_iter()
        .map(|(files, kind)| {
            let log = kind.map_or("log", |k| k.as_str()).to_owned();
            let count = files.iter().filter(|f| f.exists()).count();
            let unchecked = |problem: String| LogIntegrity {
                log: log.clone(),
                files: count,
                lines: 0,
                signed_checkpoints: 0,
                unsigned_tail: 0,
                intact: None,
                problem: Some(problem),
            };
            let key = match &key {
                Ok(k) => k,
                Err(e) => return unchecked(format!("{e:#}")),
            };
            match check_set(files, kind, true, None, &config.persist.state_dir, key) {
                Ok(c) => {
                    let r = c.report;
                    LogIntegrity {
                        log,
                        files: r.files.len(),
                        lines: r.lines,
                        signed_checkpoints: r.signed,
                        unsigned_tail: r.after_last_checkpoint,
                        intact: Some(r.intact()),
                        problem: r.findings.first().map(|f| match f.line {
                            0 => format!("{}: {}", f.file.display(), f.what),
                            n => format!("{} line {n}: {}", f.file.display(), f.what),
                        }),
                    }
                }
                Err(e) => unchecked(format!("{e:#}")),
            }
        })
        .collect()
}

/// Credential-looking variables of the identities' processes: names, why, where; and how many
/// processes could not be read.
fn env_scan(identities: &[IdentityStatus]) -> (Result<Vec<EnvCredentials>, String>, usize) {
    let (found, unreadable) = match env_findings(identities) {
        Ok(f) => f,
        Err(e) => return (Err(format!("{e:#}")), 0),
    };
    let mut out: Vec<EnvCredentials> = Vec::new();
    for f in found {
        let vars =
            f.variables.iter().map(|v| format!("{} ({}) in pid {} ({})", v.name, why_text(v.why), f.pid, f.comm));
        match out.iter_mut().find(|e| e.identity == f.identity) {
            Some(e) => e.variables.extend(vars),
            None => out.push(EnvCredentials { identity: f.identity.clone(), variables: vars.collect() }),
        }
    }
    (Ok(out), unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_one_at_a_time_without_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let long = "x".repeat(200_000);
        std::fs::write(&path, format!("one\n\n{long}\nlast without newline")).unwrap();
        let mut seen = Vec::new();
        each_line(&path, |l| seen.push(String::from_utf8_lossy(l).into_owned())).unwrap();
        assert_eq!(seen, ["one", long.as_str(), "last without newline"]);
        let mut none = 0;
        each_line(&dir.path().join("missing"), |_| none += 1).unwrap();
        assert_eq!(none, 0, "a missing file has no lines");
        let e = each_line(dir.path(), |_| {}).unwrap_err();
        assert!(e.to_string().starts_with(&format!("reading {}", dir.path().display())), "{e}");
    }
}
