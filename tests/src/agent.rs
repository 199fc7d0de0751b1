//! Running the real `fence-agent` binary for a test: its policy and config in the test's
//! temporary directory, readiness through the systemd notify protocol, events read back from
//! its event file and its stdout.

use std::{
    fs,
    io::Read as _,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use fence_agent::control::{
    self,
    protocol::{DumpReply, Request, StatusReply},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::env::{TempDir, slow_factor, wait_for};

/// Path of the agent binary: `$FENCE_AGENT`, else `fence-agent` next to this binary.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FENCE_AGENT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.with_file_name("fence-agent")
}

pub struct Agent {
    child: Option<Child>,
    notify: Option<UnixDatagram>,
    /// Holds the policy, config and logs; removed with the agent.
    _dir: TempDir,
    pub policy: PathBuf,
    pub events: PathBuf,
    /// The identity lifecycle audit log.
    pub audit: PathBuf,
    /// The control socket (`fence-agent exec`, `identities`).
    pub socket: PathBuf,
    /// The workloads' socket (`grant request`).
    pub workload: PathBuf,
    /// The agent.toml it runs with.
    pub config: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Event lines already checked by [`Agent::events`].
    checked: std::sync::atomic::AtomicUsize,
    /// Lines of stdout already checked by [`Agent::events`].
    checked_stdout: std::sync::atomic::AtomicUsize,
    spawned: Instant,
    /// Counted in [`timing`] (it reported READY=1): its stop is counted too.
    counted: bool,
}

/// Agents this test process started, and the time they took to report READY=1 and to stop
/// (milliseconds): the runner prints them next to the test's time, to show where a tier's
/// time goes.
static STARTED: AtomicU64 = AtomicU64::new(0);
static READY_MS: AtomicU64 = AtomicU64::new(0);
static STOP_MS: AtomicU64 = AtomicU64::new(0);

/// "N agent(s): ready A s, stopped B s" (totals over the test's agents that reported READY=1;
/// one stopped by a signal of the test's own counts 0 for its stop), or `None` when the test
/// started none.
pub fn timing() -> Option<String> {
    let n = STARTED.load(Ordering::Relaxed);
    (n > 0).then(|| {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        format!("{n} agent(s): ready {:.1}s, stopped {:.1}s", s(&READY_MS), s(&STOP_MS))
    })
}

fn count_ms(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl Agent {
    /// Starts the agent on `policy` (YAML) and waits until it reports READY=1.
    pub fn start(test: &str, policy: &str) -> Agent {
        Agent::spawn_with(test, policy, "").wait_ready()
    }

    /// Starts the agent with more agent.toml: keys before the first table header go into
    /// `[events]`, then tables. Unless set there, tests run without the event rate limit (a
    /// test that waits for a particular event must not have it suppressed).
    pub fn start_with(test: &str, policy: &str, config: &str) -> Agent {
        Agent::spawn_with(test, policy, config).wait_ready()
    }

    /// Starts the agent without waiting (for tests of start-up failures).
    pub fn spawn(test: &str, policy: &str) -> Agent {
        Agent::spawn_with(test, policy, "")
    }

    /// Starts the agent with only the capabilities `keep` (numbers, as in linux/capability.h)
    /// left in its bounding set, as systemd's CapabilityBoundingSet= does; `None` if it does
    /// not become ready.
    pub fn start_with_caps(test: &str, policy: &str, config: &str, keep: &[u32]) -> Option<Agent> {
        let last: u32 =
            fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
        let drop: Vec<u32> = (0..=last).filter(|c| !keep.contains(c)).collect();
        let mut agent = Agent::spawn_inner(test, policy, config, Some(drop), None, "info");
        agent.ready().then_some(agent)
    }

    /// As [`Agent::start_with`], writing events to `events` (which outlives this agent: a
    /// later agent may append to the same file, as a restarted service does).
    pub fn start_with_events(test: &str, policy: &str, config: &str, events: &Path) -> Agent {
        Agent::spawn_inner(test, policy, config, None, Some(events), "info").wait_ready()
    }

    /// As [`Agent::start_with`], logging at `log` (`trace`: everything the agent can log).
    pub fn start_logged(test: &str, policy: &str, config: &str, log: &str) -> Agent {
        Agent::spawn_inner(test, policy, config, None, None, log).wait_ready()
    }

    fn spawn_with(test: &str, policy: &str, extra_config: &str) -> Agent {
        Agent::spawn_inner(test, policy, extra_config, None, None, "info")
    }

    fn spawn_inner(
        test: &str,
        policy: &str,
        extra_config: &str,
        drop_caps: Option<Vec<u32>>,
        events: Option<&Path>,
        log: &str,
    ) -> Agent {
        let dir = TempDir::new(&format!("{test}-agent"));
        let policy_path = dir.path("policy.yaml");
        fs::write(&policy_path, policy).expect("writing the policy");
        let events = events.map_or_else(|| dir.path("events.jsonl"), Path::to_path_buf);
        let config = dir.path("agent.toml");
        // The tests' own protected sets replace the host's defaults unless they say otherwise.
        let mut protect =
            if extra_config.contains("[protect]") { String::new() } else { "[protect]\ndefaults = false\n".to_owned() };
        // The broker's files of a test agent stay in its directory, not the host's /run.
        if !extra_config.contains("[broker]") {
            protect.push_str(&format!("[broker]\nfiles_dir = {:?}\n", dir.path("secrets").display().to_string()));
        }
        // So does its state (the log-signing key, the logs' newest checkpoints): not the
        // host's /var/lib/fence, shared by every agent a run starts.
        if !extra_config.contains("[persist]") {
            protect.push_str(&format!("[persist]\nstate_dir = {:?}\n", dir.path("state").display().to_string()));
        }
        let split = if extra_config.starts_with('[') {
            0
        } else {
            extra_config.find("\n[").map_or(extra_config.len(), |i| i + 1)
        };
        let (events_keys, extra_config) = extra_config.split_at(split);
        // An `[audit]` table of the test's joins the one written here.
        let (audit_keys, extra_config) = match extra_config.find("[audit]\n") {
            Some(at) => {
                let body = &extra_config[at + "[audit]\n".len()..];
                let end = body.find("\n[").map_or(body.len(), |i| i + 1);
                let keys = format!("{}\n", body[..end].trim_end());
                (keys, format!("{}{}", &extra_config[..at], &body[end..]))
            }
            None => (String::new(), extra_config.to_owned()),
        };
        let mut events_keys = events_keys.to_owned();
        if !events_keys.contains("rate_limit") {
            events_keys.push_str("rate_limit = 0\n");
        }
        // Every event in both formats on stdout (checked by `events`), ECS alone in the file.
        if !events_keys.contains("format") {
            events_keys.push_str("format = \"both\"\nfile_format = \"ecs\"\n");
        }
        let audit = dir.path("audit.jsonl");
        let socket = dir.path("agent.sock");
        let workload = dir.path("workload.sock");
        fs::write(
            &config,
            format!(
                "[events]\nstdout = true\nfile = {:?}\n{events_keys}[control]\nsocket = {:?}\nworkload_socket = {:?}\n[audit]\nfile = {:?}\n{audit_keys}{protect}{extra_config}",
                events.display().to_string(),
                socket.display().to_string(),
                workload.display().to_string(),
                audit.display().to_string()
            ),
        )
        .expect("writing the config");
        let notify = dir.path("notify.sock");
        // Bound before the agent starts, so that no READY can be missed.
        let notify_socket = UnixDatagram::bind(&notify).expect("binding the notify socket");
        let stdout = dir.path("agent.stdout");
        let stderr = dir.path("agent.stderr");
        let mut cmd = Command::new(agent_binary());
        if let Some(caps) = drop_caps {
            // SAFETY: only async-signal-safe prctl calls between fork and exec. As root, the
            // capabilities after exec are the bounding set (no inheritable or ambient ones).
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for &c in &caps {
                        if libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["run", "--policy"])
            .arg(&policy_path)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env("FENCE_LOG", log)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", agent_binary().display()));
        Agent {
            child: Some(child),
            notify: Some(notify_socket),
            _dir: dir,
            policy: policy_path,
            events,
            audit,
            socket,
            workload,
            config,
            stdout,
            stderr,
            checked: std::sync::atomic::AtomicUsize::new(0),
            checked_stdout: std::sync::atomic::AtomicUsize::new(0),
            spawned: Instant::now(),
            counted: false,
        }
    }

    fn wait_ready(mut self) -> Agent {
        if !self.ready() {
            match self.try_exit_status() {
                Some(status) => panic!("the agent exited before it was ready ({status}):\n{}", self.stderr_text()),
                None => panic!("the agent did not report READY=1 in time:\n{}", self.stderr_text()),
            }
        }
        self
    }

    /// Waits for READY=1; false if the agent exits first or takes too long.
    fn ready(&mut self) -> bool {
        let socket = self.notify.take().expect("notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let ready = wait_for(Duration::from_secs(60 * u64::from(slow_factor())), || {
            let mut buf = [0u8; 512];
            if let Ok(n) = socket.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                return Some(true);
            }
            self.try_exit_status().map(|_| false)
        })
        .unwrap_or(false);
        if ready && !self.counted {
            self.counted = true;
            STARTED.fetch_add(1, Ordering::Relaxed);
            count_ms(&READY_MS, self.spawned);
        }
        ready
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("agent running").id() as i32)
    }

    /// Stops the agent (SIGTERM, as systemd does) and waits for it; its files stay.
    pub fn stop(&mut self) {
        let since = Instant::now();
        if self.child.is_some() {
            crate::env::stop_child(self.child.take());
            if self.counted {
                count_ms(&STOP_MS, since);
            }
        }
    }

    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_for(timeout, || self.try_exit_status())
            .unwrap_or_else(|| panic!("the agent did not exit:\n{}", self.stderr_text()))
    }

    pub fn stderr_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The agent's answer to `status` on its control socket.
    pub fn status(&self) -> StatusReply {
        self.try_status().unwrap_or_else(|e| panic!("status on {}: {e}\n{}", self.socket.display(), self.stderr_text()))
    }

    fn try_status(&self) -> Result<StatusReply, fence_agent::control::CallError> {
        control::call(&self.socket, &Request::Status)
    }

    /// The live policy maps as the kernel holds them (`dump` on the control socket).
    pub fn dump(&self) -> DumpReply {
        control::call(&self.socket, &Request::Dump)
            .unwrap_or_else(|e| panic!("dump on {}: {e}\n{}", self.socket.display(), self.stderr_text()))
    }

    /// How many policy changes the agent has finished (applied, unchanged or refused).
    pub fn handled(&self) -> u64 {
        self.status().handled.total()
    }

    /// Waits until the agent has finished more policy changes than `before` (from
    /// [`Agent::handled`], read before causing the change); returns the status that shows it.
    pub fn wait_handled(&self, before: u64) -> StatusReply {
        wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            self.try_status().ok().filter(|st| st.handled.total() > before)
        })
        .unwrap_or_else(|| panic!("the agent handled no policy change past {before}:\n{}", self.stderr_text()))
    }

    /// Waits until the agent has finished a change past `before` and then no further one for
    /// a while (a burst of file changes may be reported in several parts under load).
    pub fn wait_settled(&self, before: u64) -> StatusReply {
        let mut last = self.wait_handled(before);
        let quiet = Duration::from_millis(750 * u64::from(slow_factor()));
        for _ in 0..20 {
            std::thread::sleep(quiet);
            let Ok(now) = self.try_status() else { continue };
            if now.handled.total() == last.handled.total() {
                return now;
            }
            last = now;
        }
        panic!("the agent kept handling policy changes:\n{}", self.stderr_text())
    }

    /// Sends SIGHUP and waits until the policy service has finished the reload (applied,
    /// unchanged or refused); returns the agent's log, which says what happened.
    pub fn reload(&self) -> String {
        let before = self.handled();
        kill(self.pid(), Signal::SIGHUP).expect("SIGHUP");
        self.wait_handled(before);
        self.stderr_text()
    }

    /// Event lines in the event file, parsed; each new one checked against the schema and
    /// the ECS field list, and its OCSF line against the OCSF schema
    /// ([`crate::schema::check_event`]). The new OCSF lines on stdout (where the test agents
    /// write both formats) are checked too ([`crate::schema::check_ocsf_pairs`]).
    #[track_caller]
    pub fn events(&self) -> Vec<Value> {
        use std::sync::atomic::Ordering::Relaxed;
        let lines = read_jsonl(&self.events);
        let from = self.checked.load(Relaxed).min(lines.len());
        lines[from..].iter().for_each(crate::schema::check_event);
        self.checked.store(lines.len(), Relaxed);
        let out = read_jsonl(&self.stdout);
        crate::schema::check_ocsf_pairs(&out, self.checked_stdout.load(Relaxed).min(out.len()));
        self.checked_stdout.store(out.len(), Relaxed);
        lines
    }

    /// Lines of the audit log, parsed, each checked against the audit schema and ECS.
    #[track_caller]
    pub fn audit_lines(&self) -> Vec<Value> {
        let lines = read_jsonl(&self.audit);
        lines.iter().for_each(crate::schema::check_audit);
        lines
    }

    /// Waits until an event matches `pred` and returns it.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(10 * u64::from(slow_factor())), || self.events().into_iter().find(|e| pred(e)))
            .unwrap_or_else(|| {
                panic!("no event {what} arrived; events: {:#?}\nagent log:\n{}", self.events(), self.stderr_text())
            })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The complete lines of a JSON-lines file: a last line without its newline is one the agent
/// is still writing (a reader may see a write(2) in part), and is left for the next read.
pub fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
        .collect()
}
