//! fence-agent: the daemon and its command line, in one binary.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use fence_agent::cmd;

#[derive(Debug, Parser)]
#[command(name = "fence-agent", version = VERSION, about = "Ring-fences non-human identities with eBPF")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// `-h` gives the one-line summaries; `--help` gives each subcommand's manual page: what it
// does, its files, its exit status and examples.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground: load, attach, enforce the policy, report events.
    ///
    /// Probes the kernel, loads the eBPF programs, fills their maps with the policy, attaches
    /// them and only then reports ready (sd_notify READY=1 under systemd; watchdog pings when
    /// WatchdogSec= is set). Denials are written as one JSON line each to stdout and the event
    /// file. SIGHUP reloads the policy atomically (a policy with errors is refused and the
    /// previous one stays). SIGTERM and SIGINT stop the agent: with [persist] enabled the
    /// pinned programs keep enforcing the last policy until the next start adopts them or
    /// `fence-agent uninstall` removes them; without it, enforcement ends with the agent.
    #[command(after_long_help = RUN_HELP)]
    Run(cmd::run::RunArgs),
    /// Work with policy files.
    #[command(subcommand, after_long_help = POLICY_HELP)]
    Policy(cmd::policy::PolicyCommand),
    /// Report what this host can enforce, by which mechanism, and how to close the gaps.
    ///
    /// Needs no running agent. Lists the kernel, the BPF program types that load, the
    /// cgroup2 and bpffs mounts, and for each fence (network, exec, credential files, unix
    /// sockets, no way out) the mechanism this host allows (BPF LSM, cgroup hook, tp_btf kill,
    /// fanotify) or why it is unavailable and what the operator can do about it.
    #[command(after_long_help = DOCTOR_HELP)]
    Doctor(cmd::doctor::DoctorArgs),
    /// Run a command as an identity: fenced from its first instruction (needs the agent).
    ///
    /// Asks the running agent for the identity's cgroup (created under the agent's own), moves
    /// itself into it, then executes CMD: the command's first instruction already runs fenced.
    /// The identity needs a `managed: true` selector. If the agent does not answer, the
    /// identity is unknown or the move fails, CMD is not run.
    #[command(after_long_help = EXEC_HELP)]
    Exec(cmd::exec::ExecArgs),
    /// List the running agent's identities and their state.
    ///
    /// For each identity: mode, policy version, owner, expiry, selectors, the cgroups they
    /// resolve to now, and the number of live processes in them.
    #[command(after_long_help = IDENTITIES_HELP)]
    Identities(cmd::identities::IdentitiesArgs),
    /// Egress by name: the names each identity resolved and the addresses it may reach.
    ///
    /// Asks the running agent (root). One line per (identity, name, address) with the seconds
    /// until the kernel refuses new connects to it; --json for the same as JSON.
    Dns(cmd::dns::DnsArgs),
    /// Just-in-time grants: request (from inside a fenced workload), approve, deny, revoke, list.
    ///
    /// A grant puts one of an identity's `grants:` targets in force for a while. The kernel
    /// ends it on its own clock (with the agent stopped too); every step is a line in the
    /// audit log.
    #[command(subcommand)]
    Grant(cmd::grant::GrantCommand),
    /// Credentials from the agent's broker: a fenced workload gets its own identity's secrets.
    ///
    /// The agent tells the identity from the kernel (the workload holds no vault token) and
    /// fetches the secret from the vault with a token limited to that identity's vault policy.
    /// Values go to stdout or a descriptor, never into the environment or a log.
    #[command(subcommand)]
    Secret(cmd::secret::SecretCommand),
    /// Show denial events: the event file and its rotated files, filtered, readable or JSON.
    ///
    /// Reads the event file named by [events] file of the configuration (or --file) and its
    /// rotated files (<file>.N, N=1 the newest), oldest first, so the output is in time order.
    /// Filters combine (all must match; a repeated one matches any of its values). The default
    /// output is one line per event (coloured on a terminal unless NO_COLOR is set); --json
    /// prints the lines as they are. -f follows the live file as it grows and rotates, every
    /// line once, until SIGINT or SIGTERM. Summary records (events suppressed by the rate
    /// limit, events dropped) are shown too and selected by --verdict suppressed|dropped.
    /// Lines that are not event records (not JSON, or not a line fence writes) are skipped and
    /// counted on stderr.
    #[command(after_long_help = LOGS_HELP)]
    Logs(cmd::logs::LogsArgs),
    /// Evidence per control (AC-6, IA-5, SC-7, ISO 5.15/5.16, CC6.1, GDPR) from this host.
    ///
    /// Asks the running agent for its fences, identities and policy source, reads its event
    /// file and audit log (denials by identity and kind, grants and their lifetimes, secrets
    /// the broker delivered), checks the logs' hash chain and signatures, and scans the fenced
    /// processes' environments for credentials (names only). Each finding is met, partial or
    /// not met, with the reason. As root.
    #[command(after_long_help = cmd::report::REPORT_HELP)]
    Report(cmd::report::ReportArgs),
    /// Remove pinned enforcement, managed cgroups, state and the socket (agent stopped).
    ///
    /// What a stopped agent leaves behind with [persist] enabled keeps enforcing; this lifts
    /// it: the pinned programs and links under pin_dir, the cgroups the agent created for
    /// `fence-agent exec` (when empty), state_dir and the control socket. Configuration and
    /// logs stay. Refuses to run while the agent answers on its socket. The package's removal
    /// runs it.
    #[command(after_long_help = UNINSTALL_HELP)]
    Uninstall(cmd::uninstall::UninstallArgs),
    /// Where this host's policy came from, its versions, and the vault sync state.
    ///
    /// Asks the running agent: the source of the policy in force (the vault, the last-known-
    /// good cache applied at start, or the local files), each identity's policy version, and
    /// for the vault its address, whether signatures are verified, the documents and versions
    /// applied, the last poll, success and apply, and the last error. With --hosts, reads
    /// every host's status from the vault instead (agents write it to status/<host>).
    #[command(after_long_help = STATUS_HELP)]
    Status(cmd::status::StatusArgs),
    /// Read the policy again and wait for the outcome (the unit's ExecReload).
    ///
    /// Exit 0: applied, or nothing changed; 2: refused (the errors are printed and the previous
    /// policy stays in force); 1: the agent could not be asked. Root.
    Reload(cmd::reload::ReloadArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    ///
    /// The package installs them where each shell looks; for another install:
    /// `fence-agent completions bash > /etc/bash_completion.d/fence-agent`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (fence-agent.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages { dir: std::path::PathBuf },
}

/// `--version`: the release and the commit it was built from (`unknown` outside a git checkout).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FENCE_COMMIT"), ")");

const STATUS_HELP: &str = "\
Exit status:
  0  shown
  1  the agent does not answer, or the vault cannot be read (--hosts)
  3  shown, and the vault sync is failing (its last poll could not ask the vault, or the
     vault holds a policy this agent refuses): see last error

Examples:
  fence-agent status
  fence-agent status --json | jq .vault.last_error
  fence-agent status --hosts -c console.toml";

const RUN_HELP: &str = "\
Files:
  /etc/fence/agent.toml          configuration (--config)
  /etc/fence/policy.d/           policy documents (--policy; YAML, TOML or JSON)
  /var/log/fence/events.jsonl    denial events, one JSON line each
  /var/log/fence/audit.jsonl     identity lifecycle audit, append-only
  /run/fence/agent.sock          control socket (exec, identities)
  /sys/fs/bpf/fence/             pinned programs (with [persist] enabled)
  /var/lib/fence/                state

Exit status:
  0  stopped by SIGTERM or SIGINT
  1  could not start (the error says why)
  2  the policy or configuration has errors (all are listed)

Examples:
  fence-agent run --config /etc/fence/agent.toml --policy /etc/fence/policy.d
  systemctl reload fence-agent      # SIGHUP: reload the policy";

const POLICY_HELP: &str = "\
Exit status:
  0  every document is valid
  2  errors were found (each names its file, field and reason)

Examples:
  fence-agent policy check /etc/fence/policy.d
  fence-agent policy check --offline ci-runner.yaml";

const DOCTOR_HELP: &str = "\
Exit status:
  0  the report was printed: every fence is enforced
  1  the host could not be probed
  3  the report was printed: some fence is NOT ENFORCED on this host (each says why and what
     to do)

Examples:
  fence-agent doctor
  fence-agent doctor --json | jq '.fences[] | select(.enforced | not)'";

const EXEC_HELP: &str = "\
Exit status:
  125  fencing failed (agent not running, unknown identity, move refused): CMD was not run
  126  CMD could not be executed (for example denied by the identity's exec policy)
  127  CMD was not found
  otherwise the exit status of CMD

Examples:
  fence-agent exec --identity ci-runner -- make test
  fence-agent exec -i model-runner -- python3 serve.py --port 8000";

const IDENTITIES_HELP: &str = "\
Exit status:
  0  listed
  1  the agent does not answer on its socket

Examples:
  fence-agent identities
  fence-agent identities --json";

const LOGS_HELP: &str = "\
Files:
  /etc/fence/agent.toml            configuration: [events] file (--config)
  /var/log/fence/events.jsonl      the live event file (--file)
  /var/log/fence/events.jsonl.N    rotated files, N=1 the newest ([events] keep of them)

Exit status:
  0  printed (or followed until SIGINT/SIGTERM, or until the reader of the output went away)
  1  the event file or the configuration could not be read
  2  bad arguments (an unknown verdict or operation lists the valid ones)

Examples:
  fence-agent logs -f
  fence-agent logs --identity ci-runner --verdict denied --since 1h
  fence-agent logs --operation connect --since 2026-11-25T17:00:00Z --json | jq .destination
  fence-agent logs -n 20 --verdict suppressed --verdict dropped";

const UNINSTALL_HELP: &str = "\
Exit status:
  0  nothing of fence's is left (configuration and logs aside)
  1  something was left in place (each item is listed), or the agent is running

Examples:
  systemctl stop fence-agent && fence-agent uninstall";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args),
        Command::Policy(cmd) => cmd::policy::main(cmd),
        Command::Doctor(args) => cmd::doctor::main(args),
        Command::Exec(args) => cmd::exec::main(args),
        Command::Identities(args) => cmd::identities::main(args),
        Command::Dns(args) => cmd::dns::main(args),
        Command::Grant(command) => cmd::grant::main(command),
        Command::Secret(command) => cmd::secret::main(command),
        Command::Logs(args) => cmd::logs::main(args),
        Command::Report(args) => cmd::report::main(args),
        Command::Uninstall(args) => cmd::uninstall::main(args),
        Command::Status(args) => cmd::status::main(args),
        Command::Reload(args) => cmd::reload::main(args),
        Command::Completions { shell } => {
            use std::io::Write as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fence-agent", &mut script);
            std::io::stdout().write_all(&script).map(|()| ExitCode::SUCCESS).map_err(anyhow::Error::from)
        }
        Command::Manpages { dir } => manpages(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fence-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The manual pages of the command and of every subcommand (`fence-agent-grant-request.1`, ...).
fn manpages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, ("fence-agent", "fence-agent"), dir, &mut written)?;
    eprintln!("{written} manual pages in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The page of `cmd`, named (`fence-agent-grant-request`, `fence-agent grant request`).
fn write_pages(
    cmd: &clap::Command,
    (name, bin): (&str, &str),
    dir: &std::path::Path,
    written: &mut usize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if cmd.is_hide_set() {
        return Ok(());
    }
    let page = cmd.clone().name(name.to_owned()).bin_name(bin.to_owned());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = sub.get_name();
        write_pages(sub, (&format!("{name}-{sub_name}"), &format!("{bin} {sub_name}")), dir, written)?;
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FENCE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal());
    // Under systemd: priorities and one entry per line for the journal (see `logging`).
    if fence_agent::logging::stderr_is_journal() {
        let builder = builder.with_writer(fence_agent::logging::JournalStderr);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return;
    }
    let builder = builder.with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
