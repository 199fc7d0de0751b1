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
    /// The unstripped agent the artefacts were packed from.
    pub agent: PathBuf,
}

/// Files of the package: (source under fence-agent/packaging or the workspace, destination, mode).
const DEB_FILES: &[(&str, &str, u32)] = &[
    ("fence-agent/packaging/fence-agent.service", "lib/systemd/system/fence-agent.service", 0o644),
    ("fence-agent/packaging/fence-workloads.service", "lib/systemd/system/fence-workloads.service", 0o644),
    ("fence-agent/packaging/agent.toml", "etc/fence/agent.toml", 0o640),
    ("fence-agent/packaging/policy.d/00-default.yaml", "etc/fence/policy.d/00-default.yaml", 0o644),
    ("README.md", "usr/share/doc/fence-agent/README.md", 0o644),
    ("examples/policy.yaml", "usr/share/doc/fence-agent/examples/policy.yaml", 0o644),
    ("fence-agent/schema/event.schema.json", "usr/share/doc/fence-agent/event.schema.json", 0o644),
    ("fence-agent/schema/ocsf.schema.json", "usr/share/doc/fence-agent/ocsf.schema.json", 0o644),
    ("fence-agent/schema/audit.schema.json", "usr/share/doc/fence-agent/audit.schema.json", 0o644),
    ("fence-agent/packaging/debian/postinst", "DEBIAN/postinst", 0o755),
    ("fence-agent/packaging/debian/prerm", "DEBIAN/prerm", 0o755),
    ("fence-agent/packaging/debian/postrm", "DEBIAN/postrm", 0o755),
    ("fence-agent/packaging/debian/copyright", "usr/share/doc/fence-agent/copyright", 0o644),
    ("fence-agent/packaging/debian/lintian-overrides", "usr/share/lintian/overrides/fence-agent", 0o644),
    ("fence-agent/packaging/tmpfiles.conf", "usr/lib/tmpfiles.d/fence-agent.conf", 0o644),
];

const CONFFILES: &str = "/etc/fence/agent.toml\n/etc/fence/policy.d/00-default.yaml\n";

pub fn dist() -> Result<Dist> {
    let art = build_static()?;
    let out = target_dir()?.join("dist");
    let files = package(&art.agent, &out)?;
    for f in &files {
        println!("{}", f.display());
    }
    Ok(Dist { deb: files[0].clone(), tarball: files[1].clone(), tests: art.tests, agent: art.agent })
}

/// Packs the agent into `out`: the .deb, the tarball, the SBOM and SHA256SUMS, in that order.
fn package(agent: &Path, out: &Path) -> Result<[PathBuf; 4]> {
    let p = Packaging {
        root: workspace_root(),
        version: version()?,
        epoch: source_date_epoch()?,
        out: out.to_owned(),
        agent: agent.to_owned(),
    };
    fs::create_dir_all(&p.out)?;
    let deb = p.deb()?;
    let tarball = p.tarball()?;
    let sbom = p.out.join(format!("fence-agent-{}.cdx.json", p.version));
    fs::write(&sbom, sbom_json(&p.version)?)?;
    // SHA256SUMS beside the artefacts (`sha256sum -c SHA256SUMS` in target/dist).
    let names: Vec<String> = [&deb, &tarball, &sbom]
        .iter()
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).context("artefact name"))
        .collect::<Result<_>>()?;
    let sums = p.out.join("SHA256SUMS");
    fs::write(&sums, output(Command::new("sha256sum").args(&names).current_dir(&p.out))?)?;
    Ok([deb, tarball, sbom, sums])
}

/// The install tier's reproducibility check, as a result line: the same binary packed again,
/// into another directory and at another time, gives the same bytes for every artefact. (The
/// binary itself carries no build paths or times: see artifacts.rs and fence-agent/build.rs.)
pub fn reproducible(dist: &Dist) -> String {
    let first = dist.deb.parent().map(Path::to_path_buf).unwrap_or_default();
    let again = match target_dir() {
        Ok(t) => t.join("dist-again"),
        Err(e) => return format!("FENCE-RESULT\tinstall_reproducible\tFAIL\t{e:#}"),
    };
    let _ = fs::remove_dir_all(&again);
    let files = match package(&dist.agent, &again) {
        Ok(f) => f,
        Err(e) => return format!("FENCE-RESULT\tinstall_reproducible\tFAIL\tpacking again: {e:#}"),
    };
    let differ: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?;
            (fs::read(f).ok()? != fs::read(first.join(name)).ok()?).then(|| name.to_string_lossy().into_owned())
        })
        .collect();
    let checked = files.iter().filter(|f| f.file_name().is_some_and(|n| first.join(n).exists())).count();
    if differ.is_empty() && checked == files.len() {
        format!("FENCE-RESULT\tinstall_reproducible\tPASS\t{checked} artefacts packed twice are byte-identical")
    } else {
        format!(
            "FENCE-RESULT\tinstall_reproducible\tFAIL\tdiffer: {}; compared {checked} of {}",
            differ.join(", "),
            files.len()
        )
    }
}

/// What both artefacts are made from.
struct Packaging {
    root: PathBuf,
    version: String,
    /// SOURCE_DATE_EPOCH: the time every packaged file carries.
    epoch: u64,
    out: PathBuf,
    agent: PathBuf,
}

impl Packaging {
    /// The agent, stripped (lintian: unstripped-binary-or-object; 16.7 MB with symbols).
    fn stripped_agent(&self, to: &Path) -> Result<()> {
        fs::create_dir_all(to.parent().context("destination has a parent")?)?;
        run(Command::new("strip").args(["--strip-all", "-o"]).arg(to).arg(&self.agent))?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    fn deb(&self) -> Result<PathBuf> {
        step(format!("packaging fence-agent {} (.deb)", self.version));
        let stage = self.out.join("deb-root");
        let _ = fs::remove_dir_all(&stage);
        self.stripped_agent(&stage.join("usr/bin/fence-agent"))?;
        for (from, to, mode) in DEB_FILES {
            install(&self.root.join(from), &stage.join(to), *mode)?;
        }
        generated_docs(&self.agent, &stage)?;
        let changelog = stage.join("usr/share/doc/fence-agent/changelog");
        install(&self.root.join("fence-agent/packaging/debian/changelog"), &changelog, 0o644)?;
        run(Command::new("gzip").args(["-9n"]).arg(&changelog))?;
        // Drop-in configuration files (`agent.d/*.toml`, read after agent.toml): the
        // administrator's or a fleet tool's, none shipped.
        fs::create_dir_all(stage.join("etc/fence/agent.d"))?;
        directories_0755(&stage)?;
        fs::write(stage.join("DEBIAN/conffiles"), CONFFILES)?;
        fs::write(stage.join("DEBIAN/md5sums"), md5sums(&stage)?)?;
        fs::write(stage.join("DEBIAN/control"), control(&self.version, installed_size_kib(&stage)?))?;
        let deb = self.out.join(format!("fence-agent_{}_amd64.deb", self.version));
        // SOURCE_DATE_EPOCH: dpkg-deb clamps every member's mtime to it (reproducible bytes).
        run(Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&stage)
            .arg(&deb))?;
        Ok(deb)
    }

    fn tarball(&self) -> Result<PathBuf> {
        step(format!("packaging fence-agent {} (tarball with install.sh)", self.version));
        let name = format!("fence-agent-{}-x86_64-linux", self.version);
        let tar_stage = self.out.join("tar-root");
        let _ = fs::remove_dir_all(&tar_stage);
        let top = tar_stage.join(&name);
        self.stripped_agent(&top.join("fence-agent"))?;
        let files = [
            ("fence-agent/packaging/install.sh", "install.sh", 0o755),
            ("fence-agent/packaging/fence-agent.service", "fence-agent.service", 0o644),
            ("fence-agent/packaging/fence-workloads.service", "fence-workloads.service", 0o644),
            ("fence-agent/packaging/tmpfiles.conf", "fence-agent.tmpfiles.conf", 0o644),
            ("fence-agent/packaging/agent.toml", "etc/agent.toml", 0o640),
            ("fence-agent/packaging/policy.d/00-default.yaml", "etc/policy.d/00-default.yaml", 0o644),
            ("README.md", "README.md", 0o644),
            ("fence-agent/schema/event.schema.json", "event.schema.json", 0o644),
            ("fence-agent/schema/ocsf.schema.json", "ocsf.schema.json", 0o644),
            ("fence-agent/schema/audit.schema.json", "audit.schema.json", 0o644),
        ];
        for (from, to, mode) in files {
            install(&self.root.join(from), &top.join(to), mode)?;
        }
        directories_0755(&tar_stage)?;
        // Every entry at SOURCE_DATE_EPOCH, sorted, owned by 0, and gzip without a name or time.
        let tar = self.out.join(format!("{name}.tar"));
        run(Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name", "--format=gnu"])
            .arg(format!("--mtime=@{}", self.epoch))
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&tar_stage)
            .arg(&name))?;
        let tarball = self.out.join(format!("{name}.tar.gz"));
        let _ = fs::remove_file(&tarball);
        run(Command::new("gzip").args(["-9n"]).arg(&tar))?;
        Ok(tarball)
    }
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

/// A CycloneDX 1.5 SBOM of what the agent binary is built from: every crate reachable from
/// fence-agent or from its embedded eBPF object (fence-ebpf) through normal (not build or dev)
/// dependencies on the release target, from
/// `cargo metadata`. No timestamp or serial number, so that it is reproducible too.
fn sbom_json(version: &str) -> Result<String> {
    let out = output(
        Command::new("cargo")
            .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", "x86_64-unknown-linux-gnu"])
            .current_dir(workspace_root()),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&out)?;
    let packages = meta["packages"].as_array().context("cargo metadata: packages")?;
    let nodes = meta["resolve"]["nodes"].as_array().context("cargo metadata: resolve")?;
    let id_of = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["id"].as_str())
            .with_context(|| format!("cargo metadata has no {name}"))
    };
    // fence-ebpf is built by fence-agent's build script and its object is part of the binary:
    // it and what it is built from are components too.
    let ebpf = id_of("fence-ebpf")?.to_owned();
    let mut seen = std::collections::BTreeSet::from([ebpf.clone()]);
    let mut todo = vec![id_of("fence-agent")?.to_owned(), ebpf];
    while let Some(id) = todo.pop() {
        let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let Some(pkg) = dep["pkg"].as_str().filter(|_| normal)
                && seen.insert(pkg.to_owned())
            {
                todo.push(pkg.to_owned());
            }
        }
    }
    let mut components: Vec<serde_json::Value> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| seen.contains(id)))
        .map(|p| {
            let (name, v) = (p["name"].as_str().unwrap_or_default(), p["version"].as_str().unwrap_or_default());
            serde_json::json!({
                "type": "library",
                "name": name,
                "version": v,
                "purl": format!("pkg:cargo/{name}@{v}"),
                "licenses": p["license"].as_str().map(|l| vec![serde_json::json!({"expression": l})]).unwrap_or_default(),
            })
        })
        .collect();
    components
        .sort_by(|a, b| (a["name"].as_str(), a["version"].as_str()).cmp(&(b["name"].as_str(), b["version"].as_str())));
    let bom = serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {"type": "application", "name": "fence-agent", "version": version,
                          "purl": format!("pkg:cargo/fence-agent@{version}")}
        },
        "components": components,
    });
    Ok(serde_json::to_string_pretty(&bom)? + "\n")
}

/// The time every packaged file carries: SOURCE_DATE_EPOCH if set, else the commit's time
/// (so that two builds of one commit give the same bytes), else 0.
fn source_date_epoch() -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let commit_time = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    Ok(commit_time.unwrap_or(0))
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
         Depends: init-system-helpers (>= 1.54~)\n\
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

/// Every directory under `dir` (and `dir`) 0755, whatever the builder's umask made them: the
/// package's bytes and lintian's view must not depend on it.
fn directories_0755(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            directories_0755(&e.path())?;
        }
    }
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
