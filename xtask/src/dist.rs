//! `cargo xtask dist`: the .deb (dpkg-deb, from the files in fence-agent/packaging) and a
//! tarball with an install script for hosts without dpkg. Both carry the static agent.
//!
//! dpkg-deb rather than cargo-deb: it is on every Debian machine, and the package is a handful
//! of files whose layout is clearer written out here than spread over Cargo.toml metadata.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    artifacts::build_static,
    util::{output, run, step, target_dir, workspace_root},
};

pub struct Dist {
    pub deb: PathBuf,
    pub tarball: PathBuf,
    /// The static fence-tests binary built alongside (the install tier runs it in the guest).
    pub tests: PathBuf,
}

/// Files of the package: (source under fence-agent/packaging or the workspace, destination, mode).
const DEB_FILES: &[(&str, &str, u32)] = &[
    ("fence-agent/packaging/fence-agent.service", "lib/systemd/system/fence-agent.service", 0o644),
    ("fence-agent/packaging/agent.toml", "etc/fence/agent.toml", 0o640),
    ("fence-agent/packaging/policy.d/00-default.yaml", "etc/fence/policy.d/00-default.yaml", 0o644),
    ("README.md", "usr/share/doc/fence-agent/README.md", 0o644),
    ("examples/policy.yaml", "usr/share/doc/fence-agent/examples/policy.yaml", 0o644),
    ("fence-agent/schema/event.schema.json", "usr/share/doc/fence-agent/event.schema.json", 0o644),
    ("fence-agent/schema/audit.schema.json", "usr/share/doc/fence-agent/audit.schema.json", 0o644),
    ("fence-agent/packaging/debian/postinst", "DEBIAN/postinst", 0o755),
    ("fence-agent/packaging/debian/prerm", "DEBIAN/prerm", 0o755),
    ("fence-agent/packaging/debian/postrm", "DEBIAN/postrm", 0o755),
    ("fence-agent/packaging/debian/copyright", "usr/share/doc/fence-agent/copyright", 0o644),
    ("fence-agent/packaging/debian/lintian-overrides", "usr/share/lintian/overrides/fence-agent", 0o644),
];

const CONFFILES: &str = "/etc/fence/agent.toml\n/etc/fence/policy.d/00-default.yaml\n";

pub fn dist() -> Result<Dist> {
    let art = build_static()?;
    let root = workspace_root();
    let version = version()?;
    let out = target_dir()?.join("dist");
    fs::create_dir_all(&out)?;

    step(format!("packaging fence-agent {version} (.deb)"));
    let stage = out.join("deb-root");
    let _ = fs::remove_dir_all(&stage);
    // Stripped (lintian: unstripped-binary-or-object): 16.7 MB with symbols.
    let bin = stage.join("usr/bin/fence-agent");
    fs::create_dir_all(bin.parent().context("usr/bin")?)?;
    run(Command::new("strip").args(["--strip-all", "-o"]).arg(&bin).arg(&art.agent))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    for (from, to, mode) in DEB_FILES {
        install(&root.join(from), &stage.join(to), *mode)?;
    }
    generated_docs(&art.agent, &stage)?;
    let changelog = stage.join("usr/share/doc/fence-agent/changelog.gz");
    install(&root.join("fence-agent/packaging/debian/changelog"), &changelog.with_extension(""), 0o644)?;
    run(Command::new("gzip").args(["-9n"]).arg(changelog.with_extension("")))?;
    fs::write(stage.join("DEBIAN/conffiles"), CONFFILES)?;
    fs::write(stage.join("DEBIAN/md5sums"), md5sums(&stage)?)?;
    fs::write(stage.join("DEBIAN/control"), control(&version, installed_size_kib(&stage)?))?;
    let deb = out.join(format!("fence-agent_{version}_amd64.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&stage).arg(&deb))?;

    step(format!("packaging fence-agent {version} (tarball with install.sh)"));
    let name = format!("fence-agent-{version}-x86_64-linux");
    let tar_stage = out.join("tar-root");
    let _ = fs::remove_dir_all(&tar_stage);
    let top = tar_stage.join(&name);
    install(&art.agent, &top.join("fence-agent"), 0o755)?;
    install(&root.join("fence-agent/packaging/install.sh"), &top.join("install.sh"), 0o755)?;
    install(&root.join("fence-agent/packaging/fence-agent.service"), &top.join("fence-agent.service"), 0o644)?;
    install(&root.join("fence-agent/packaging/agent.toml"), &top.join("etc/agent.toml"), 0o640)?;
    install(
        &root.join("fence-agent/packaging/policy.d/00-default.yaml"),
        &top.join("etc/policy.d/00-default.yaml"),
        0o644,
    )?;
    install(&root.join("README.md"), &top.join("README.md"), 0o644)?;
    install(&root.join("fence-agent/schema/event.schema.json"), &top.join("event.schema.json"), 0o644)?;
    install(&root.join("fence-agent/schema/audit.schema.json"), &top.join("audit.schema.json"), 0o644)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&tar_stage)
        .arg(&name))?;
    println!("{}\n{}", deb.display(), tarball.display());
    Ok(Dist { deb, tarball, tests: art.tests })
}

/// Where each shell looks for a package's completions (under the package root).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/fence-agent"),
    ("zsh", "usr/share/zsh/vendor-completions/_fence-agent"),
    ("fish", "usr/share/fish/vendor_completions.d/fence-agent.fish"),
];

/// The manual pages (gzip -9n, so the bytes do not depend on the time) and the shell
/// completions, generated by the agent binary from its own CLI definition.
fn generated_docs(agent: &Path, stage: &Path) -> Result<()> {
    let man = stage.join("usr/share/man/man1");
    run(Command::new(agent).arg("manpages").arg(&man))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    for page in pages {
        run(Command::new("gzip").args(["-9n"]).arg(&page))?;
        fs::set_permissions(page.with_extension("1.gz"), fs::Permissions::from_mode(0o644))?;
    }
    for (shell, to) in COMPLETIONS {
        let script = output(Command::new(agent).args(["completions", shell]))?;
        let path = stage.join(to);
        fs::create_dir_all(path.parent().context("destination has a parent")?)?;
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn version() -> Result<String> {
    let out = output(
        Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps"]).current_dir(workspace_root()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "fence-agent"))
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("cargo metadata has no fence-agent version")
}

fn control(version: &str, size_kib: u64) -> String {
    format!(
        "Package: fence-agent\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: fence maintainers <fence@example.invalid>\n\
         Section: admin\n\
         Priority: optional\n\
         Installed-Size: {size_kib}\n\
         Recommends: systemd\n\
         Homepage: https://example.invalid/fence\n\
         Description: eBPF ring-fence for non-human identities\n \
         fence binds AI agents, model runners and CI bots to cgroups and denies, in the\n \
         kernel, the connections, programs, credential files and local sockets their\n \
         policy does not allow. Statically linked; runs as the fence-agent systemd unit.\n"
    )
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("destination has a parent")?)?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// DEBIAN/md5sums: every file of the package but DEBIAN/, sorted, as md5sum prints them.
fn md5sums(stage: &Path) -> Result<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            if path.is_dir() {
                walk(&path, files)?;
            } else {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for e in fs::read_dir(stage)? {
        let path = e?.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "DEBIAN") {
            walk(&path, &mut files)?;
        }
    }
    let mut relative: Vec<String> =
        files.iter().map(|f| f.strip_prefix(stage).map(|p| p.display().to_string())).collect::<Result<_, _>>()?;
    relative.sort();
    if relative.is_empty() {
        return Ok(String::new());
    }
    output(Command::new("md5sum").args(&relative).current_dir(stage))
}

fn installed_size_kib(dir: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                walk(&e.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total)?;
    Ok(total)
}
