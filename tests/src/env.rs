//! What tests set up on the host: their own cgroups and temporary directories, removed when
//! the test ends, and a few host readings.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use fence_agent::mountinfo::MountInfo;

/// The cgroup2 mount point of this host (found, never assumed).
pub fn cgroup_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let text = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        MountInfo::parse(&text).mount_of("cgroup2").expect("no cgroup2 mount on this host")
    })
}

/// A cgroup the test creates under `<cgroup2>/fence-test/` and removes when dropped.
pub struct TestCgroup {
    /// Path relative to the cgroup2 mount, as policies name it.
    pub rel: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let rel = format!("/fence-test/{name}.{}", std::process::id());
        let dir = cgroup_root().join(rel.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        TestCgroup { rel, dir }
    }

    /// A cgroup at exactly `rel` (its name must say it is fence's test cgroup).
    pub fn at(rel: &str) -> TestCgroup {
        assert!(rel.contains("fence"), "test cgroups carry fence in their path: {rel}");
        let dir = cgroup_root().join(rel.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        TestCgroup { rel: rel.to_owned(), dir }
    }

    /// A child cgroup (created now, removed with the parent).
    pub fn child(&self, name: &str) -> TestCgroup {
        let rel = format!("{}/{name}", self.rel);
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        TestCgroup { rel, dir }
    }

    /// The cgroup id the kernel reports (the directory's inode number).
    pub fn id(&self) -> u64 {
        fence_agent::cgroup::id_of(&self.dir).expect("cgroup id")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.dir);
    }
}

/// Removes a cgroup and its descendants, deepest first. Processes that tests started have
/// exited by now (helpers are waited for); retry briefly while the kernel finishes reaping.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shared parent goes when the last test's cgroup is gone.
    if let Some(parent) = dir.parent()
        && parent.file_name().is_some_and(|n| n == "fence-test")
    {
        let _ = fs::remove_dir(parent);
    }
}

/// A temporary directory removed when dropped: `fence-test-NAME.XXXXXX` (a unique random
/// suffix) in the system's temporary directory, on the same file system as before, so that
/// the files tests protect there live on a device the agent identifies as it always has.
/// `.0` is its path.
pub struct TempDir(pub PathBuf, tempfile::TempDir);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("fence-test-{name}."))
            // As a plain mkdir under umask 022 made it: tempfile's default is 0700.
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("creating fence-test-{name}.* in {}: {e}", base.display()));
        TempDir(dir.path().to_path_buf(), dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    /// Clears the append-only flags first; `tempfile` then removes the tree (quietly, also
    /// when the test already removed it, as `fence-agent uninstall` does with a state dir).
    fn drop(&mut self) {
        clear_append_only(self.1.path());
    }
}

/// Clears the append-only flag of every file under `dir` (the agent sets it on audit logs,
/// and even root cannot unlink such a file until it is cleared).
fn clear_append_only(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => clear_append_only(&e.path()),
                Ok(t) if t.is_file() => {
                    if let Ok(f) = fs::File::open(e.path()) {
                        let _ = fence_agent::audit::append_only_flag(&f, false);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The last `lines` lines of the kernel log (syslog(2) READ_ALL), for failure reports.
pub fn kernel_log_tail(lines: usize) -> String {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, buf.as_mut_ptr().cast(), buf.len() as libc::c_int) };
    if n < 0 {
        return format!("(kernel log unavailable: {})", std::io::Error::last_os_error());
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a child this test started, by its pid: SIGTERM, then SIGKILL after 10 s.
pub fn stop_child(child: Option<std::process::Child>) {
    if let Some(mut child) = child {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Time limits scale with the machine: the vm tier runs under TCG emulation.
pub fn slow_factor() -> u32 {
    std::env::var("FENCE_TEST_SLOW").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Where `run-all` keeps the first test's doctor answer for the others (the kernel and the
/// agent binary do not change during a run; under TCG one doctor run costs about 25 s).
pub const DOCTOR_CACHE: &str = "FENCE_TEST_DOCTOR_CACHE";

/// `fence-agent doctor --json` on this host (run once per `run-all`, or per test process).
pub fn doctor() -> &'static serde_json::Value {
    static DOCTOR: OnceLock<serde_json::Value> = OnceLock::new();
    DOCTOR.get_or_init(|| {
        let cache = std::env::var_os(DOCTOR_CACHE).map(std::path::PathBuf::from);
        if let Some(d) = cache.as_ref().and_then(|c| fs::read(c).ok()).and_then(|b| serde_json::from_slice(&b).ok()) {
            return d;
        }
        let d = run_doctor();
        if let Some(c) = cache {
            let tmp = c.with_extension("tmp");
            if fs::write(&tmp, d.to_string()).is_ok() {
                let _ = fs::rename(&tmp, &c);
            }
        }
        d
    })
}

fn run_doctor() -> serde_json::Value {
    let out = std::process::Command::new(crate::agent::agent_binary())
        .args(["doctor", "--json"])
        .output()
        .expect("running fence-agent doctor");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    // 0: every fence enforced; 3: some are not (this kernel without BPF LSM).
    let gaps = d["fences"].as_array().is_some_and(|f| f.iter().any(|r| r["enforced"] != true));
    let expected = if gaps { 3 } else { 0 };
    assert_eq!(out.status.code(), Some(expected), "doctor's exit status: {}", String::from_utf8_lossy(&out.stderr));
    d
}

/// `doctor`'s row for `fence` (every fence has one).
fn doctor_row(fence: &str) -> &'static serde_json::Value {
    doctor()["fences"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["fence"] == fence))
        .unwrap_or_else(|| panic!("doctor has no row for {fence}"))
}

/// How this host enforces `fence` (a row of `doctor`): `None` when it does not.
pub fn mechanism(fence: &str) -> Option<String> {
    let row = doctor_row(fence);
    (row["enforced"] == true).then(|| row["mechanism"].as_str().unwrap_or_default().to_owned())
}

/// The doctor's notes for `fence` (why it is not enforced, when it is not).
pub fn doctor_notes(fence: &str) -> String {
    doctor_row(fence)["notes"].to_string()
}

/// Processes in a test cgroup.
pub fn procs_in(cg: &TestCgroup) -> usize {
    fs::read_to_string(cg.dir.join("cgroup.procs")).map(|s| s.lines().count()).unwrap_or(0)
}

/// The tier these tests run in (`host`, `vm`), from FENCE_TEST_TIER.
pub fn test_tier() -> String {
    std::env::var("FENCE_TEST_TIER").unwrap_or_default()
}
