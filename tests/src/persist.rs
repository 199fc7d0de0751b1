//! Enforcement that survives the agent: pinned programs keep denying while the agent is
//! killed, restarted or stopped, and `fence-agent uninstall` lifts them.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, slow_factor},
    harness::Test,
};

pub const TESTS: &[Test] = &[Test { name: "persist_no_gap_on_sigkill_restart_and_stop", run: no_gap }];

/// Removes the test's pins if the test ends early (the pins would keep a test cgroup fenced).
struct Pins(PathBuf);

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
                let _ = fs::remove_file(run.path().join("events"));
                let _ = fs::remove_dir(run.path());
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// Starts a helper in `cg` that connects to `to` for `secs` seconds; returns its child.
fn prober(cg: &TestCgroup, to: &str, secs: f64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["helper", "--cgroup"])
        .arg(&cg.dir)
        .args(["probe-connect", to, &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the prober")
}

fn finish(p: std::process::Child) -> Value {
    let out = p.wait_with_output().expect("prober");
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("{}")).expect("prober output")
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
    let slow = f64::from(slow_factor());
    let mut first = Agent::start_with("persist-1", &policy, &config);
    // Killed without warning, while a fenced process keeps trying; then a new agent takes over.
    let probe = prober(&cg, &to, 3.0 * slow);
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(first.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    first.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let second = Agent::start_with("persist-2", &policy, &config);
    let r = finish(probe);
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
