//! Running the agent and fenced workloads for the demo and the benchmarks.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The cgroup2 mount point, from /proc/self/mountinfo. (The agent has its own, tested copy of
/// this; xtask cannot depend on the agent crate, which needs the eBPF toolchain that `setup`
/// installs.)
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .context("no cgroup2 mount on this host")
}

/// A cgroup created for the task and removed on drop.
pub struct Cgroup {
    pub rel: String,
    pub dir: PathBuf,
}

impl Cgroup {
    pub fn create(rel: &str) -> Result<Cgroup> {
        let dir = cgroup2_root()?.join(rel.trim_start_matches('/'));
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Cgroup { rel: rel.to_owned(), dir })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// A running `fence-agent run`, stopped with SIGTERM on drop.
pub struct Agent {
    child: Child,
    pub events: PathBuf,
    pub stderr: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// The policy file it was started with (SIGHUP reads it again).
    pub policy: PathBuf,
    /// From the spawn to READY=1 on NOTIFY_SOCKET.
    pub ready_in: Duration,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the agent with `policy` in `dir` and waits for its READY notification.
    /// `events_keys`: more keys of the `[events]` table.
    pub fn start(agent: &Path, dir: &Path, policy: &str, stdout_events: bool, events_keys: &str) -> Result<Agent> {
        Agent::start_within(agent, dir, policy, stdout_events, events_keys, Duration::from_secs(60))
    }

    /// [`Agent::start`], waiting up to `timeout` for READY (a large policy takes long).
    pub fn start_within(
        agent: &Path,
        dir: &Path,
        policy: &str,
        stdout_events: bool,
        events_keys: &str,
        timeout: Duration,
    ) -> Result<Agent> {
        fs::create_dir_all(dir)?;
        // The agent picks the parser by the extension: a JSON document goes to policy.json.
        let json = policy.trim_start().starts_with('{');
        let policy_path = dir.join(if json { "policy.json" } else { "policy.yaml" });
        fs::write(&policy_path, policy)?;
        let events = dir.join("events.jsonl");
        let _ = fs::remove_file(&events);
        let config = dir.join("agent.toml");
        fs::write(
            &config,
            format!(
                "[events]\nstdout = {stdout_events}\nfile = {:?}\n{events_keys}[control]\nsocket = {:?}\nworkload_socket = {:?}\n[audit]\nfile = {:?}\n",
                events.display().to_string(),
                dir.join("agent.sock").display().to_string(),
                dir.join("workload.sock").display().to_string(),
                dir.join("audit.jsonl").display().to_string()
            ),
        )?;
        let notify_path = dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stderr = dir.join("agent.log");
        let spawned = Instant::now();
        let mut child = Command::new(agent)
            .arg("run")
            .arg("--policy")
            .arg(&policy_path)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut buf = [0u8; 256];
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                let ready_in = spawned.elapsed();
                return Ok(Agent {
                    child,
                    events,
                    stderr,
                    socket: dir.join("agent.sock"),
                    policy: policy_path,
                    ready_in,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("the agent exited ({status}):\n{}", fs::read_to_string(&stderr).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the agent did not become ready:\n{}", fs::read_to_string(&stderr).unwrap_or_default());
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Our own child, by pid.
        // SAFETY: kill(2) on the pid of a child we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `fence-tests helper` with an action, in `cgroup`, and returns its JSON report.
pub fn helper(tests: &Path, cgroup: Option<&Cgroup>, action: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new(tests);
    cmd.arg("helper");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(&cg.dir);
    }
    let out = cmd.args(action).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().with_context(|| format!("helper {action:?} printed nothing"))?;
    Ok(serde_json::from_str(line)?)
}
