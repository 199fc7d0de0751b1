//! The vm tier: the same integration tests, inside Debian's 6.1 kernel (BPF LSM active) under
//! qemu (TCG), from a busybox initramfs. Results are read back from the serial console.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    artifacts::Artifacts,
    util::{GUEST_MODULES, kernel_modules_dir, kernel_path, step},
};

/// Whole-run limit for the guest (TCG is slow, but a hang must end).
const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
for m in /lib/fence-modules/*.ko; do insmod "$m" || echo "FENCE-VM-WARNING cannot load $m"; done
ip link set lo up
hostname fence-vm
echo "FENCE-VM-BOOTED kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
FILTER=$(sed -n 's/.*fence.filter=\([^ ]*\).*/\1/p' /proc/cmdline)
FENCE_TEST_TIER=vm FENCE_TEST_SLOW=6 /bin/fence-tests run-all --kernel-log-on-failure $FILTER
echo "FENCE-VM-DONE rc=$?"
poweroff -f
"#;

/// Builds the initramfs with the static binaries and boots it; returns the console lines.
pub fn run_tests(art: &Artifacts, work: &Path, filter: Option<&str>) -> Result<Vec<String>> {
    let initrd = initramfs(art, work)?;
    let mut append = String::from("console=ttyS0 quiet panic=-1 loglevel=4");
    if let Some(f) = filter {
        append.push_str(&format!(" fence.filter={f}"));
    }
    let guest =
        Guest { initrds: &[&initrd], append: &append, memory_mib: 1024, done: "FENCE-VM-DONE", timeout: VM_TIMEOUT };
    let (mut lines, done) = boot(&guest)?;
    if !lines.iter().any(|l| l.contains("FENCE-VM-BOOTED")) {
        bail!("the guest never reached its init (see the console output above)");
    }
    if !done {
        lines.push(format!("FENCE-RESULT\tvm-run\tFAIL\tthe guest did not finish within {VM_TIMEOUT:?}"));
    }
    Ok(lines)
}

/// What to boot under qemu with Debian's kernel.
pub struct Guest<'a> {
    /// Initramfs archives, concatenated in this order (later files win).
    pub initrds: &'a [&'a Path],
    pub append: &'a str,
    pub memory_mib: u32,
    /// The console line that says the guest has finished.
    pub done: &'a str,
    pub timeout: Duration,
}

/// Boots the guest and shows its console as it comes; returns the console lines and whether
/// the `done` line was seen before the guest stopped or the time ran out.
pub fn boot(guest: &Guest<'_>) -> Result<(Vec<String>, bool)> {
    let kernel = kernel_path();
    if !kernel.exists() {
        bail!("Debian's kernel is missing at {}; run `cargo xtask setup`", kernel.display());
    }
    let initrd = match guest.initrds {
        [one] => one.to_path_buf(),
        many => {
            let joined = many.first().context("an initramfs")?.with_extension("joined");
            let mut bytes = Vec::new();
            for part in many {
                bytes.extend(fs::read(part).with_context(|| format!("reading {}", part.display()))?);
            }
            fs::write(&joined, bytes)?;
            joined
        }
    };
    let version = fs::read_to_string(kernel.with_file_name("version")).unwrap_or_default();
    step(format!("booting Debian kernel {} under qemu (TCG)", version.trim()));
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
        .args(["-m", &guest.memory_mib.to_string()])
        .args(["-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none", "-display", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(guest.append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut done = false;
    while started.elapsed() < guest.timeout {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                // The guest's stdout (results) and stderr (progress, failure output) both
                // arrive here; show them as they come.
                eprintln!("  vm| {line}");
                // The console may prefix a line with terminal control sequences.
                done |= line.contains(guest.done);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait()?.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if child.try_wait()?.is_none() {
        // Our own qemu, by pid.
        let _ = child.kill();
    }
    let _ = child.wait();
    Ok((lines, done))
}

/// A gzip'd newc cpio with busybox, the init script and the two static binaries.
fn initramfs(art: &Artifacts, work: &Path) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found (apt package busybox-static; run `cargo xtask setup`)")?;
    copy_exec(&busybox, &root.join("bin/busybox"))?;
    copy_exec(&art.agent, &root.join("bin/fence-agent"))?;
    copy_exec(&art.tests, &root.join("bin/fence-tests"))?;
    // Loaded by the init in name order: inet_diag before tcp_diag.
    fs::create_dir_all(root.join("lib/fence-modules"))?;
    for (i, m) in GUEST_MODULES.iter().enumerate() {
        fs::copy(kernel_modules_dir().join(m), root.join(format!("lib/fence-modules/{i}-{m}")))
            .with_context(|| format!("{m} is missing; run `cargo xtask setup`"))?;
    }
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let out = work.join("initramfs.cpio.gz");
    cpio_gz(&root, &out)?;
    Ok(out)
}

/// Packs a directory as a gzip'd newc cpio (an initramfs).
pub fn cpio_gz(dir: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd '{}' && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > '{}'",
        dir.display(),
        out.display()
    );
    crate::util::run(Command::new("sh").args(["-c", &script]))
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(())
}
