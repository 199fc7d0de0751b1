//! `fence-agent logs verify`: are these the lines the agent wrote, all of them, in order?
//! See [`crate::chain`] for what the links and checkpoints are.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::{
    chain::{
        self, Checkpoint, LogKind,
        verify::{Report, oldest_first, verify},
    },
    config::Config,
    events::sink::rotated_path,
    vault::sign::PublicKey,
};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Files of one log: a rotated set in any order (`events.json*`), checked oldest first as
    /// one chain. Default: the configured event file with its rotated files, then the audit
    /// log, each checked as its own log.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Agent configuration (TOML): where the logs, the public key and the newest checkpoints
    /// are. Default: /etc/fence/agent.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The agent's public key: a file holding `ed25519:<base64>` or the key itself. Default:
    /// `log-signing.pub` in the state directory ([persist] state_dir).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// The newest checkpoint the agent kept (`<log>-checkpoint.json` in the state directory by
    /// default), which shows lines cut off the end of the log. `none` to check without it.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit status: 0 every log intact, 1 a log is broken, 2 it could not be checked.
pub fn main(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    run(args).or_else(|e| {
        eprintln!("fence-agent logs verify: cannot check: {e:#}");
        Ok(ExitCode::from(2))
    })
}

fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(p) => Config::load(Some(p))?,
        None => Config::load(None).unwrap_or_default(),
    };
    let state_dir = config.persist.state_dir.clone();
    let key_text = match &args.key {
        Some(k) if k.trim_start().starts_with("ed25519:") => k.clone(),
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the public key {path}"))?,
        None => {
            let path = state_dir.join(chain::PUBLIC_FILE);
            std::fs::read_to_string(&path).map_err(|e| {
                anyhow!(
                    "no public key to check the checkpoints with: {} ({e}); give --key (the agent writes it at start)",
                    path.display()
                )
            })?
        }
    };
    let key = PublicKey::parse(&key_text).context("the public key")?;

    let sets: Vec<(Vec<PathBuf>, Option<LogKind>)> = if args.files.is_empty() {
        let mut sets = Vec::new();
        if let Some(events) = &config.events.file {
            sets.push((rotated_set(events, config.events.keep), Some(LogKind::Events)));
        }
        sets.push((vec![config.audit.file.clone()], Some(LogKind::Audit)));
        sets
    } else {
        let mut files = args.files.clone();
        oldest_first(&mut files);
        vec![(files, None)]
    };

    let mut reports = Vec::new();
    let mut broken = false;
    for (files, kind) in sets {
        let report = verify(&files, Some(&key), None).map_err(|e| anyhow!("reading {}: {e}", names(&files)))?;
        // The newest checkpoint kept for this log: named, or found by the log's kind.
        let kind = kind.or(match report.log.as_deref() {
            Some("events") => Some(LogKind::Events),
            Some("audit") => Some(LogKind::Audit),
            _ => None,
        });
        let kept_path = match &args.checkpoint {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None => kind.map(|k| k.checkpoint_file(&state_dir)),
        };
        let kept = match &kept_path {
            Some(p) => read_kept(p, &key, args.checkpoint.is_some())?,
            None => None,
        };
        let report = match &kept {
            Some(k) => verify(&files, Some(&key), Some(k)).map_err(|e| anyhow!("reading {}: {e}", names(&files)))?,
            None => report,
        };
        broken |= !report.intact();
        if !args.json {
            print_text(&report, &key, kept.as_ref(), kept_path.as_deref());
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if broken { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `<file>.<keep>` ... `<file>.1`, `<file>`: those that exist, oldest first.
fn rotated_set(file: &Path, keep: u32) -> Vec<PathBuf> {
    let mut set: Vec<PathBuf> = (1..=keep.max(1)).rev().map(|n| rotated_path(file, n)).filter(|p| p.exists()).collect();
    set.push(file.to_owned());
    set
}

/// The kept checkpoint at `path`, checked against `key`. Missing: `None` (the log may be new),
/// unless it was named. One that does not verify is an error: it cannot be trusted.
fn read_kept(path: &Path, key: &PublicKey, named: bool) -> anyhow::Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if !named && e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "fence-agent logs verify: cannot read {} (run as root): lines cut off the end of the log after its last checkpoint line are not detected",
                path.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(anyhow!("reading the kept checkpoint {}: {e}", path.display())),
    };
    let cp: Checkpoint =
        serde_json::from_str(&text).with_context(|| format!("{}: not a checkpoint", path.display()))?;
    if !cp.verifies(key) {
        return Err(anyhow!(
            "{}: the kept checkpoint's signature does not verify with key {}: it was altered or another key signed it",
            path.display(),
            key.key_id()
        ));
    }
    Ok(Some(cp))
}

fn names(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn print_text(r: &Report, key: &PublicKey, kept: Option<&Checkpoint>, kept_path: Option<&Path>) {
    let what = r.log.as_deref().map(|l| format!("{l} log")).unwrap_or_else(|| "log".into());
    let span = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(", chain lines {a} to {b}"),
        _ => String::new(),
    };
    println!("{} ({what}): {} lines{span}", names(&r.files), r.lines);
    if r.unchained > 0 {
        println!("  {} lines before the chain began (written without links): not covered", r.unchained);
    }
    println!("  {} checkpoints, {} signed by key {}", r.checkpoints, r.signed, key.key_id());
    match r.last_checkpoint {
        Some(seq) if r.after_last_checkpoint > 0 => println!(
            "  newest checkpoint line vouches for line {seq}; {} lines after it are linked but not yet signed",
            r.after_last_checkpoint
        ),
        Some(seq) => println!("  newest checkpoint line vouches for line {seq}, the last"),
        None => println!("  no checkpoint line: nothing vouches for the last line"),
    }
    match (kept, kept_path) {
        (Some(k), _) => println!("  the agent's kept checkpoint ({}): line {} at {}", k.reason, k.seq, k.at),
        (None, Some(p)) => println!("  no kept checkpoint at {}", p.display()),
        (None, None) => {}
    }
    if r.intact() {
        println!("  OK: intact");
    } else {
        for f in r.findings.iter().take(20) {
            if f.line == 0 {
                println!("  BROKEN: {}", f.what);
            } else {
                println!("  BROKEN: {} line {}: {}", f.file.display(), f.line, f.what);
            }
        }
        if r.findings.len() > 20 {
            println!("  ... and {} more", r.findings.len() - 20);
        }
    }
}
