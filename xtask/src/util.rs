//! Small helpers shared by the tasks.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Where downloads (Debian's kernel, the debootstrap root) are cached: outside the repository.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("FENCE_CACHE") {
        return PathBuf::from(d);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("fence")
}

/// The workspace's target directory, as cargo reports it.
pub fn target_dir() -> Result<PathBuf> {
    let out = output(
        Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps"]).current_dir(workspace_root()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["target_directory"].as_str().context("target_directory")?.into())
}

/// Debian bookworm's kernel (BPF LSM active without boot parameters), for the vm tier:
/// downloaded by the set-up, booted by the vm and install tiers.
pub fn kernel_path() -> PathBuf {
    cache_dir().join("debian-kernel").join("vmlinuz")
}

/// The kernel modules the vm tier loads into Debian's kernel (the guest has no module tree):
/// sock_diag's TCP part, which tears down connections at a grant's end. Loaded in this order.
pub const GUEST_MODULES: [&str; 2] = ["inet_diag.ko", "tcp_diag.ko"];

/// Where the set-up keeps [`GUEST_MODULES`], from the same kernel package.
pub fn kernel_modules_dir() -> PathBuf {
    cache_dir().join("debian-kernel").join("modules")
}

/// Runs a command to completion; fails with the command line if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout (stderr passes through).
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with its output captured; shows it only if the command fails.
pub fn quiet(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        eprint!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        bail!("{shown} failed: {}", out.status);
    }
    Ok(())
}

/// Whether a command exists on PATH.
pub fn have(program: impl AsRef<OsStr>) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg("command -v \"$0\" >/dev/null 2>&1")
        .arg(program.as_ref())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (it loads eBPF programs and creates cgroups); run it with sudo");
    }
    Ok(())
}

/// A step of a task, printed so that a newcomer sees what is happening.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("\x1b[1m==>\x1b[0m {}", msg.as_ref());
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Clears the append-only attribute (`chattr -a`) that the agent puts on its audit log, below
/// `dir`: without this, `cargo clean` or `rm -rf target` fails with EPERM after a demo or
/// bench. Best effort; nothing to do if `dir` does not exist.
pub fn release_append_only(dir: &Path) {
    if dir.exists() {
        let _ =
            Command::new("chattr").arg("-R").arg("-a").arg(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
