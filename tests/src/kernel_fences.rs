//! The exec, credential-file and unix-socket fences, end to end, with whatever mechanism this
//! kernel offers (BPF LSM in the vm tier; the tp_btf kill and fanotify fallbacks on this
//! machine's kernel). Each denial is asserted by its errno or signal and by its event; each
//! test also shows that what the policy allows still works and that unfenced processes are
//! not affected.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::Agent,
    env::{TempDir, TestCgroup, doctor, mechanism, slow_factor, wait_for},
    harness::{Test, skip},
    helper::{self, Outcome},
};

pub const TESTS: &[Test] = &[
    Test { name: "doctor_reports_each_fence_mechanism", run: doctor_reports_each_fence_mechanism },
    Test { name: "exec_allowed_runs_other_programs_denied", run: exec_allowed_runs_other_programs_denied },
    Test { name: "exec_symlink_hardlink_and_copy_denied", run: exec_symlink_hardlink_and_copy_denied },
    Test { name: "exec_memfd_denied", run: exec_memfd_denied },
    Test { name: "exec_script_needs_its_interpreter_allowed", run: exec_script_needs_its_interpreter_allowed },
    Test { name: "exec_audit_mode_and_unrestricted_identities", run: exec_audit_mode_and_unrestricted_identities },
    Test { name: "exec_sha256_pins_and_upgrades", run: exec_sha256_pins_and_upgrades },
    Test { name: "files_protected_under_every_name", run: files_protected_under_every_name },
    Test { name: "files_created_later_are_protected", run: files_created_later_are_protected },
    Test { name: "files_exceptions_and_default_set", run: files_exceptions_and_default_set },
    Test { name: "files_env_files_below_env_roots", run: files_env_files_below_env_roots },
    Test { name: "files_agent_gone_never_hangs_unfenced", run: files_agent_gone_never_hangs_unfenced },
    Test { name: "unix_allow_list_by_inode_and_name", run: unix_allow_list_by_inode_and_name },
    Test { name: "unix_host_default_deny", run: unix_host_default_deny },
];

fn policy(cgroup: &TestCgroup, mode: &str, sections: &str) -> String {
    format!(
        "schema: 1\nidentities:\n  - name: test-bot\n    owner: fence-tests\n    purpose: integration test\n    mode: {mode}\n    \
         selectors: [{{cgroup: \"{}\"}}]\n{sections}",
        cgroup.rel
    )
}

fn yaml_list(items: &[&Path]) -> String {
    let quoted: Vec<String> = items.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    format!("[{}]", quoted.join(", "))
}

pub(crate) fn copy_exec(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The event about `o` (by pid) of operation `op`.
pub(crate) fn event_of(agent: &Agent, o: &Outcome, op: &str) -> Value {
    agent.wait_event(&format!("for the {op} of pid {}", o.pid), |e| {
        e["process"]["pid"] == o.pid && e["fence"]["operation"] == op
    })
}

// ---------------------------------------------------------------------------------------
// doctor

fn doctor_reports_each_fence_mechanism() {
    let d = doctor();
    let probe =
        |t: &str| d["program_types"].as_array().unwrap().iter().find(|p| p["program_type"] == t).cloned().unwrap();
    let lsm = probe("lsm");
    let row = |f: &str| d["fences"].as_array().unwrap().iter().find(|r| r["fence"] == f).cloned().unwrap();
    assert_eq!(row("egress")["enforced"], true);
    // Grants end on the kernel clock everywhere; both test kernels can close connections.
    assert_eq!(row("grants")["enforced"], true, "{d:#}");
    assert!(row("grants")["notes"].as_str().unwrap_or_default().contains("SOCK_DESTROY"), "{d:#}");
    // Each row names the fence.mechanism values its events carry (the metric's labels).
    let events = |f: &str| -> Vec<String> {
        row(f)["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    assert!(events("egress").contains(&"cgroup/connect4".to_owned()), "{d:#}");
    if lsm["loads"] == true {
        for f in ["exec", "credential-files", "unix-sockets"] {
            assert_eq!(row(f)["enforced"], true, "{f} with BPF LSM: {d:#}");
            assert!(row(f)["mechanism"].as_str().unwrap().starts_with("lsm/"), "{f}: {d:#}");
            assert!(!events(f).is_empty() && events(f).iter().all(|m| m.starts_with("lsm/")), "{f}: {d:#}");
        }
    } else {
        let why = lsm["detail"].as_str().unwrap_or_default();
        assert!(!why.is_empty(), "LSM refused without a reason: {d:#}");
        assert_eq!(row("unix-sockets")["enforced"], false, "no LSM, no unix fence: {d:#}");
        assert!(
            row("unix-sockets")["remedy"].as_str().is_some_and(|r| r.contains(why)),
            "the remedy quotes the kernel: {d:#}"
        );
        let exec = row("exec");
        assert!(exec["mechanism"].as_str().unwrap().contains("SIGKILL") || exec["enforced"] == false, "{d:#}");
        assert!(!row("credential-files")["mechanism"].as_str().unwrap().starts_with("lsm/"), "{d:#}");
        assert_eq!(events("credential-files"), ["fanotify/open_perm"], "{d:#}");
        assert!(events("unix-sockets").is_empty(), "not enforced: no event values: {d:#}");
    }
    // This machine's own kernel refuses BPF LSM programs (see PLATFORM.md); Debian's allows them.
    match std::env::var("FENCE_TEST_TIER").as_deref() {
        Ok("host") => assert_eq!(lsm["loads"], false, "the host kernel is expected to refuse BPF LSM: {d:#}"),
        Ok("vm") => assert_eq!(lsm["loads"], true, "Debian's kernel is expected to load BPF LSM: {d:#}"),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// exec

pub(crate) struct Programs {
    _dir: TempDir,
    root: PathBuf,
    pub(crate) allowed: PathBuf,
    pub(crate) denied: PathBuf,
}

impl Programs {
    /// Copies of this test binary (each its own inode) under a fresh directory.
    pub(crate) fn new(test: &str) -> Programs {
        let dir = TempDir::new(test);
        let root = dir.0.clone();
        fs::create_dir_all(root.join("bin")).unwrap();
        let me = std::env::current_exe().unwrap();
        let allowed = root.join("bin/allowed-prog");
        let denied = root.join("bin/denied-prog");
        copy_exec(&me, &allowed);
        copy_exec(&me, &denied);
        Programs { _dir: dir, root, allowed, denied }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// Whether this host enforces exec by refusing (EPERM) or by killing; skips if neither.
pub(crate) fn exec_mechanism() -> String {
    mechanism("exec").unwrap_or_else(|| skip("the exec fence is not enforced on this kernel (see doctor)"))
}

use crate::exec_checks::assert_exec_event;
pub(crate) use crate::exec_checks::{assert_exec_denied, exec};

fn exec_allowed_runs_other_programs_denied() {
    let mech = exec_mechanism();
    let cg = TestCgroup::new("exec-basic");
    let p = Programs::new("exec-basic");
    let agent = Agent::start(
        "exec-basic",
        &policy(&cg, "enforce", &format!("    exec:\n      allow: {}\n", yaml_list(&[&p.allowed]))),
    );
    exec(&cg, &p.allowed).assert_ok("an allowed program runs");
    let o = exec(&cg, &p.denied);
    assert_exec_denied(&o, &mech, "a program not in the allow-list");
    let e = assert_exec_event(&agent, &o, &mech, "exec-not-allowed", "denied-prog");
    assert_eq!(e["fence"]["target"]["invoked_as"], s(&p.denied), "{e:#}");
    // Unfenced processes run anything.
    helper::run(None, &["exec", &s(&p.denied), "helper", "noop"]).assert_ok("unfenced exec of the same program");
}

fn exec_symlink_hardlink_and_copy_denied() {
    let mech = exec_mechanism();
    let cg = TestCgroup::new("exec-names");
    let p = Programs::new("exec-names");
    std::os::unix::fs::symlink(&p.denied, p.path("bin/via-symlink")).unwrap();
    fs::hard_link(&p.denied, p.path("bin/via-hardlink")).unwrap();
    copy_exec(&p.allowed, &p.path("bin/copy-of-allowed"));
    // A symlink to the allowed program is allowed: it is the same program.
    std::os::unix::fs::symlink(&p.allowed, p.path("bin/allowed-link")).unwrap();
    let agent = Agent::start(
        "exec-names",
        &policy(&cg, "enforce", &format!("    exec:\n      allow: {}\n", yaml_list(&[&p.allowed]))),
    );
    exec(&cg, &p.path("bin/allowed-link")).assert_ok("a symlink to an allowed program");
    for (name, expect_target) in
        [("via-symlink", "denied-prog"), ("via-hardlink", ""), ("copy-of-allowed", "copy-of-allowed")]
    {
        let o = exec(&cg, &p.path(&format!("bin/{name}")));
        assert_exec_denied(&o, &mech, name);
        assert_exec_event(&agent, &o, &mech, "exec-not-allowed", expect_target);
    }
}

fn exec_memfd_denied() {
    let mech = exec_mechanism();
    let cg = TestCgroup::new("exec-memfd");
    let p = Programs::new("exec-memfd");
    let agent = Agent::start(
        "exec-memfd",
        &policy(&cg, "enforce", &format!("    exec:\n      allow: {}\n", yaml_list(&[&p.allowed]))),
    );
    // The bytes of an allowed program, run from memory, are not the allowed program.
    let o = helper::run(Some(&cg), &["memfd-exec", &s(&p.allowed), "helper", "noop"]);
    assert_exec_denied(&o, &mech, "exec from a memfd");
    let e = assert_exec_event(&agent, &o, &mech, "exec-fileless", "");
    assert_eq!(e["fence"]["target"]["fileless"], true, "{e:#}");
    helper::run(None, &["memfd-exec", &s(&p.allowed), "helper", "noop"]).assert_ok("unfenced memfd exec");
}

fn exec_script_needs_its_interpreter_allowed() {
    let mech = exec_mechanism();
    let cg = TestCgroup::new("exec-script");
    let p = Programs::new("exec-script");
    let sh = fs::canonicalize("/bin/sh").expect("a /bin/sh");
    for d in ["ok", "bad"] {
        fs::create_dir_all(p.path(d)).unwrap();
        copy_exec(&sh, &p.path(&format!("{d}/sh")));
        let script = p.path(&format!("script-{d}"));
        fs::write(&script, format!("#!{}\necho '{{\"ok\":true}}'\n", p.path(&format!("{d}/sh")).display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let allow = yaml_list(&[&p.path("ok/sh"), &p.path("script-ok"), &p.path("script-bad")]);
    let agent = Agent::start("exec-script", &policy(&cg, "enforce", &format!("    exec:\n      allow: {allow}\n")));
    helper::run(Some(&cg), &["exec", &s(&p.path("script-ok"))]).assert_ok("a script whose interpreter is allowed");
    let o = helper::run(Some(&cg), &["exec", &s(&p.path("script-bad"))]);
    assert_exec_denied(&o, &mech, "a script whose interpreter is not allowed");
    assert_exec_event(&agent, &o, &mech, "exec-not-allowed", "sh");
    helper::run(None, &["exec", &s(&p.path("script-bad"))]).assert_ok("unfenced, the same script runs");
}

fn exec_audit_mode_and_unrestricted_identities() {
    exec_mechanism();
    let cg = TestCgroup::new("exec-audit");
    let p = Programs::new("exec-audit");
    let agent = Agent::start(
        "exec-audit",
        &policy(&cg, "audit", &format!("    exec:\n      allow: {}\n", yaml_list(&[&p.allowed]))),
    );
    let o = exec(&cg, &p.denied);
    o.assert_ok("audit mode lets the program run");
    let e = event_of(&agent, &o, "exec");
    assert_eq!(e["fence"]["verdict"], "would-deny", "{e:#}");
    drop(agent);
    // No exec section: exec is not restricted (and nothing is reported).
    let agent = Agent::start("exec-unrestricted", &policy(&cg, "enforce", ""));
    exec(&cg, &p.denied).assert_ok("an identity without an exec allow-list runs anything");
    let barrier = helper::run(Some(&cg), &["tcp-connect", "127.0.0.1:9"]);
    agent.wait_event("for the barrier", |e| e["process"]["pid"] == barrier.pid);
    assert!(agent.events().iter().all(|e| e["fence"]["operation"] != "exec"), "{:#?}", agent.events());
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn exec_sha256_pins_and_upgrades() {
    let mech = exec_mechanism();
    let cg = TestCgroup::new("exec-pins");
    let p = Programs::new("exec-pins");
    let upgraded = p.path("bin/upgraded");
    copy_exec(&p.allowed, &upgraded);
    let wrong = "0".repeat(64);
    let sections = format!(
        "    exec:\n      allow:\n        - {{path: {:?}, sha256: {:?}}}\n        - {{path: {:?}, sha256: {wrong:?}}}\n        - {:?}\n",
        s(&p.allowed),
        sha256_hex(&p.allowed),
        s(&p.denied),
        s(&upgraded)
    );
    let agent = Agent::start("exec-pins", &policy(&cg, "enforce", &sections));
    assert!(agent.stderr_text().contains("sha256 does not match"), "the agent must say why: {}", agent.stderr_text());
    exec(&cg, &p.allowed).assert_ok("a program whose pinned sha256 matches");
    let o = exec(&cg, &p.denied);
    assert_exec_denied(&o, &mech, "a program whose pinned sha256 does not match");
    exec(&cg, &upgraded).assert_ok("an allowed program before its upgrade");
    // An upgrade replaces the file (new inode): the agent follows the path.
    let started = Instant::now();
    let staged = p.path("bin/.upgraded.new");
    copy_exec(&p.allowed, &staged);
    fs::rename(&staged, &upgraded).unwrap();
    wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || exec(&cg, &upgraded).ok().then_some(()))
        .expect("an upgraded program must be allowed again once the agent re-resolves it");
    eprintln!("note: the upgraded program was allowed {} ms after the rename", started.elapsed().as_millis());
    // Writing into a pinned program changes its hash: it is no longer allowed.
    std::io::Write::write_all(&mut fs::OpenOptions::new().append(true).open(&p.allowed).unwrap(), b"tampered").unwrap();
    wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || (!exec(&cg, &p.allowed).ok()).then_some(()))
        .expect("a pinned program modified in place must stop being allowed");
}

// ---------------------------------------------------------------------------------------
// files

pub(crate) fn file_mechanism() -> String {
    mechanism("credential-files")
        .unwrap_or_else(|| skip("the credential-file fence is not enforced on this kernel (see doctor)"))
}

pub(crate) fn open(cg: Option<&TestCgroup>, path: &Path) -> Outcome {
    helper::run(cg, &["open", &s(path)])
}

#[track_caller]
fn assert_file_event(agent: &Agent, o: &Outcome, mech: &str) -> Value {
    let e = event_of(agent, o, "open");
    assert_eq!(e["fence"]["verdict"], "denied", "{e:#}");
    assert_eq!(e["fence"]["reason"], "file-protected", "{e:#}");
    let expect = if mech.starts_with("lsm/") { "lsm/file_open" } else { "fanotify/open_perm" };
    assert_eq!(e["fence"]["mechanism"], expect, "{e:#}");
    assert!(e["fence"]["rule"].as_str().is_some_and(|r| r.starts_with("protect:")), "{e:#}");
    assert!(e["file"]["inode"].as_str().is_some(), "{e:#}");
    e
}

struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new(test: &str) -> Secrets {
        let dir = TempDir::new(test);
        for d in ["secrets", "vault/sub", "keys", "elsewhere", "public"] {
            fs::create_dir_all(dir.path(d)).unwrap();
        }
        fs::write(dir.path("secrets/token"), "s3cr3t").unwrap();
        fs::write(dir.path("vault/db.json"), "{}").unwrap();
        fs::write(dir.path("vault/sub/deep.json"), "{}").unwrap();
        fs::write(dir.path("keys/a.key"), "k").unwrap();
        fs::write(dir.path("public/readme"), "hello").unwrap();
        Secrets { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path(rel)
    }

    /// agent.toml protecting the test's own files (not the host's).
    fn config(&self) -> String {
        format!(
            "[protect]\ndefaults = false\npaths = [{:?}, {:?}, {:?}]\n",
            s(&self.p("secrets/token")),
            format!("{}/**", s(&self.p("vault"))),
            format!("{}/*.key", s(&self.p("keys")))
        )
    }
}

fn files_protected_under_every_name() {
    let mech = file_mechanism();
    let cg = TestCgroup::new("files-names");
    let sec = Secrets::new("files-names");
    std::os::unix::fs::symlink(sec.p("secrets/token"), sec.p("elsewhere/symlink")).unwrap();
    fs::hard_link(sec.p("secrets/token"), sec.p("elsewhere/hardlink")).unwrap();
    fs::write(sec.p("elsewhere/bind-target"), "").unwrap();
    let agent = Agent::start_with("files-names", &policy(&cg, "enforce", ""), &sec.config());
    open(Some(&cg), &sec.p("public/readme")).assert_ok("an unprotected file");
    let cases = [
        ("directly", sec.p("secrets/token")),
        ("through a symlink", sec.p("elsewhere/symlink")),
        ("through a hard link", sec.p("elsewhere/hardlink")),
        ("inside a protected directory", sec.p("vault/db.json")),
        ("deep inside a protected directory", sec.p("vault/sub/deep.json")),
        ("by a glob", sec.p("keys/a.key")),
    ];
    for (how, path) in &cases {
        let o = open(Some(&cg), path);
        o.assert_eperm(&format!("a protected file {how}"));
        assert_file_event(&agent, &o, &mech);
    }
    let o = helper::run(Some(&cg), &["open-bind", &s(&sec.p("secrets/token")), &s(&sec.p("elsewhere/bind-target"))]);
    o.assert_eperm("a protected file through a bind mount");
    assert_file_event(&agent, &o, &mech);
    // Renamed away from its protected path, it is still the same file.
    let handled = agent.handled();
    fs::rename(sec.p("secrets/token"), sec.p("elsewhere/renamed")).unwrap();
    open(Some(&cg), &sec.p("elsewhere/renamed")).assert_eperm("a protected file after a rename");
    // The agent saw the rename (inotify) and resolved its paths again.
    agent.wait_handled(handled);
    let o = open(Some(&cg), &sec.p("elsewhere/renamed"));
    o.assert_eperm("a renamed protected file, after the agent re-resolved its paths");
    assert_file_event(&agent, &o, &mech);
    // Unfenced processes read everything.
    for path in [sec.p("elsewhere/renamed"), sec.p("vault/db.json"), sec.p("keys/a.key"), sec.p("elsewhere/hardlink")] {
        open(None, &path).assert_ok("unfenced read of a protected file");
    }
    helper::run(None, &["open-bind", &s(&sec.p("elsewhere/renamed")), &s(&sec.p("elsewhere/bind-target"))])
        .assert_ok("unfenced read through a bind mount");
}

fn files_created_later_are_protected() {
    let mech = file_mechanism();
    let cg = TestCgroup::new("files-later");
    let sec = Secrets::new("files-later");
    let agent = Agent::start_with("files-later", &policy(&cg, "enforce", ""), &sec.config());
    // Inside a protected directory: protected from its creation.
    fs::write(sec.p("vault/new.json"), "{}").unwrap();
    fs::create_dir_all(sec.p("vault/newdir")).unwrap();
    let o = open(Some(&cg), &sec.p("vault/new.json"));
    o.assert_eperm("a file created in a protected directory after the agent started");
    assert_file_event(&agent, &o, &mech);
    // Matching a file glob: protected once the agent sees it (it watches the directory).
    let started = Instant::now();
    fs::write(sec.p("keys/late.key"), "k").unwrap();
    let denied = wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        let o = open(Some(&cg), &sec.p("keys/late.key"));
        (o.errno == Some(libc::EPERM)).then_some(o)
    })
    .expect("a file matching a protected glob, created after start, must become protected");
    eprintln!("note: keys/late.key protected {} ms after it was created", started.elapsed().as_millis());
    assert_file_event(&agent, &denied, &mech);
    // A file replaced under a protected name (write temp + rename, like passwd does).
    fs::write(sec.p("secrets/token.tmp"), "new").unwrap();
    fs::rename(sec.p("secrets/token.tmp"), sec.p("secrets/token")).unwrap();
    wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        (open(Some(&cg), &sec.p("secrets/token")).errno == Some(libc::EPERM)).then_some(())
    })
    .expect("a protected file replaced by rename must stay protected");
    // A directory created later inside a protected directory, and a file in it.
    fs::create_dir_all(sec.p("vault/later/deeper")).unwrap();
    fs::write(sec.p("vault/later/deeper/x.json"), "{}").unwrap();
    wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        (open(Some(&cg), &sec.p("vault/later/deeper/x.json")).errno == Some(libc::EPERM)).then_some(())
    })
    .expect("a file in a directory created later inside a protected directory must be protected");
    open(None, &sec.p("keys/late.key")).assert_ok("unfenced");
    open(None, &sec.p("vault/later/deeper/x.json")).assert_ok("unfenced");
}

fn files_env_files_below_env_roots() {
    let mech = file_mechanism();
    let cg = TestCgroup::new("files-env");
    let dir = TempDir::new("files-env");
    for d in ["app/sub", "elsewhere"] {
        fs::create_dir_all(dir.path(d)).unwrap();
    }
    for f in ["app/.env", "app/sub/.env.local", "app/sub/config.yml", "elsewhere/.env"] {
        fs::write(dir.path(f), "API_KEY=x").unwrap();
    }
    let config = format!("[protect]\ndefaults = false\nenv_roots = [{:?}]\n", s(&dir.path("app")));
    let agent = Agent::start_with("files-env", &policy(&cg, "enforce", ""), &config);
    for f in ["app/.env", "app/sub/.env.local"] {
        let o = open(Some(&cg), &dir.path(f));
        o.assert_eperm(&format!("{f} below an env root"));
        assert_file_event(&agent, &o, &mech);
    }
    open(Some(&cg), &dir.path("app/sub/config.yml")).assert_ok("other files below an env root");
    open(Some(&cg), &dir.path("elsewhere/.env")).assert_ok("a .env outside the env roots");
    fs::create_dir_all(dir.path("app/new")).unwrap();
    fs::write(dir.path("app/new/.env"), "TOKEN=y").unwrap();
    wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        (open(Some(&cg), &dir.path("app/new/.env")).errno == Some(libc::EPERM)).then_some(())
    })
    .expect("a .env created later below an env root must be protected");
    open(None, &dir.path("app/.env")).assert_ok("unfenced");
}

fn files_exceptions_and_default_set() {
    let mech = file_mechanism();
    let cg = TestCgroup::new("files-except");
    let sec = Secrets::new("files-except");
    let sections =
        format!("    files:\n      allow: {}\n", yaml_list(&[&sec.p("vault/db.json"), &sec.p("keys/a.key")]));
    let agent = Agent::start_with("files-except", &policy(&cg, "enforce", &sections), &sec.config());
    open(Some(&cg), &sec.p("vault/db.json")).assert_ok("an exception inside a protected directory");
    open(Some(&cg), &sec.p("keys/a.key")).assert_ok("an exception for a protected file");
    let o = open(Some(&cg), &sec.p("vault/sub/deep.json"));
    o.assert_eperm("the rest of the protected directory");
    assert_file_event(&agent, &o, &mech);
    drop(agent);
    // The built-in set covers /etc/shadow (the vm tier's initramfs gets one for this test).
    if !Path::new("/etc/shadow").exists() {
        fs::write("/etc/shadow", "root:*:19000:0:99999:7:::\n").expect("creating /etc/shadow in the test VM");
    }
    let agent = Agent::start_with("files-defaults", &policy(&cg, "enforce", ""), "[protect]\ndefaults = true\n");
    let o = open(Some(&cg), Path::new("/etc/shadow"));
    o.assert_eperm("/etc/shadow is in the default protected set");
    let e = assert_file_event(&agent, &o, &mech);
    assert_eq!(e["file"]["path"], "/etc/shadow", "{e:#}");
    open(None, Path::new("/etc/shadow")).assert_ok("unfenced root reads /etc/shadow");
}

fn files_agent_gone_never_hangs_unfenced() {
    file_mechanism();
    let cg = TestCgroup::new("files-gone");
    let sec = Secrets::new("files-gone");
    let mut agent = Agent::start_with("files-gone", &policy(&cg, "enforce", ""), &sec.config());
    open(Some(&cg), &sec.p("secrets/token")).assert_eperm("protected while the agent runs");
    // Killed without a chance to clean up: the kernel must release every open.
    nix::sys::signal::kill(agent.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.wait_exit(Duration::from_secs(10));
    let started = Instant::now();
    open(None, &sec.p("secrets/token")).assert_ok("an unfenced open after the agent died");
    assert!(started.elapsed() < Duration::from_secs(10), "the open must not wait for the dead agent");
}

// ---------------------------------------------------------------------------------------
// unix sockets

fn unix_mechanism() {
    if mechanism("unix-sockets").is_none() {
        skip("the unix-socket fence needs BPF LSM, which this kernel refuses (see doctor)");
    }
}

struct Sockets {
    dir: TempDir,
    _listeners: Vec<std::os::unix::net::UnixListener>,
    _datagrams: Vec<std::os::unix::net::UnixDatagram>,
    tag: String,
}

impl Sockets {
    fn new(test: &str) -> Sockets {
        use std::os::linux::net::SocketAddrExt as _;
        let dir = TempDir::new(test);
        let tag = format!("fence-test-{}", std::process::id());
        let mut listeners = Vec::new();
        for name in ["ok.sock", "other.sock", "docker.sock"] {
            listeners.push(std::os::unix::net::UnixListener::bind(dir.path(name)).unwrap());
        }
        for name in ["ok", "other"] {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!("{tag}-{name}").as_bytes()).unwrap();
            listeners.push(std::os::unix::net::UnixListener::bind_addr(&addr).unwrap());
        }
        let datagrams = ["ok.dgram", "other.dgram"]
            .iter()
            .map(|n| std::os::unix::net::UnixDatagram::bind(dir.path(n)).unwrap())
            .collect();
        std::os::unix::fs::symlink(dir.path("other.sock"), dir.path("link-to-other.sock")).unwrap();
        Sockets { dir, _listeners: listeners, _datagrams: datagrams, tag }
    }

    fn p(&self, rel: &str) -> String {
        s(&self.dir.path(rel))
    }
}

fn unix_allow_list_by_inode_and_name() {
    unix_mechanism();
    let cg = TestCgroup::new("unix-allow");
    let so = Sockets::new("unix-allow");
    let sections =
        format!("    unix:\n      allow: [{:?}, {:?}, \"@{}-ok\"]\n", so.p("ok.sock"), so.p("ok.dgram"), so.tag);
    let agent = Agent::start("unix-allow", &policy(&cg, "enforce", &sections));
    helper::run(Some(&cg), &["unix-connect", &so.p("ok.sock")]).assert_ok("a listed socket");
    helper::run(Some(&cg), &["unix-connect", &format!("@{}-ok", so.tag)]).assert_ok("a listed abstract socket");
    helper::run(Some(&cg), &["unix-send", &so.p("ok.dgram")]).assert_ok("a listed datagram socket");
    for (what, target, op) in [
        ("an unlisted socket", so.p("other.sock"), "unix-connect"),
        ("an unlisted socket through a symlink", so.p("link-to-other.sock"), "unix-connect"),
        ("an unlisted abstract socket", format!("@{}-other", so.tag), "unix-connect"),
        ("an unlisted datagram socket", so.p("other.dgram"), "unix-send"),
    ] {
        let o = helper::run(Some(&cg), &[op, &target]);
        o.assert_eperm(what);
        let e = event_of(&agent, &o, op);
        assert_eq!(e["fence"]["reason"], "unix-not-allowed", "{e:#}");
        assert!(e["fence"]["mechanism"].as_str().unwrap().starts_with("lsm/unix_"), "{e:#}");
        let path = e["fence"]["target"]["path"].as_str().unwrap();
        let expect = if target.starts_with('@') { target.clone() } else { "other.".into() };
        assert!(path.contains(&expect), "target {path:?} for {what}: {e:#}");
    }
    helper::run(None, &["unix-connect", &so.p("other.sock")]).assert_ok("unfenced");
}

fn unix_host_default_deny() {
    unix_mechanism();
    let cg = TestCgroup::new("unix-host");
    let so = Sockets::new("unix-host");
    let config = format!("[unix]\ndefaults = false\ndeny = [{:?}]\n", so.p("docker.sock"));
    let agent = Agent::start_with("unix-host", &policy(&cg, "enforce", ""), &config);
    helper::run(Some(&cg), &["unix-connect", &so.p("other.sock")])
        .assert_ok("without an allow-list, other sockets work");
    let o = helper::run(Some(&cg), &["unix-connect", &so.p("docker.sock")]);
    o.assert_eperm("a socket in the host's default-deny set");
    let e = event_of(&agent, &o, "unix-connect");
    assert_eq!(e["fence"]["reason"], "unix-host-denied", "{e:#}");
    assert_eq!(e["fence"]["rule"], "host-denied-sockets", "{e:#}");
    helper::run(None, &["unix-connect", &so.p("docker.sock")]).assert_ok("unfenced");
}
