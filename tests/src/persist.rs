//! Enforcement that survives the agent: pinned programs keep denying while the agent is
//! killed, restarted or stopped, and `fence-agent uninstall` lifts them.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, slow_factor, wait_for},
    harness::Test,
};

pub const TESTS: &[Test] = &[
    Test { name: "persist_no_gap_on_sigkill_restart_and_stop", run: no_gap },
    Test { name: "agent_exemption_is_bound_to_its_cgroup", run: agent_exemption_is_bound_to_its_cgroup },
];

/// Connect attempts the prober makes in each phase (the first agent running, none running)
/// before the test moves on.
const PHASE_ATTEMPTS: usize = 10;

/// Removes the test's pins if the test ends early (the pins would keep a test cgroup fenced).
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Ok(runs) = fs::read_dir(&self.0) {
            for run in runs.flatten() {
                for sub in ["links"] {
                    if let Ok(links) = fs::read_dir(run.path().join(sub)) {
                        for l in links.flatten() {
                            let _ = fs::remove_file(l.path());
                        }
                    }
                    let _ = fs::remove_dir(run.path().join(sub));
                }
                // The map pins (events, counters, rate); in the pin directory itself, the
                // reporter map the runs share.
                if let Ok(pins) = fs::read_dir(run.path()) {
                    for p in pins.flatten().filter(|p| p.file_type().is_ok_and(|t| !t.is_dir())) {
                        let _ = fs::remove_file(p.path());
                    }
                }
                let _ = fs::remove_dir(run.path());
                let _ = fs::remove_file(run.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// Starts a helper in `cg` that connects to `to` for `secs` seconds; returns its child.
fn prober(cg: &TestCgroup, to: &str, secs: f64) -> std::process::Child {
    prober_with(cg, to, secs, &[])
}

fn prober_with(cg: &TestCgroup, to: &str, secs: f64, more: &[&Path]) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["helper", "--cgroup"])
        .arg(&cg.dir)
        .args(["probe-connect", to, &secs.to_string()])
        .args(more)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the prober")
}

fn finish(p: std::process::Child) -> Value {
    let out = p.wait_with_output().expect("prober");
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("{}")).expect("prober output")
}

/// A prober that keeps connecting until told to stop, and reports each attempt as it makes
/// it (a line in its progress file), so that the test can wait for attempts in each phase.
struct Probe {
    child: Option<std::process::Child>,
    stop: PathBuf,
    progress: PathBuf,
    _dir: TempDir,
}

impl Probe {
    fn start(cg: &TestCgroup, to: &str) -> Probe {
        let dir = TempDir::new("persist-probe");
        let (stop, progress) = (dir.path("stop"), dir.path("progress"));
        // A bound on its run, should the test never tell it to stop.
        let secs = 60.0 * f64::from(slow_factor());
        let child = prober_with(cg, to, secs, &[&stop, &progress]);
        Probe { child: Some(child), stop, progress, _dir: dir }
    }

    /// Waits until the prober has made `more` attempts past those made so far.
    fn wait_attempts(&mut self, more: usize, when: &str) {
        let attempts =
            |progress: &Path| fs::read(progress).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
        let target = attempts(&self.progress) + more;
        let child = self.child.as_mut().expect("prober running");
        let made = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            if attempts(&self.progress) >= target {
                return Some(true);
            }
            child.try_wait().ok().flatten().map(|_| false)
        });
        assert!(
            made == Some(true),
            "the prober did not make {more} attempts {when} ({} in all; {})",
            attempts(&self.progress),
            if made.is_some() { "it exited" } else { "it is still running" }
        );
    }

    /// The outcome of each attempt so far, one character each (`d` denied, `s` succeeded,
    /// `o` other).
    fn outcomes(&self) -> String {
        fs::read_to_string(&self.progress).unwrap_or_default().lines().map(|l| l.trim()).collect()
    }

    /// Tells the prober to stop; what it counted.
    fn finish(mut self) -> Value {
        fs::write(&self.stop, "").expect("writing the prober's stop file");
        finish(self.child.take().expect("prober running"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        crate::env::stop_child(self.child.take());
    }
}

fn no_gap() {
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = denied.local_addr().unwrap().to_string();
    let cg = TestCgroup::new("persist");
    let state = TempDir::new("persist-state");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/fence-test-{}", std::process::id()));
    let _pins = Pins(pin_dir.clone());
    let config = format!(
        "[persist]\nenabled = true\npin_dir = {:?}\nstate_dir = {:?}\n",
        pin_dir.display().to_string(),
        state.0.display().to_string()
    );
    let policy = format!(
        "schema: 1\nidentities:\n  - name: persistent\n    owner: fence-tests\n    purpose: persistence test\n    selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    );
    let mut first = Agent::start_with("persist-1", &policy, &config);
    // Killed without warning, while a fenced process keeps trying; then a new agent takes over.
    // The prober runs from before the kill until the second agent is ready.
    let mut probe = Probe::start(&cg, &to);
    probe.wait_attempts(PHASE_ATTEMPTS, "while the first agent runs");
    nix::sys::signal::kill(first.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    first.wait_exit(Duration::from_secs(10));
    probe.wait_attempts(PHASE_ATTEMPTS, "while no agent runs");
    let second = Agent::start_with("persist-2", &policy, &config);
    let r = probe.finish();
    eprintln!("note: across SIGKILL and restart: {r}");
    assert_eq!(r["succeeded"], 0, "a denied connect succeeded while the agent was down or restarting: {r}");
    assert!(r["denied"].as_u64().unwrap() > 10, "{r}");
    assert!(second.stderr_text().contains("took over from an earlier run"), "{}", second.stderr_text());
    // The denials recorded while no agent ran were written out by the second agent.
    let pid = r["pid"].as_u64().unwrap();
    let written = second.events().iter().filter(|e| e["process"]["pid"] == pid).count();
    assert!(written > 0, "events from the gap were not written: {:#?}", second.events());
    assert!(second.events().iter().any(|e| e["fence"]["identity"] == "persistent"), "ids kept across restarts");
    // Stopped cleanly: enforcement stays.
    let mut second = second;
    nix::sys::signal::kill(second.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    second.wait_exit(Duration::from_secs(10 * u64::from(slow_factor())));
    let r = finish(prober(&cg, &to, 1.0));
    assert_eq!(r["succeeded"], 0, "a denied connect succeeded after a clean stop: {r}");
    // Uninstall lifts it.
    let out = Command::new(agent_binary()).args(["uninstall", "--config"]).arg(&second.config).output().unwrap();
    assert!(
        out.status.success(),
        "uninstall: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin_dir.exists(), "pins left after uninstall");
    assert!(!state.0.exists(), "state left after uninstall");
    let r = finish(prober(&cg, &to, 0.5));
    assert!(
        r["succeeded"].as_u64().unwrap() > 0 && r["denied"] == 0,
        "uninstalled, the process is no longer fenced: {r}"
    );
}

/// The agent's process is exempt from the fence only in the agent's own cgroup. With
/// persistence a stopped agent's programs keep enforcing, and its process id, still in its
/// exemption map, can be given to a fenced process: that process must stay fenced. Simulated
/// by writing a fenced prober's process id into the agent's map, as the stopped agent's entry
/// would be (another cgroup's id): its connects are still refused. With the prober's own
/// cgroup written instead, they are let through: the map is what the programs consult.
fn agent_exemption_is_bound_to_its_cgroup() {
    use aya::maps::{HashMap as BpfHashMap, MapData};
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = denied.local_addr().unwrap().to_string();
    drop(denied);
    let cg = TestCgroup::new("exempt");
    let policy = format!(
        "schema: 1\nidentities:\n  - name: exempt-bot\n    owner: fence-tests\n    purpose: integration test\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    );
    let agent = Agent::start("exempt", &policy);
    let mut probe = Probe::start(&cg, &to);
    let pid = probe.child.as_ref().map(|c| c.id()).expect("prober running");
    probe.wait_attempts(PHASE_ATTEMPTS, "before any exemption");
    let map = crate::fastpath::agent_map(agent.pid().as_raw(), "FENCE_AGENT_TASKS");
    let mut tasks: BpfHashMap<MapData, u32, u64> = BpfHashMap::try_from(map).expect("FENCE_AGENT_TASKS as a hash");
    // As a stopped agent's entry would be: its number, another cgroup (the host's root).
    tasks.insert(&pid, &1u64, 0).expect("writing the prober's pid with another cgroup");
    let before = probe.outcomes();
    probe.wait_attempts(PHASE_ATTEMPTS, "with the agent's number in another cgroup");
    let stale = probe.outcomes()[before.len()..].to_owned();
    assert!(stale.chars().all(|c| c == 'd'), "the prober's connects must stay denied: {stale:?}");
    // The same number in the prober's own cgroup is the agent's exemption: let through.
    tasks.insert(&pid, &cg.id(), 0).expect("writing the prober's pid with its own cgroup");
    // An attempt already under way when the entry was written may still be refused.
    probe.wait_attempts(2, "after the write");
    let before = probe.outcomes();
    probe.wait_attempts(PHASE_ATTEMPTS, "exempt");
    let exempt = probe.outcomes()[before.len()..].to_owned();
    tasks.remove(&pid).expect("removing the prober's pid");
    assert!(!exempt.contains('d'), "with its own cgroup the entry exempts it (the map is consulted): {exempt:?}");
    let counts = probe.finish();
    assert!(counts["denied"].as_u64().unwrap_or(0) >= 2 * PHASE_ATTEMPTS as u64, "{counts}");
}
