//! `cargo xtask fuzz [--runs N] [TARGET]`: builds the libFuzzer targets of `fence-agent/fuzz`
//! with cargo-fuzz on the pinned nightly and runs each for N runs, seeded from the committed
//! corpus (`fence-agent/fuzz/corpus/TARGET`, never written to) and from a scratch corpus in the
//! target directory, which keeps what the runs find. A crash, a hang (an input taking longer
//! than [`TIMEOUT_SECS`]) or an allocation past the limits fails the target; the input that did
//! it is left in `target/fuzz/artifacts/TARGET/`. The test command runs each target briefly
//! ([`short_runs`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::EBPF_TOOLCHAIN,
    util::{step, target_dir, workspace_root},
};

/// The fuzz targets (`fence-agent/fuzz/fuzz_targets/NAME.rs`), in the order they run.
pub const TARGETS: &[&str] =
    &["policy_yaml", "policy_toml", "policy_json", "config", "control", "vault", "events", "glob", "dns"];
/// Runs per target of `cargo xtask fuzz`.
pub const DEFAULT_RUNS: u64 = 1_000_000;
/// Runs per target in the test command.
pub const SHORT_RUNS: u64 = 10_000;
/// One input taking longer than this is a hang.
const TIMEOUT_SECS: u32 = 10;
/// Resident memory of the whole process (ASan's shadow included) past which a run fails.
const RSS_LIMIT_MB: u32 = 2048;
/// One allocation larger than this fails the run (an input that makes the parsers allocate
/// without bound).
const MALLOC_LIMIT_MB: u32 = 512;

/// The result of one target's run.
pub struct Outcome {
    pub target: &'static str,
    /// Inputs executed, as libFuzzer counted them.
    pub runs: u64,
    pub seconds: f64,
    /// `None`: no crash, hang or excess allocation; else what happened and where the input is.
    pub failure: Option<String>,
}

impl Outcome {
    pub fn line(&self) -> String {
        let result = match &self.failure {
            None => "ok".to_owned(),
            Some(f) => format!("FAILED: {f}"),
        };
        format!("fuzz {:<12} {:>9} runs in {:>6.1} s: {result}", self.target, self.runs, self.seconds)
    }
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fence-agent").join("fuzz")
}

/// `cargo xtask fuzz`: every target (or one), `runs` runs each; one line per target.
pub fn fuzz(runs: u64, target: Option<&str>) -> Result<ExitCode> {
    let targets: Vec<&'static str> = match target {
        None => TARGETS.to_vec(),
        Some(t) => match TARGETS.iter().find(|&&n| n == t) {
            Some(&n) => vec![n],
            None => bail!("no fuzz target {t:?}; the targets are {}", TARGETS.join(", ")),
        },
    };
    let bins = build()?;
    let work = target_dir()?.join("fuzz");
    let mut outcomes = Vec::new();
    for t in targets {
        step(format!("fuzzing {t} for {runs} runs"));
        let scratch = work.join("corpus").join(t);
        let outcome = run_target(&bins, t, runs, &scratch, &work.join("logs"))?;
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    println!();
    for o in &outcomes {
        println!("{}", o.line());
    }
    Ok(if outcomes.iter().all(|o| o.failure.is_none()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The test command's fuzz tier: [`SHORT_RUNS`] runs of each target whose name contains
/// `filter`, each from the committed corpus and an empty scratch corpus (so that the time does
/// not grow with what earlier runs found).
pub fn short_runs(filter: Option<&str>) -> Result<Vec<Outcome>> {
    let bins = build()?;
    let work = target_dir()?.join("fuzz");
    let mut outcomes = Vec::new();
    for &t in TARGETS.iter().filter(|t| filter.is_none_or(|f| t.contains(f))) {
        let scratch = work.join("test-corpus").join(t);
        let _ = fs::remove_dir_all(&scratch);
        let outcome = run_target(&bins, t, SHORT_RUNS, &scratch, &work.join("test-logs"))?;
        println!("{}", outcome.line());
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Builds every target (release with 16 codegen units, debug assertions and overflow checks on,
/// AddressSanitizer) and returns the directory of the binaries.
pub fn build() -> Result<PathBuf> {
    step(format!("building the fuzz targets (cargo-fuzz, {EBPF_TOOLCHAIN}, AddressSanitizer)"));
    let target = target_dir()?.join("fuzz");
    let status = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "cargo", "fuzz", "build", "--debug-assertions"])
        // cargo-fuzz builds release with one codegen unit; 16 took the build from about 15 to
        // 9.6 minutes on the 2-core development VM, most of the test command's fuzz tier.
        .args(["--codegen-units", "16", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(&target)
        // The targets use no eBPF object: build.rs leaves an empty one (the library's code that
        // would load it refuses to), instead of building the eBPF crate with sanitizer flags.
        .env("AYA_BUILD_SKIP", "1")
        // `cargo xtask` runs under the user-space toolchain; let `rustup run` choose.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(workspace_root())
        .status()
        .context("starting cargo fuzz build (installed by `cargo xtask setup`)")?;
    if !status.success() {
        bail!("building the fuzz targets failed: {status}");
    }
    Ok(target.join(host_triple()).join("release"))
}

fn host_triple() -> &'static str {
    "x86_64-unknown-linux-gnu"
}

/// Runs one target for `runs` runs. `scratch` (created if missing) takes the inputs the run
/// finds; the committed corpus is only read. libFuzzer's output goes to `logs/TARGET.log`, the
/// input of a failure to `target/fuzz/artifacts/TARGET/`. A failure is an [`Outcome`]
/// with `failure` set; `Err` means the target could not be run at all.
fn run_target(bins: &Path, target: &'static str, runs: u64, scratch: &Path, logs: &Path) -> Result<Outcome> {
    let bin = bins.join(target);
    let seeds = fuzz_dir().join("corpus").join(target);
    let artifacts = target_dir()?.join("fuzz").join("artifacts").join(target);
    for d in [scratch, &artifacts, logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let started = Instant::now();
    let status = Command::new(&bin)
        .arg(format!("-runs={runs}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        // The artefact prefix is a path prefix: it must end in `/` to be a directory.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // No leak checks: LeakSanitizer stops the process with ptrace, which may be refused in
        // a sandbox (it then warns that it "may hang"); leaks are not what these runs look for.
        .arg("-detect_leaks=0")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        // The first corpus directory is the one libFuzzer writes new inputs to.
        .arg(scratch)
        .arg(&seeds)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let (runs, failure) = judge(&text, status.success());
    let failure = failure.map(|f| match artifact(&text) {
        Some(input) => {
            format!("{f} ({status}); input: {input}; log: {}; reproduce: {} {input}", log_path.display(), bin.display())
        }
        None => format!("{f} ({status}); no input written (see {}); log: {}", artifacts.display(), log_path.display()),
    });
    Ok(Outcome { target, runs, seconds, failure })
}

/// From a libFuzzer log: the runs done, and what went wrong (`None` when the run exited
/// successfully and reported its runs done). A Rust panic is named by its message, anything
/// else by libFuzzer's or the sanitizer's `ERROR:` line (deadly signal, timeout, out-of-memory,
/// malloc limit, leak, heap-buffer-overflow, ...).
fn judge(log: &str, exited_ok: bool) -> (u64, Option<String>) {
    let done = log.lines().rev().find_map(|l| {
        l.strip_prefix("Done ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok())
    });
    let executed = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:").and_then(|n| n.trim().parse::<u64>().ok()));
    let runs = done.or(executed).unwrap_or(0);
    if exited_ok && done.is_some() {
        return (runs, None);
    }
    let lines: Vec<&str> = log.lines().collect();
    let panic = lines.iter().position(|l| l.contains("panicked at")).map(|i| {
        let message = lines.get(i + 1).map(|m| m.trim()).filter(|m| !m.is_empty() && !m.starts_with("note:"));
        match message {
            Some(m) => format!("{} {m}", lines[i].trim()),
            None => lines[i].trim().to_owned(),
        }
    });
    let error = lines.iter().find_map(|l| {
        l.split_once("ERROR: ").filter(|(head, _)| head.starts_with("==")).map(|(_, r)| r.trim().to_owned())
    });
    let what = match (panic, error) {
        (Some(p), _) => p,
        (None, Some(e)) => e,
        (None, None) => "the fuzzer stopped without reporting its runs".to_owned(),
    };
    (runs, Some(what))
}

/// Where libFuzzer wrote the input that failed.
fn artifact(log: &str) -> Option<String> {
    log.lines().find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_reports_its_runs() {
        let log = "INFO: Seed: 1\n#1000000\tDONE   cov: 10 ft: 20 corp: 3/4b\nDone 1000000 runs in 96 second(s)\n\
                   stat::number_of_executed_units: 1000000\nstat::peak_rss_mb: 415\n";
        assert_eq!(judge(log, true), (1_000_000, None));
        // A success exit without the closing line is not trusted.
        assert!(judge("INFO: Seed: 1\n", true).1.is_some());
    }

    #[test]
    fn a_panic_is_named_by_its_message_and_its_input_found() {
        let log = "#4096\tpulse  cov: 1\n\
            thread '<unnamed>' panicked at fence-agent/src/policy/glob.rs:80:9:\n\
            index out of bounds: the len is 3 but the index is 3\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\
            ==4242== ERROR: libFuzzer: deadly signal\n\
            MS: 2 ChangeBit-InsertByte-; base unit: 0\n\
            artifact_prefix='/t/fuzz/artifacts/glob/'; Test unit written to /t/fuzz/artifacts/glob/crash-0a1b\n\
            stat::number_of_executed_units: 4100\n";
        let (runs, failure) = judge(log, false);
        assert_eq!(runs, 4100);
        let failure = failure.unwrap();
        assert!(failure.contains("glob.rs:80:9") && failure.contains("index out of bounds"), "{failure}");
        assert_eq!(artifact(log).as_deref(), Some("/t/fuzz/artifacts/glob/crash-0a1b"));
    }

    #[test]
    fn hangs_and_allocations_are_failures() {
        let timeout = "==77== ERROR: libFuzzer: timeout after 10 seconds\n\
                       artifact_prefix='/a/'; Test unit written to /a/timeout-ff\n";
        assert_eq!(judge(timeout, false).1.as_deref(), Some("libFuzzer: timeout after 10 seconds"));
        let malloc = "==78== ERROR: libFuzzer: out-of-memory (malloc(1073741824))\n";
        assert_eq!(judge(malloc, false).1.as_deref(), Some("libFuzzer: out-of-memory (malloc(1073741824))"));
        let rss = "==79== ERROR: libFuzzer: out-of-memory (used: 2100Mb; exceeds: 2048Mb)\n";
        assert!(judge(rss, false).1.unwrap().contains("exceeds: 2048Mb"));
        assert!(judge("Segmentation fault\n", false).1.is_some());
    }
}
