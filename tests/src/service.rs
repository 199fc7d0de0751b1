//! The systemd unit's capability set, measured: the agent started with only the capabilities
//! of `CapabilityBoundingSet=` in fence-agent/packaging/fence-agent.service enforces every fence
//! it enforces as full root, and logs its denials with the actor's executable. On the host tier
//! it also finds a minimal set for this kernel (each capability dropped in turn, for good if
//! nothing is lost) and prints it; the install tier does the same under a real systemd.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{PermissionsExt as _, chown},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent::Agent,
    env::{TempDir, TestCgroup, mechanism, slow_factor, test_tier, wait_for},
    harness::{Test, note, skip},
    helper::{self, Outcome},
};

pub const TESTS: &[Test] = &[Test { name: "service_unit_capabilities_suffice", run: unit_capabilities_suffice }];

const UNIT: &str = include_str!("../../fence-agent/packaging/fence-agent.service");

/// Capability numbers (linux/capability.h) of the names the unit may use.
const CAPS: &[(&str, u32)] = &[
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_KILL", 5),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

fn unit_caps() -> Vec<(&'static str, u32)> {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|name| {
            *CAPS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unknown capability {name} in the unit"))
        })
        .collect()
}

struct Setup {
    cg: TestCgroup,
    dir: TempDir,
    policy: String,
    config: String,
    exec_enforced: bool,
    files_enforced: bool,
}

impl Setup {
    fn new() -> Setup {
        let cg = TestCgroup::new("service-caps");
        let dir = TempDir::new("service-caps");
        // A program the identity may run and one it may not (copies of this binary).
        let me = std::env::current_exe().unwrap();
        for name in ["allowed", "denied"] {
            fs::copy(&me, dir.path(name)).unwrap();
            fs::set_permissions(dir.path(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A key in a directory only its owner (not root) may search, as in a user's ~/.ssh:
        // the agent must see into it to protect it.
        let private = dir.path("home/alice/.ssh");
        fs::create_dir_all(&private).unwrap();
        fs::write(private.join("id_ed25519"), "key").unwrap();
        for p in [dir.path("home/alice"), private.clone()] {
            chown(&p, Some(65534), Some(65534)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        }
        chown(private.join("id_ed25519"), Some(65534), Some(65534)).unwrap();
        let policy = format!(
            "schema: 1\nidentities:\n  - name: caps-bot\n    owner: fence-tests\n    purpose: capability test\n    \
             selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n    exec:\n      allow: [{:?}]\n",
            cg.rel,
            dir.path("allowed").display().to_string()
        );
        let config =
            format!("[protect]\ndefaults = false\npaths = [{:?}]\n", private.join("id_ed25519").display().to_string());
        Setup {
            cg,
            dir,
            policy,
            config,
            exec_enforced: mechanism("exec").is_some(),
            files_enforced: mechanism("credential-files").is_some(),
        }
    }

    /// Starts the agent with `keep` and checks every fence; the fences it reports NOT ENFORCED.
    fn check(&self, keep: &[u32]) -> Result<BTreeSet<String>, String> {
        let agent = Agent::start_with_caps("service-caps", &self.policy, &self.config, keep)
            .ok_or_else(|| "the agent did not start".to_owned())?;
        let log = agent.stderr_text();
        if let Some(l) = log.lines().find(|l| l.contains("ERROR")) {
            return Err(format!("the agent logged an error: {l}"));
        }
        // The audit log is append-only wherever its file system takes chattr +a (not tmpfs).
        let audit = std::fs::File::open(&agent.audit).map_err(|e| format!("the audit log: {e}"))?;
        match fence_agent::audit::is_append_only(&audit) {
            Ok(true) => {}
            Ok(false) => return Err("the audit log is not append-only (chattr +a)".into()),
            Err(e) => note(format!("the audit log's append-only flag not checked: its file system has none ({e})")),
        }
        let not_enforced: BTreeSet<String> = log
            .lines()
            .filter(|l| l.contains("NOT ENFORCED"))
            .filter_map(|l| l.split("fence=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|f| f.trim_matches('"').to_owned())
            .collect();

        // A prober that keeps trying for a second: alive when the agent reads its executable
        // (/proc/PID/exe of a root process: CAP_SYS_PTRACE).
        let o = helper::run(Some(&self.cg), &["probe-connect", "127.0.0.1:9", "1"]);
        let all_denied = o.raw["denied"].as_u64().is_some_and(|d| d > 0) && o.raw["denied"] == o.raw["attempts"];
        expect_denied(&agent, &o, "connect", all_denied, true)?;
        if self.exec_enforced {
            let o = helper::run(
                Some(&self.cg),
                &["exec", &self.dir.path("denied").display().to_string(), "helper", "noop"],
            );
            expect_denied(&agent, &o, "exec", o.errno == Some(libc::EPERM) || o.signal == Some(libc::SIGKILL), false)?;
            let o = helper::run(
                Some(&self.cg),
                &["exec", &self.dir.path("allowed").display().to_string(), "helper", "noop"],
            );
            if !o.ok() {
                return Err(format!("an allowed program did not run: {}", o.raw));
            }
        }
        if self.files_enforced {
            let key = self.dir.path("home/alice/.ssh/id_ed25519").display().to_string();
            let o = helper::run(Some(&self.cg), &["open", &key]);
            expect_denied(&agent, &o, "open", o.errno == Some(libc::EPERM), false)?;
        }
        Ok(not_enforced)
    }
}

/// The attempt was denied and logged (with the actor's executable if `exe`: a process that
/// exits at once may be gone before the agent looks).
fn expect_denied(agent: &Agent, o: &Outcome, op: &str, denied: bool, exe: bool) -> Result<(), String> {
    if !denied {
        return Err(format!("{op} was not denied: {}", o.raw));
    }
    let event = wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        agent.events().into_iter().find(|e| e["process"]["pid"] == o.pid && e["fence"]["operation"] == op)
    })
    .ok_or_else(|| format!("no event for the denied {op}"))?;
    match &event["process"]["executable"] {
        Value::String(x) if !x.is_empty() => Ok(()),
        _ if !exe => Ok(()),
        _ => Err(format!("the {op} event has no executable: {event}")),
    }
}

fn unit_capabilities_suffice() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("CapInh:") && l.ends_with("0000000000000000")) {
        skip("this process has inheritable capabilities: the bounding set alone would not limit the agent");
    }
    let s = Setup::new();
    let all: Vec<u32> = CAPS.iter().map(|(_, c)| *c).chain(0..=40).collect();
    let baseline = s.check(&all).unwrap_or_else(|e| panic!("as full root: {e}"));
    let unit = unit_caps();
    let numbers: Vec<u32> = unit.iter().map(|(_, c)| *c).collect();
    let with_unit = s.check(&numbers).unwrap_or_else(|e| {
        panic!(
            "with only the unit's CapabilityBoundingSet ({}): {e}",
            unit.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
        )
    });
    assert_eq!(with_unit, baseline, "fences not enforced with the unit's capabilities, against full root");
    if test_tier() != "host" {
        return;
    }
    // A minimal set for this kernel.
    let mut keep = unit.clone();
    for (name, _) in &unit {
        let trial: Vec<(&str, u32)> = keep.iter().filter(|(n, _)| n != name).copied().collect();
        let nums: Vec<u32> = trial.iter().map(|(_, c)| *c).collect();
        match s.check(&nums) {
            Ok(ne) if ne == baseline => keep = trial,
            Ok(ne) => eprintln!("  without {name}: not enforced: {ne:?}"),
            Err(e) => eprintln!("  without {name}: {e}"),
        }
    }
    note(format!(
        "the unit's set works; a minimal set on this kernel: {}",
        keep.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
    ));
}
