//! Building the binaries the other tasks run: the agent and the integration tests, statically
//! linked (the same binaries run on this host and inside the vm tier's initramfs).

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{step, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Artifacts {
    pub agent: PathBuf,
    pub tests: PathBuf,
}

/// Static glibc, and the crates' source paths (panic locations) without this machine's cargo
/// home, so that the binary does not depend on where it was built. The workspace's own crates
/// are already named by relative paths.
fn rustflags() -> String {
    let mut flags = String::from("-C target-feature=+crt-static");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    // The variable is split at white space: a home with a space keeps its paths.
    if let Some(home) = home.as_deref().and_then(|h| h.to_str()).filter(|h| !h.contains(char::is_whitespace)) {
        flags.push_str(&format!(" --remap-path-prefix={home}=/cargo"));
    }
    flags
}

/// Builds `fence-agent` and `fence-tests` (release, static glibc) and returns their paths, as
/// cargo reports them (no assumed target/ layout).
pub fn build_static() -> Result<Artifacts> {
    step("building fence-agent and fence-tests (release, static)");
    let mut child = Command::new("cargo")
        .args(["build", "--release", "--locked", "--target", TARGET, "-p", "fence-agent", "-p", "fence-tests"])
        .args(["--message-format", "json-render-diagnostics"])
        // Target-specific flags: they do not reach build scripts or the nested eBPF build (whose
        // paths fence-agent's build.rs trims).
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", rustflags())
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let (mut agent, mut tests) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        match msg["target"]["name"].as_str() {
            Some("fence-agent") => agent = Some(PathBuf::from(exe)),
            Some("fence-tests") => tests = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    Ok(Artifacts {
        agent: agent.context("cargo built no fence-agent executable")?,
        tests: tests.context("cargo built no fence-tests executable")?,
    })
}
