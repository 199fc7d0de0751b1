//! fence-agent: the daemon and its command line, in one binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use fence_agent::cmd;

#[derive(Debug, Parser)]
#[command(name = "fence-agent", version, about = "Ring-fences non-human identities with eBPF")]
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground: load, attach, enforce the policy, report events.
    Run(cmd::run::RunArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Report what this host can enforce, by which mechanism, and how to close the gaps.
    Doctor(cmd::doctor::DoctorArgs),
    /// Run a command as an identity: fenced from its first instruction (needs the agent).
    Exec(cmd::exec::ExecArgs),
    /// List the running agent's identities and their state.
    Identities(cmd::identities::IdentitiesArgs),
    /// Remove pinned enforcement, managed cgroups, state and the socket (agent stopped).
    Uninstall(cmd::uninstall::UninstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args),
        Command::Policy(cmd) => cmd::policy::main(cmd),
        Command::Doctor(args) => cmd::doctor::main(args),
        Command::Exec(args) => cmd::exec::main(args),
        Command::Identities(args) => cmd::identities::main(args),
        Command::Uninstall(args) => cmd::uninstall::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fence-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FENCE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
