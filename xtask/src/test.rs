//! `cargo xtask test [--tier T]...`: runs the test tiers and ends with one summary line per
//! tier (`TIER: N passed, N failed, N skipped`) and a total line.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use crate::{
    artifacts::{Artifacts, build_static},
    util::{step, target_dir, workspace_root},
    vm,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    /// Pure code, no root (cargo test).
    Unit,
    /// Short runs of every fuzz target (one test each): no crash, hang or runaway allocation.
    Fuzz,
    /// Integration tests on this machine's kernel, as root.
    Host,
    /// The integration tests inside Debian's kernel (BPF LSM) under qemu.
    Vm,
    /// The .deb installed and checked in a Debian guest booted with systemd.
    Install,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Unit => "unit",
            Tier::Fuzz => "fuzz",
            Tier::Host => "host",
            Tier::Vm => "vm",
            Tier::Install => "install",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

pub fn test(tiers: &[Tier], filter: Option<&str>) -> Result<ExitCode> {
    let tiers: Vec<Tier> = if tiers.is_empty() {
        vec![Tier::Unit, Tier::Fuzz, Tier::Host, Tier::Vm, Tier::Install]
    } else {
        tiers.to_vec()
    };
    let mut results: Vec<(Tier, Tally)> = Vec::new();
    let mut artifacts: Option<Artifacts> = None;
    for tier in tiers {
        step(format!("tier {}", tier.name()));
        let tally = match run_tier(tier, filter, &mut artifacts) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tier {} could not run: {e:#}", tier.name());
                Tally { failed: 1, ..Tally::default() }
            }
        };
        results.push((tier, tally));
    }
    let mut total = Tally::default();
    println!();
    for (tier, t) in &results {
        println!("{}: {} passed, {} failed, {} skipped", tier.name(), t.passed, t.failed, t.skipped);
        total.add(*t);
    }
    if total.skipped > 0 {
        println!("{} passed, {} failed, {} skipped", total.passed, total.failed, total.skipped);
    } else {
        println!("{} passed, {} failed", total.passed, total.failed);
    }
    Ok(if total.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_tier(tier: Tier, filter: Option<&str>, artifacts: &mut Option<Artifacts>) -> Result<Tally> {
    match tier {
        Tier::Unit => unit(filter),
        Tier::Fuzz => fuzz(filter),
        Tier::Host => {
            crate::util::require_root("the host tier")?;
            let art = built(artifacts)?;
            host(art, filter)
        }
        Tier::Vm => {
            let art = built(artifacts)?;
            let work = target_dir()?.join("fence-vm");
            std::fs::create_dir_all(&work)?;
            let lines = vm::run_tests(art, &work, filter)?;
            Ok(tally_results(lines.iter().map(String::as_str)))
        }
        Tier::Install => {
            let dist = crate::dist::dist()?;
            let work = target_dir()?.join("fence-install");
            std::fs::create_dir_all(&work)?;
            let lines = crate::install::run_tests(&dist, &work)?;
            Ok(tally_results(lines.iter().map(String::as_str)))
        }
    }
}

fn built(artifacts: &mut Option<Artifacts>) -> Result<&Artifacts> {
    if artifacts.is_none() {
        *artifacts = Some(build_static()?);
    }
    artifacts.as_ref().context("artifacts")
}

/// `cargo test` over the workspace (the eBPF crate has no host tests). Counts libtest's
/// `test result:` lines; a build failure counts as a failure.
fn unit(filter: Option<&str>) -> Result<Tally> {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--locked", "--workspace", "--exclude", "fence-ebpf"]).current_dir(workspace_root());
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(key)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            tally.add(Tally { passed: num(" passed"), failed: num(" failed"), skipped: num(" ignored") });
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        eprintln!("cargo test failed ({status}) without a failing test: a build error");
        tally.failed += 1;
    }
    Ok(tally)
}

/// [`crate::fuzz::SHORT_RUNS`] runs of each fuzz target whose name contains `filter`: one test
/// per target, passed when it ran them all without a crash, hang or runaway allocation. A build
/// failure counts as a failure.
fn fuzz(filter: Option<&str>) -> Result<Tally> {
    let mut tally = Tally::default();
    for outcome in crate::fuzz::short_runs(filter)? {
        if outcome.failure.is_none() {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    Ok(tally)
}

/// The integration tests on this machine's kernel, one at a time.
fn host(art: &Artifacts, filter: Option<&str>) -> Result<Tally> {
    let mut cmd = Command::new(&art.tests);
    cmd.arg("run-all").env("FENCE_AGENT", &art.agent).env("FENCE_TEST_TIER", "host");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("running fence-tests")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(tally_results(text.lines()))
}

/// Whether `s` is made only of ANSI escape sequences and control characters.
fn only_control_sequences(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-letter, or ESC and one character.
            if chars.next() == Some('[') {
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            return false;
        }
    }
    true
}

/// Counts `FENCE-RESULT` lines; prints them. No result lines at all is a failure.
fn tally_results<'a>(lines: impl Iterator<Item = &'a str>) -> Tally {
    let mut t = Tally::default();
    let mut seen = false;
    for line in lines {
        // A serial console may put terminal control sequences before the tag; anything else
        // before it (an indented copy in a failure report) is not a result.
        let Some(at) = line.find("FENCE-RESULT\t") else {
            continue;
        };
        if !only_control_sequences(&line[..at]) {
            continue;
        }
        let line = &line[at..];
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 3 {
            continue;
        }
        seen = true;
        println!("{line}");
        match fields[2] {
            "PASS" => t.passed += 1,
            "SKIP" => t.skipped += 1,
            _ => t.failed += 1,
        }
    }
    if !seen {
        eprintln!("no test results were reported");
        t.failed += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_behind_terminal_resets_count_but_quoted_copies_do_not() {
        let lines = [
            "\x1bc\x1b[?7l\x1b[2JFENCE-RESULT\ta\tPASS\t",
            "| FENCE-RESULT\tb\tFAIL\tquoted in a failure report",
            "  vm| FENCE-RESULT\tc\tFAIL\tprefixed",
            "FENCE-RESULT\td\tSKIP\twhy",
            "FENCE-RESULT\te\tFAIL\tboom",
        ];
        let t = tally_results(lines.into_iter());
        assert_eq!((t.passed, t.failed, t.skipped), (1, 1, 1));
    }

    #[test]
    fn no_results_is_a_failure() {
        let t = tally_results(["booting", "nothing"].into_iter());
        assert_eq!(t.failed, 1);
    }
}
