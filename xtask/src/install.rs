//! The install tier: a Debian bookworm root with systemd (debootstrap, cached outside the
//! repository), booted under qemu with Debian's kernel straight from an initramfs, installs
//! the .deb that `cargo xtask dist` builds and checks the service from inside (the script
//! `install/guest-test`). Results come back on the serial console like the vm tier's.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    dist::Dist,
    util::{cache_dir, run, step},
    vm::{Guest, boot, cpio_gz},
};

/// What the cached root is made of; a change here rebuilds it.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,e2fsprogs,passwd";
/// Units masked in the guest: consoles that would talk over the results, timers that would
/// start work in the middle of a check.
const MASKED: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "systemd-pstore.service",
];
const RECIPE_VERSION: &str = "1";

const TIMEOUT: Duration = Duration::from_secs(20 * 60);

const GUEST_TEST: &str = include_str!("install/guest-test");
const TEST_UNIT: &str = include_str!("install/fence-install-test.service");
const DEMO: &str = include_str!("install/fenced-demo");
const DEMO_UNIT: &str = include_str!("install/fenced-demo.service");
const DEMO_POLICY: &str = include_str!("install/demo-policy.yaml");

fn recipe() -> String {
    format!("{RECIPE_VERSION} {SUITE} {MIRROR} {INCLUDE} {}", MASKED.join(","))
}

fn base_dir() -> PathBuf {
    cache_dir().join("install-root")
}

fn base_archive() -> PathBuf {
    base_dir().join("root.cpio.gz")
}

/// The cached root as a gzip'd cpio (set-up step; idempotent).
pub fn ensure_root() -> Result<()> {
    let dir = base_dir();
    let stamp = dir.join("recipe");
    if base_archive().exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == recipe()) {
        step(format!("install tier's Debian {SUITE} root present: {}", base_archive().display()));
        return Ok(());
    }
    step(format!(
        "debootstrap: Debian {SUITE} with systemd for the install tier, into {} (about a minute)",
        dir.display()
    ));
    let root = dir.join("root");
    if root.exists() {
        run(Command::new("rm").arg("-rf").arg(&root))?;
    }
    fs::create_dir_all(&dir)?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&root)
        .arg(MIRROR))?;
    // What the guest never needs: package lists and caches, documentation, translations.
    for sub in
        ["var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"]
    {
        let p = root.join(sub);
        if p.exists() {
            run(Command::new("rm").arg("-rf").arg(&p))?;
            fs::create_dir_all(&p)?;
        }
    }
    fs::write(root.join("etc/hostname"), "fence-install\n")?;
    fs::write(root.join("etc/fstab"), "")?;
    for unit in MASKED {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link)?;
    }
    cpio_gz(&root, &base_archive())?;
    run(Command::new("rm").arg("-rf").arg(&root))?;
    fs::write(&stamp, recipe())?;
    Ok(())
}

/// lintian on the package, as a result line: no error or warning but those its overrides
/// (`usr/share/lintian/overrides/fence-agent`, each with its reason) name.
fn lintian(deb: &Path) -> String {
    let out =
        Command::new("lintian").args(["--fail-on", "error,warning", "--tag-display-limit", "0"]).arg(deb).output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let tags: Vec<&str> = text.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
            if o.status.success() && tags.is_empty() {
                let info = text.lines().filter(|l| l.starts_with("I:") || l.starts_with("P:")).count();
                format!("FENCE-RESULT\tinstall_lintian\tPASS\tno errors or warnings ({info} informational tags)")
            } else {
                format!("FENCE-RESULT\tinstall_lintian\tFAIL\t{} ({})", tags.join("; "), o.status)
            }
        }
        Err(e) => format!("FENCE-RESULT\tinstall_lintian\tFAIL\tlintian could not run: {e}"),
    }
}

/// Boots the guest with the package and the checks; returns the console lines.
pub fn run_tests(dist: &Dist, work: &Path) -> Result<Vec<String>> {
    let overlay = work.join("overlay");
    if overlay.exists() {
        run(Command::new("rm").arg("-rf").arg(&overlay))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let p = overlay.join(path);
        fs::create_dir_all(p.parent().context("parent")?)?;
        fs::write(&p, bytes)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("root/fence-agent.deb", &fs::read(&dist.deb)?, 0o644)?;
    put("usr/local/bin/fence-tests", &fs::read(&dist.tests)?, 0o755)?;
    put("usr/local/sbin/fence-install-test", GUEST_TEST.as_bytes(), 0o755)?;
    put("usr/local/sbin/fenced-demo", DEMO.as_bytes(), 0o755)?;
    put("etc/systemd/system/fence-install-test.service", TEST_UNIT.as_bytes(), 0o644)?;
    put("etc/systemd/system/fenced-demo.service", DEMO_UNIT.as_bytes(), 0o644)?;
    put("root/demo-policy.yaml", DEMO_POLICY.as_bytes(), 0o644)?;
    // The tarball, unpacked as a user of a non-Debian host would.
    fs::create_dir_all(overlay.join("root/tarball"))?;
    run(Command::new("tar").arg("-xzf").arg(&dist.tarball).arg("-C").arg(overlay.join("root/tarball")))?;
    let wants = overlay.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    symlink("../fence-install-test.service", wants.join("fence-install-test.service"))?;
    let extra = work.join("overlay.cpio.gz");
    cpio_gz(&overlay, &extra)?;

    let append = "console=ttyS0 rdinit=/lib/systemd/systemd quiet loglevel=3 panic=-1 \
                  systemd.show_status=false systemd.log_level=warning";
    let base = base_archive();
    let guest =
        Guest { initrds: &[&base, &extra], append, memory_mib: 2048, done: "FENCE-INSTALL-DONE", timeout: TIMEOUT };
    let lintian = lintian(&dist.deb);
    let reproducible = crate::dist::reproducible(dist);
    let (mut lines, done) = boot(&guest)?;
    lines.push(lintian);
    lines.push(reproducible);
    if !done {
        lines.push(format!(
            "FENCE-RESULT\tinstall-run\tFAIL\tthe guest did not finish its checks within {TIMEOUT:?} (console above)"
        ));
    }
    Ok(lines)
}
