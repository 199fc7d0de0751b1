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
        self, Checkpoint, HeadRecord, LogKind,
        verify::{Finding, Reference, Report, oldest_first, verify},
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
    /// The newest checkpoint the agent kept, which shows lines cut off the end of the log.
    /// Default, for the configured logs: `<log>-checkpoint.json` in the state directory (and
    /// the agent's record of the last line it wrote, `<log>-head`); for FILEs (copies): none.
    /// `none` to check without it.
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
    let key = public_key(&config, args.key.as_deref())?;
    let live = args.files.is_empty();
    let sets = if live {
        configured_sets(&config)
    } else {
        let mut files = args.files.clone();
        oldest_first(&mut files);
        vec![(files, None)]
    };
    let mut reports = Vec::new();
    let mut broken = false;
    for (files, kind) in sets {
        let checked = check_set(files, kind, live, args.checkpoint.as_deref(), &config.persist.state_dir, &key)?;
        broken |= !checked.report.intact();
        if !args.json {
            print_text(&checked.report, &key, checked.kept.as_ref(), checked.kept_path.as_deref());
        }
        reports.push(checked.report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if broken { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The agent's public key: `key` (a file holding `ed25519:<base64>`, or the key itself), else
/// `log-signing.pub` in the configured state directory.
pub(crate) fn public_key(config: &Config, key: Option<&str>) -> anyhow::Result<PublicKey> {
    let key_text = match key {
        Some(k) if k.trim_start().starts_with("ed25519:") => k.to_owned(),
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the public key {path}"))?,
        None => {
            let path = config.persist.state_dir.join(chain::PUBLIC_FILE);
            std::fs::read_to_string(&path).map_err(|e| {
                anyhow!(
                    "no public key to check the checkpoints with: {} ({e}); give --key (the agent writes it at start)",
                    path.display()
                )
            })?
        }
    };
    PublicKey::parse(&key_text).context("the public key")
}

/// The configured logs: the event file with its rotated files (when set), then the audit log.
pub(crate) fn configured_sets(config: &Config) -> Vec<(Vec<PathBuf>, Option<LogKind>)> {
    let mut sets = Vec::new();
    if let Some(events) = &config.events.file {
        sets.push((rotated_set(events, config.events.keep), Some(LogKind::Events)));
    }
    sets.push((vec![config.audit.file.clone()], Some(LogKind::Audit)));
    sets
}

/// One log checked, with the kept checkpoint it was checked against.
pub(crate) struct Checked {
    pub report: Report,
    pub kept: Option<Checkpoint>,
    pub kept_path: Option<PathBuf>,
}

/// Checks one log's `files` (oldest first). `live`: the agent's own logs, checked against its
/// record of the last line written and its kept checkpoint in `state_dir` (or `checkpoint`);
/// else copies, checked against `checkpoint` only.
pub(crate) fn check_set(
    files: Vec<PathBuf>,
    kind: Option<LogKind>,
    live: bool,
    checkpoint: Option<&Path>,
    state_dir: &Path,
    key: &PublicKey,
) -> anyhow::Result<Checked> {
    let kind = kind.or_else(|| kind_of(&files));
    // What the agent vouches for outside the log, read before the log (which only grows
    // after them): for the live logs its record of the last line written and its kept
    // checkpoint; for copies, the checkpoint named with --checkpoint.
    let head_path = kind.filter(|_| live).map(|k| HeadRecord::path(k, state_dir));
    let head = match &head_path {
        Some(p) => HeadRecord::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => None,
    };
    let kept_path = match checkpoint {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.to_owned()),
        None => kind.filter(|_| live).map(|k| k.checkpoint_file(state_dir)),
    };
    let kept = match &kept_path {
        Some(p) => read_kept(p, key, checkpoint.is_some())?,
        None => None,
    };
    let mut refs: Vec<Reference> = kept.iter().map(Reference::kept).collect();
    refs.extend(head.iter().map(Reference::head));
    let files: Vec<PathBuf> = files.into_iter().filter(|f| !live || f.exists()).collect();
    let mut report = verify(&files, Some(key), &refs).map_err(|e| anyhow!("reading {}: {e}", names(&files)))?;
    // The agent keeps both once it has signed a checkpoint: gone means removed.
    if live && report.checkpoints > 0 {
        for (path, present) in [(&kept_path, kept.is_some()), (&head_path, head.is_some())] {
            if let Some(p) = path.as_ref().filter(|_| !present) {
                report.findings.push(Finding {
                    file: p.clone(),
                    line: 0,
                    what: "missing, though the log holds signed checkpoints: removed from the state directory".into(),
                });
            }
        }
    }
    Ok(Checked { report, kept, kept_path })
}

/// The log a set is of, from its first line that says (`event.dataset`).
fn kind_of(files: &[PathBuf]) -> Option<LogKind> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(files.first()?).ok()?;
    std::io::BufReader::new(file).lines().map_while(Result::ok).find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(&l).ok()?;
        match v.pointer("/event/dataset")?.as_str()? {
            "fence.audit" => Some(LogKind::Audit),
            "fence.enforcement" => Some(LogKind::Events),
            _ => None,
        }
    })
}

/// `<file>.<keep>` ... `<file>.1`, `<file>`: those that exist, oldest first.
pub(crate) fn rotated_set(file: &Path, keep: u32) -> Vec<PathBuf> {
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
