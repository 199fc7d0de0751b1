//! `fence-agent policy suggest`: a least-privilege policy for an identity from its would-deny
//! events and denials (see [`crate::learn`]).

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use jiff::Timestamp;

use crate::{
    cmd::logs::{Line, OCSF_ONLY, Skips, parse_since, verify::rotated_set},
    config::Config,
    learn::{Observed, suggest},
    policy::{
        load::{SourceDocument, load_paths},
        model::PolicyDocument,
        validate,
    },
};

pub const SUGGEST_HELP: &str = "\
Files:
  /etc/fence/agent.toml     [events] file: where the events are read (--config, or --from)
  /etc/fence/policy.d       the identity's policy as it stands (--policy)

Exit status:
  0  a policy was written (read its risk list first)
  1  no would-deny event or denial of the identity was found: nothing to suggest
  2  the identity or the events could not be read, or the suggestion does not validate

Examples:
  fence-agent policy suggest --identity model-runner --since 24h > model-runner.yaml
  fence-agent policy suggest --identity ci-runner --from events.jsonl.1 --from events.jsonl";

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The identity to write a policy for.
    #[arg(long, value_name = "NAME")]
    pub identity: String,
    /// Only events at or after TIME: RFC 3339, or a duration back from now (24h, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Timestamp>,
    /// Event files to read (repeatable; a rotated set in any order). Default: the configured
    /// event file and its rotated files.
    #[arg(long = "from", value_name = "FILE")]
    pub from: Vec<PathBuf>,
    /// Policy files or directories holding the identity as it stands. Default: /etc/fence/policy.d.
    #[arg(long, value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Agent configuration (TOML) to find the event file in. Default: /etc/fence/agent.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

pub fn main(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    run(args).or_else(|e| {
        eprintln!("fence-agent policy suggest: {e:#}");
        Ok(ExitCode::from(2))
    })
}

fn run(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let policy_paths = if args.policy.is_empty() { vec![PathBuf::from("/etc/fence/policy.d")] } else { args.policy };
    let docs = load_paths(&policy_paths).map_err(|e| anyhow!("reading the policy: {e}"))?;
    let base = docs
        .iter()
        .flat_map(|d| &d.document.identities)
        .find(|i| i.name == args.identity)
        .cloned()
        .with_context(|| format!("no identity {:?} in {}", args.identity, names(&policy_paths)))?;

    let mut files = args.from;
    if files.is_empty() {
        let config = Config::load(args.config.as_deref())?;
        let events = config.events.file.context("no event file: [events] file is not set; give --from FILE")?;
        files = rotated_set(&events, config.events.keep);
    } else {
        crate::chain::verify::oldest_first(&mut files);
    }
    let mut seen = Observed::default();
    let mounts = crate::mountinfo::MountInfo::read();
    // OCSF lines (format both) are read through the ECS line of the same event.
    let mut skips = Skips::default();
    for file in &files {
        let text = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        for raw in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match Line::parse(raw) {
                Ok(Line::Event(r)) => {
                    skips.events += 1;
                    let recent = args.since.is_none_or(|s| r.timestamp.parse::<Timestamp>().is_ok_and(|t| t >= s));
                    if recent {
                        seen.add(&args.identity, &r, &mounts);
                    }
                }
                Ok(Line::Summary(_)) => skips.events += 1,
                Err(_) => skips.skipped(raw),
            }
        }
    }
    if skips.ocsf_only() {
        bail!("{}: {OCSF_ONLY}", names(&files));
    }
    if skips.not_events > 0 {
        eprintln!("fence-agent policy suggest: {} line(s) were not events and were skipped", skips.not_events);
    }
    if seen.is_empty() {
        eprintln!(
            "fence-agent policy suggest: no would-deny event or denial of {:?} in {}: nothing to suggest",
            args.identity,
            names(&files)
        );
        return Ok(ExitCode::from(1));
    }
    let (doc, risks) = suggest(&base, &seen);
    let document = PolicyDocument { schema: Some(u64::from(crate::policy::SCHEMA_VERSION)), identities: vec![doc] };
    // What is suggested must be a policy the agent takes.
    let check = [SourceDocument { path: PathBuf::from("<suggestion>"), document: document.clone() }];
    validate::validate(&check, None, Timestamp::now()).map_err(|e| anyhow!("the suggestion does not validate: {e}"))?;
    let yaml = serde_saphyr::to_string(&document).context("writing the suggestion as YAML")?;
    let mut out = format!(
        "# Suggested by `fence-agent policy suggest` from {} event(s) of {:?} in {}.\n",
        seen.events,
        args.identity,
        names(&files)
    );
    out.push_str("# Mode enforce; every addition is exactly what was seen. Read before applying:\n");
    for r in &risks {
        out.push_str(&format!("#   RISK {r}\n"));
    }
    if risks.is_empty() {
        out.push_str("#   (nothing flagged)\n");
    }
    out.push_str(&yaml);
    print!("{out}");
    eprintln!("fence-agent policy suggest: {} risk(s) to read (at the top of the output)", risks.len());
    Ok(ExitCode::SUCCESS)
}

fn names(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
