//! Builds fence's eBPF object (the `fence-ebpf` crate) with the pinned nightly and bpf-linker,
//! through aya-build, and leaves it in OUT_DIR for `include_bytes_aligned!`.
//!
//! A build that cannot produce the object fails here, loudly. `AYA_BUILD_SKIP=1` (for tooling
//! such as clippy only) leaves an empty object; such a binary refuses to start (see
//! `ebpf_object::bytes`), so it can never enforce nothing while claiming otherwise.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

/// Must match fence-ebpf/rust-toolchain.toml (its LLVM must match bpf-linker's).
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let object = out_dir.join("fence");
    commit();
    println!("cargo::rerun-if-changed=../fence-ebpf/src");
    println!("cargo::rerun-if-changed=../fence-ebpf/Cargo.toml");
    println!("cargo::rerun-if-changed=../fence-common/src");
    if skip {
        // aya-build prints its own warning; leave an empty object so that the crate compiles.
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        println!("cargo::rustc-cfg=fence_ebpf_stub");
    }
    println!("cargo::rustc-check-cfg=cfg(fence_ebpf_stub)");
    // aya-build forwards the inner cargo's stderr as build warnings; keep only real diagnostics.
    // SAFETY: build scripts are single-threaded here.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    // No build-machine paths in the object's debug info (BTF line info names source files): the
    // nested build uses the pinned nightly, whose cargo trims them (the sysroot's to
    // /rustc/HASH, registry crates' to NAME-VERSION, the workspace's to relative paths).
    // SAFETY: as above.
    unsafe {
        env::set_var("CARGO_UNSTABLE_TRIM_PATHS", "true");
        env::set_var("CARGO_PROFILE_RELEASE_TRIM_PATHS", "all");
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "fence-ebpf", root_dir: "../fence-ebpf", ..Default::default() }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the pinned \
         nightly toolchain and bpf-linker",
    )?;
    if !skip {
        let len =
            fs::metadata(&object).with_context(|| format!("eBPF object {} was not produced", object.display()))?.len();
        if len == 0 {
            return Err(anyhow!("eBPF object {} is empty", object.display()));
        }
    }
    Ok(())
}

/// `FENCE_COMMIT` for `--version`: the commit the build is of, from git (or the FENCE_COMMIT
/// environment variable, for builds outside a checkout), else `unknown`. Rebuilt when the
/// checkout moves to another commit.
fn commit() {
    println!("cargo::rerun-if-env-changed=FENCE_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let id = env::var("FENCE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=FENCE_COMMIT={id}");
    // HEAD, packed-refs and the branch HEAD names: a new commit or checkout changes one of
    // them. Only paths that exist (cargo reruns the script every time for one that does not);
    // a branch whose ref is packed is watched by its directory, where a new commit writes it.
    let path_of = |name: &str| git(&["rev-parse", "--git-path", name]).map(PathBuf::from);
    let mut watched: Vec<PathBuf> =
        ["HEAD", "packed-refs"].into_iter().filter_map(path_of).filter(|p| p.exists()).collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| path_of(&b)) {
        if branch.exists() {
            watched.push(branch);
        } else {
            watched.extend(branch.parent().filter(|d| d.exists()).map(PathBuf::from));
        }
    }
    for path in watched {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}
