//! The bypasses found by attacking the fence from inside (issue 16, B1-B13), each tried again
//! here as the attacker would, with the unfenced control beside it. Where a fix needs BPF LSM
//! (the vm tier), this machine's kernel shows what the fallback does instead, and the test
//! says which parts it could not check there. Three agent starts in all: one per test.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, doctor_notes, mechanism, slow_factor, test_tier, wait_for},
    harness::{Test, note},
    helper::{self, Outcome},
};

pub const TESTS: &[Test] = &[
    Test { name: "bypass_files_follow_the_inode", run: files_follow_the_inode },
    Test { name: "bypass_network_source_routes_families_sysctl", run: network_source_routes_families_sysctl },
    Test { name: "bypass_signals_terminals_cgroups_sockets", run: signals_terminals_cgroups_sockets },
];

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Whether `fence` is enforced with BPF LSM. The vm tier boots a kernel that runs BPF LSM, so
/// there it must be: a program the verifier refuses is a defect, not a missing feature.
fn lsm(fence: &str) -> bool {
    let on = mechanism(fence).is_some_and(|m| m.contains("lsm"));
    assert!(on || test_tier() != "vm", "{fence} is not enforced with BPF LSM in the vm tier: {}", doctor_notes(fence));
    on
}

/// The denied event of operation `op` by the helper of `o`.
#[track_caller]
fn denied_event(agent: &Agent, o: &Outcome, op: &str) -> Value {
    let e = agent.wait_event(&format!("for the {op} of pid {}", o.pid), |e| {
        e["process"]["pid"] == o.pid && e["fence"]["operation"] == op
    });
    assert_eq!(e["fence"]["verdict"], "denied", "{e:#}");
    e
}

fn nested(root: &Path, levels: usize) -> PathBuf {
    (0..levels).fold(root.to_path_buf(), |p, i| p.join(format!("d{i}")))
}

fn policy(cg: &TestCgroup, sections: &str) -> String {
    format!(
        "schema: 1\nidentities:\n  - name: attacker\n    owner: fence-tests\n    purpose: bypass tests\n    \
         selectors: [{{cgroup: \"{}\"}}, {{managed: true}}]\n{sections}",
        cg.rel
    )
}

// ---------------------------------------------------------------------------------------
// B1, B8, B9, B11, B12 and the logs: protection follows the inode, not the path

fn files_follow_the_inode() {
    let files = mechanism("credential-files")
        .unwrap_or_else(|| crate::harness::skip("the credential-file fence is not enforced on this kernel"));
    let lsm = files.starts_with("lsm/");
    let cg = TestCgroup::new("bypass-files");
    let dir = TempDir::new("bypass-files");
    let p = |rel: &str| dir.path(rel);
    for d in ["vault/sub", "vault/move", "elsewhere", "unwatched", "bin"] {
        fs::create_dir_all(p(d)).unwrap();
    }
    for f in ["vault/db.json", "vault/sub/deep.json", "vault/move/inner.json"] {
        fs::write(p(f), "secret").unwrap();
    }
    // 40 directories below the tree's root, and 40 below a directory nothing protects.
    let deep_secret = nested(&p("vault"), 40).join("deep.key");
    let deep_free = nested(&p("free"), 40).join("free.txt");
    let mid_free = nested(&p("free"), 20).join("mid.txt");
    for f in [&deep_secret, &deep_free, &mid_free] {
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, "x").unwrap();
    }
    // A hard link made (by the owner) before the agent started, outside the tree.
    fs::hard_link(p("vault/db.json"), p("elsewhere/pre-link")).unwrap();
    // A sha256-pinned program, and another name for it in a directory the policy never names.
    let prog = p("bin/pinned");
    fs::copy(std::env::current_exe().unwrap(), &prog).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(&prog, p("unwatched/alias")).unwrap();
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(fs::read(&prog).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let pins = PathBuf::from(format!("/sys/fs/bpf/fence-test-bypass-{}", std::process::id()));
    let _pins = crate::persist::Pins(pins.clone());
    let state = TempDir::new("bypass-state");
    let config = format!(
        "[protect]\ndefaults = false\npaths = [{:?}]\n[persist]\nenabled = true\npin_dir = {:?}\nstate_dir = {:?}\n",
        format!("{}/**", s(&p("vault"))),
        s(&pins),
        s(&state.0)
    );
    let sections = format!("    exec:\n      allow:\n        - {{path: {:?}, sha256: {digest:?}}}\n", s(&prog));
    let agent = Agent::start_with("bypass-files", &policy(&cg, &sections), &config);
    let fenced = |args: &[&str]| helper::run(Some(&cg), args);
    let open_denied = |path: &Path, what: &str| {
        let o = fenced(&["open", &s(path)]);
        o.assert_eperm(what);
        let e = denied_event(&agent, &o, "open");
        assert_eq!(e["fence"]["reason"], "file-protected", "{what}: {e:#}");
    };

    // B1: another name made before the agent started.
    open_denied(&p("elsewhere/pre-link"), "a tree member through a hard link made before the agent started");
    // B1: a new name made from inside the fence, and the file moved out of the tree.
    let handled = agent.handled();
    for (op, from, to) in [
        ("link", "vault/db.json", "elsewhere/fenced-link"),
        ("rename", "vault/sub/deep.json", "elsewhere/moved.json"),
        ("rename", "vault/move", "elsewhere/move"),
    ] {
        let o = fenced(&[op, &s(&p(from)), &s(&p(to))]);
        if lsm {
            o.assert_eperm(&format!("{op} of a protected tree member"));
            let e = denied_event(&agent, &o, op);
            assert_eq!(e["fence"]["reason"], "file-protected", "{e:#}");
            // The owner (unfenced) does the same, which the fence must survive too.
            helper::run(None, &[op, &s(&p(from)), &s(&p(to))]).assert_ok(&format!("unfenced {op}"));
        } else {
            // No hook refuses it here; what it leads to must still be protected.
            o.assert_ok(&format!("{op} (no BPF LSM: not refused)"));
        }
    }
    fs::write(p("elsewhere/move/created-later.json"), "new").unwrap();
    // The renames out of the watched tree are resolved again (perhaps in more than one
    // burst); the held inodes must survive that.
    agent.wait_settled(handled);
    for (what, path) in [
        ("B1: a hard link made from inside the fence", p("elsewhere/fenced-link")),
        ("B1: a tree member renamed out of the tree", p("elsewhere/moved.json")),
        ("B11: a file of a tree directory renamed out of the tree", p("elsewhere/move/inner.json")),
        ("B11: a file created in that directory afterwards", p("elsewhere/move/created-later.json")),
        ("B12: a file 40 directories below the tree's root", deep_secret.clone()),
    ] {
        open_denied(&path, what);
    }
    // B12 with BPF LSM: deeper than the kernel walks is refused, not guessed about.
    let o = fenced(&["open", &s(&deep_free)]);
    if lsm {
        o.assert_eperm("a file more than 32 directories deep");
        assert_eq!(denied_event(&agent, &o, "open")["fence"]["reason"], "path-too-deep");
    } else {
        o.assert_ok("an unprotected deep file (fanotify marks only protected inodes)");
    }
    fenced(&["open", &s(&mid_free)]).assert_ok("a file 20 directories deep opens");
    for path in [p("elsewhere/pre-link"), p("elsewhere/moved.json"), deep_secret.clone(), deep_free.clone()] {
        helper::run(None, &["open", &s(&path)]).assert_ok("unfenced");
    }

    // The agent's own logs: not readable, and (BPF LSM) neither truncated nor removed.
    open_denied(&agent.events, "the agent's event log");
    if lsm {
        for op in ["truncate", "unlink"] {
            let o = fenced(&[op, &s(&agent.events)]);
            o.assert_eperm(&format!("{op} of the event log"));
            denied_event(&agent, &o, op);
        }
    }

    // B9: fence's pins (BPF LSM: unlink refused; without it a fenced root has bpf(2) anyway).
    if lsm {
        let pin = find_file(&pins).expect("a pinned object under the pin directory");
        let o = fenced(&["unlink", &s(&pin)]);
        o.assert_eperm("unlinking one of fence's pins");
        assert_eq!(denied_event(&agent, &o, "unlink")["fence"]["reason"], "fence-state");
        assert!(pin.exists(), "the pin is still there");
    }

    // B8: the pinned program may run; (BPF LSM) the identity cannot rewrite it; a write
    // through a name the agent does not watch is seen on the inode, and the pin checked again.
    fenced(&["exec", &s(&prog), "helper", "noop"]).assert_ok("the pinned program, unchanged");
    if lsm {
        let o = fenced(&["open-write", &s(&prog)]);
        o.assert_eperm("opening an allowed program for writing");
        assert_eq!(denied_event(&agent, &o, "open")["fence"]["reason"], "program-write");
        let o = fenced(&["open-write", &s(&p("unwatched/alias"))]);
        o.assert_eperm("the same, through another name");
    }
    let handled = agent.handled();
    {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new().append(true).open(p("unwatched/alias")).unwrap();
        f.write_all(b"tampered").unwrap();
    }
    agent.wait_handled(handled);
    let o = wait_for(Duration::from_secs(5 * u64::from(slow_factor())), || {
        let o = fenced(&["exec", &s(&prog), "helper", "noop"]);
        (!o.ok()).then_some(o)
    })
    .expect("B8: a pinned program rewritten through another name must stop being allowed");
    let e = agent.wait_event("for the exec of the rewritten program", |e| {
        e["process"]["pid"] == o.pid && e["fence"]["operation"] == "exec"
    });
    assert_eq!(e["fence"]["reason"], "exec-not-allowed", "{e:#}");
    assert!(e["fence"]["verdict"] == "denied" || e["fence"]["verdict"] == "killed", "{e:#}");
    helper::run(None, &["exec", &s(&prog), "helper", "noop"]).assert_ok("unfenced, it runs");
    if !lsm {
        note("without BPF LSM: link/rename/truncate/unlink are not refused, only what they lead to (checked)");
    }
}

/// Some regular file below `dir` (pins are files in bpffs).
fn find_file(dir: &Path) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let t = e.file_type().ok()?;
        if t.is_file() {
            return Some(e.path());
        }
        if t.is_dir()
            && let Some(f) = find_file(&e.path())
        {
            return Some(f);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// B2, B3, B10, sysctls

fn network_source_routes_families_sysctl() {
    let udp4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp4.local_addr().unwrap().port();
    let udp6 = std::net::UdpSocket::bind(format!("[::1]:{port}")).ok();
    let cg = TestCgroup::new("bypass-net");
    let sections =
        format!("    egress:\n      - to: [127.0.0.1, \"::1\"]\n        ports: [{port}]\n        protocol: udp\n");
    let agent = Agent::start("bypass-net", &policy(&cg, &sections));
    let to4 = format!("127.0.0.1:{port}");
    let to6 = format!("[::1]:{port}");
    let fenced = |args: &[&str]| helper::run(Some(&cg), args);
    fenced(&["udp-sendto", &to4]).assert_ok("an allowed datagram");

    // B3: an IPv4 loose source route.
    check_source_route(&agent, &cg, "udp-lsrr", &to4);
    // B2: an IPv6 routing header, by setsockopt and as ancillary data.
    if udp6.is_some() {
        fenced(&["udp-sendto", &to6]).assert_ok("an allowed IPv6 datagram");
        check_source_route(&agent, &cg, "udp-rthdr", &to6);
        check_source_route(&agent, &cg, "udp-rthdr-cmsg", &to6);
    } else {
        note("no ::1 on this host: IPv6 routing headers not tried");
    }

    // B10: address families the cgroup socket hooks never see.
    if mechanism("egress").is_some_and(|m| m.contains("lsm/socket_create")) {
        for (family, kind) in [("vsock", "stream"), ("xdp", "raw0"), ("packet", "dgram")] {
            let o = fenced(&["socket", family, kind]);
            o.assert_eperm(&format!("an AF_{} socket", family.to_uppercase()));
            let e = denied_event(&agent, &o, "socket");
            assert_eq!(e["fence"]["mechanism"], "lsm/socket_create", "{e:#}");
            assert_eq!(e["fence"]["reason"], "socket-kind-not-allowed", "{e:#}");
            let u = helper::run(None, &["socket", family, kind]);
            assert_ne!(u.errno, Some(libc::EPERM), "unfenced, the kernel decides: {}", u.raw);
        }
    } else {
        note("B10 not checked: AF_VSOCK/AF_XDP/AF_PACKET need lsm/socket_create (BPF LSM), refused here");
    }

    // Host settings: sysctls readable, not writable (cgroup/sysctl, every kernel).
    if mechanism("host-settings").is_some() {
        fenced(&["open", "/proc/sys/kernel/domainname"]).assert_ok("reading a sysctl");
        let o = fenced(&["sysctl-rewrite", "kernel/domainname"]);
        o.assert_eperm("writing a sysctl (its own value)");
        let e = denied_event(&agent, &o, "sysctl-write");
        assert_eq!(e["fence"]["target"]["kind"], "sysctl", "{e:#}");
        assert_eq!(e["fence"]["target"]["path"], "kernel/domainname", "{e:#}");
        helper::run(None, &["sysctl-rewrite", "kernel/domainname"]).assert_ok("unfenced sysctl write");
    } else {
        note("host-settings not enforced here (cgroup/sysctl refused)");
    }
}

#[track_caller]
fn check_source_route(agent: &Agent, cg: &TestCgroup, action: &str, to: &str) {
    let unfenced = helper::run(None, &[action, to]);
    if !unfenced.ok() {
        note(format!("{action}: the kernel refuses it even unfenced ({}); nothing to fence", unfenced.raw));
        return;
    }
    let o = helper::run(Some(cg), &[action, to]);
    o.assert_eperm(&format!("{action}: a source-routed packet to an allowed address"));
    let e = agent.wait_event(&format!("for the {action} packet"), |e| {
        e["fence"]["operation"] == "packet" && e["fence"]["cgroup"]["id"] == cg.id()
    });
    assert_eq!(e["fence"]["reason"], "source-routing", "{e:#}");
    assert_eq!(e["fence"]["mechanism"], "cgroup_skb/egress", "{e:#}");
    assert_eq!(e["fence"]["identity"], "attacker", "{e:#}");
}

// ---------------------------------------------------------------------------------------
// B4, B5, B6, B7, B13

fn signals_terminals_cgroups_sockets() {
    let escape = lsm("no-way-out");
    let unix = lsm("unix-sockets");
    let cg = TestCgroup::new("bypass-escape");
    let outside = TestCgroup::new("bypass-outside");
    // B7: a per-user service manager and session bus (a uid no one uses).
    let uid = 4_000_000 + std::process::id() % 100_000;
    let user_dir = PathBuf::from(format!("/run/user/{uid}"));
    let _user = RemoveOnDrop(user_dir.clone());
    fs::create_dir_all(user_dir.join("systemd")).unwrap();
    let _bus = std::os::unix::net::UnixListener::bind(user_dir.join("bus")).unwrap();
    let _manager = std::os::unix::net::UnixListener::bind(user_dir.join("systemd/private")).unwrap();
    let agent = Agent::start("bypass-escape", &policy(&cg, ""));
    let fenced = |args: &[&str]| helper::run(Some(&cg), args);
    let me = std::process::id().to_string();

    if escape {
        // B4: SIGIO/SIGURG aimed outside the identity.
        fenced(&["setown", "0"]).assert_ok("F_SETOWN to nobody");
        for action in ["setown", "setown-ex"] {
            let o = fenced(&[action, &me]);
            o.assert_eperm(&format!("{action} to a process outside the identity"));
            let e = denied_event(&agent, &o, "set-owner");
            assert_eq!(e["fence"]["target"]["pid"], std::process::id(), "{e:#}");
        }
        helper::run(None, &["setown", &me]).assert_ok("unfenced F_SETOWN");
        // The signal itself is judged when a fenced task's I/O raises it, unless an unfenced
        // process chose itself as the receiver: a daemon's SIGIO on a pipe a fenced process
        // writes into is its own.
        let cgroup = s(&cg.dir);
        let o = helper::run(None, &["sigio-from", &cgroup]);
        o.assert_ok("an unfenced owner of its own pipe");
        assert_eq!((o.raw["child_exit"].as_i64(), o.raw["sigio"].as_bool()), (Some(0), Some(true)), "{}", o.raw);
        // A fenced task that changes the file's signal (F_SETSIG: SIGKILL, say) makes it the
        // fenced task's choice: refused, and logged.
        let o = helper::run(None, &["sigio-from", &cgroup, "--setsig"]);
        o.assert_ok("an unfenced owner of its own pipe, whose signal a fenced task changed");
        assert_eq!((o.raw["child_exit"].as_i64(), o.raw["sigio"].as_bool()), (Some(0), Some(false)), "{}", o.raw);
        let e = agent.wait_event("for the signal a fenced task chose", |e| {
            e["process"]["pid"] == o.raw["child"] && e["fence"]["operation"] == "signal"
        });
        assert_eq!(e["fence"]["mechanism"], "lsm/file_send_sigiotask", "{e:#}");
        // The same pipe with another process as the receiver, chosen by the unfenced writer's
        // parent: refused when the fenced child's write raises it (the receiver lives).
        let mut receiver = Command::new("sleep").arg("30").stdout(Stdio::null()).spawn().unwrap();
        let receiver_pid = receiver.id();
        let o = helper::run(None, &["sigio-from", &cgroup, &receiver_pid.to_string()]);
        let alive = receiver.try_wait().expect("the receiver's status").is_none();
        let _ = receiver.kill();
        let _ = receiver.wait();
        o.assert_ok("an unfenced owner aiming its pipe's SIGIO at another process");
        assert_eq!(o.raw["child_exit"].as_i64(), Some(0), "{}", o.raw);
        let e = agent.wait_event("for the SIGIO to another process", |e| {
            e["process"]["pid"] == o.raw["child"] && e["fence"]["operation"] == "signal"
        });
        assert_eq!(e["fence"]["mechanism"], "lsm/file_send_sigiotask", "{e:#}");
        assert_eq!(
            (&e["fence"]["target"]["pid"], &e["fence"]["verdict"]),
            (&receiver_pid.into(), &"denied".into()),
            "{e:#}"
        );
        assert!(alive, "SIGIO (whose default ends a process) never reached the receiver");
        // O_ASYNC on a terminal makes its foreground process group (an administrator's job)
        // the receiver, raised by whoever types: refused, by fcntl and by ioctl.
        for how in [&["async-tty"][..], &["async-tty", "--ioctl"]] {
            let o = fenced(how);
            o.assert_eperm(&format!("{how:?}: O_ASYNC on a terminal"));
            denied_event(&agent, &o, "set-owner");
            helper::run(None, how).assert_ok(&format!("{how:?} unfenced"));
        }

        // B5: the agent (or any process outside) pulled into the fenced cgroup.
        let procs = s(&cg.dir.join("cgroup.procs"));
        let agent_pid = agent.pid().as_raw().to_string();
        let o = fenced(&["write-file", &procs, &agent_pid]);
        o.assert_eperm("pulling the agent into the fenced cgroup");
        let e = denied_event(&agent, &o, "cgroup-migrate");
        assert_eq!(e["fence"]["mechanism"], "lsm_cgroup/inode_permission", "{e:#}");
        let agent_cgroup = fs::read_to_string(format!("/proc/{agent_pid}/cgroup")).unwrap();
        assert!(!agent_cgroup.contains(&cg.rel), "the agent stayed where it was: {agent_cgroup}");
        let mut sleeper = Command::new("sleep").arg("30").stdout(Stdio::null()).spawn().unwrap();
        let o = fenced(&["write-file", &procs, &sleeper.id().to_string()]);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        o.assert_eperm("pulling an outside process into the fenced cgroup");

        // B13: a cgroup.procs descriptor opened before entering the fence.
        let o = helper::run(None, &["procs-fd-leave", &s(&outside.dir), &s(&cg.dir)]);
        o.assert_eperm("writing through a cgroup.procs descriptor opened before the fence");
        assert_eq!(o.raw["step"], 0, "{}", o.raw);
        denied_event(&agent, &o, "cgroup-migrate");
        let other = TestCgroup::new("bypass-unfenced");
        helper::run(None, &["procs-fd-leave", &s(&outside.dir), &s(&other.dir)])
            .assert_ok("the same from an unfenced cgroup");

        // B14: another cgroup's control files: cgroup.kill would end its processes (the
        // agent's, say) with no signal the kill hook sees, cgroup.freeze stop them.
        let mut victim = Command::new("sleep").arg("30").stdout(Stdio::null()).spawn().unwrap();
        fs::write(outside.dir.join("cgroup.procs"), victim.id().to_string()).expect("moving the victim (unfenced)");
        for file in ["cgroup.kill", "cgroup.freeze"] {
            let o = fenced(&["write-file", &s(&outside.dir.join(file)), "1"]);
            o.assert_eperm(&format!("{file} of a cgroup outside the identity"));
            let e = denied_event(&agent, &o, "cgroup-write");
            assert_eq!(e["fence"]["target"]["path"], format!("{}/{file}", outside.rel), "{e:#}");
        }
        let frozen = fs::read_to_string(outside.dir.join("cgroup.events")).unwrap_or_default();
        let alive = victim.try_wait().expect("the victim's status").is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        assert!(alive && frozen.contains("frozen 0"), "the victim is alive and not frozen: {frozen}");
        // The identity's own cgroup is its own business (as the README's Limits say).
        fenced(&["write-file", &s(&cg.dir.join("cgroup.freeze")), "0"]).assert_ok("its own cgroup.freeze");

        // B6 with BPF LSM: no TIOCSTI at all (root has CAP_SYS_ADMIN, which the kernel accepts).
        let o = fenced(&["tiocsti"]);
        o.assert_eperm("TIOCSTI on a terminal");
        assert_eq!(denied_event(&agent, &o, "ioctl")["fence"]["reason"], "terminal-input");
        helper::run(None, &["tiocsti"]).assert_ok("unfenced TIOCSTI");
        // The same through the 32-bit ioctl (int 0x80), which kernels with a compat hook of
        // their own (6.8, and stable backports) no longer pass through file_ioctl.
        let o = fenced(&["tiocsti", "--compat"]);
        if let Some(sig) = o.signal {
            note(format!("no 32-bit system calls on this kernel (signal {sig}): the compat TIOCSTI was not tried"));
        } else {
            o.assert_eperm("TIOCSTI through the 32-bit ioctl");
            let e = denied_event(&agent, &o, "ioctl");
            assert_eq!(e["fence"]["reason"], "terminal-input", "{e:#}");
            assert!(
                ["lsm/file_ioctl", "lsm/file_ioctl_compat"].contains(&e["fence"]["mechanism"].as_str().unwrap_or("")),
                "{e:#}"
            );
            helper::run(None, &["tiocsti", "--compat"]).assert_ok("unfenced TIOCSTI through the 32-bit ioctl");
        }
    } else {
        note(format!(
            "B4, B5, B13, B14 and TIOCSTI refusal need BPF LSM (doctor: {}); see README Limits",
            doctor_notes("no-way-out")
        ));
    }

    // B6 on every kernel: `fence-agent exec --new-session` leaves no controlling terminal to
    // push input into (the process has no CAP_SYS_ADMIN, as a non-root workload would not).
    // (Kernels built without legacy TIOCSTI refuse it with EIO to everyone without
    // CAP_SYS_ADMIN; then both runs fail, for the kernel's reason.)
    let in_place = exec_on_a_terminal(&agent, false);
    let detached = exec_on_a_terminal(&agent, true);
    assert!(
        detached["ok"] == false && [libc::EPERM, libc::EIO].contains(&(detached["errno"].as_i64().unwrap_or(0) as i32)),
        "--new-session: TIOCSTI must fail: {detached}"
    );
    if escape {
        assert_eq!(in_place["errno"], libc::EPERM, "BPF LSM refuses TIOCSTI anyway: {in_place}");
    } else {
        note(format!("without BPF LSM, TIOCSTI from `fence-agent exec` in place: {in_place}"));
    }

    // B7: the per-user service manager and session bus are in the default-deny set.
    if unix {
        for socket in [user_dir.join("bus"), user_dir.join("systemd/private")] {
            let o = fenced(&["unix-connect", &s(&socket)]);
            o.assert_eperm(&format!("{}", socket.display()));
            assert_eq!(denied_event(&agent, &o, "unix-connect")["fence"]["reason"], "unix-host-denied");
            helper::run(None, &["unix-connect", &s(&socket)]).assert_ok("unfenced");
        }
    } else {
        note("B7 not checked: the unix-socket fence needs BPF LSM");
    }
}

/// Runs `fence-agent exec [--new-session] -- helper tiocsti --drop-cap -` with a new pty as its
/// controlling terminal and stdin; the helper's report.
fn exec_on_a_terminal(agent: &Agent, new_session: bool) -> Value {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let name = nix::pty::ptsname_r(&master).unwrap();
    let slave = fs::OpenOptions::new().read(true).write(true).open(&name).unwrap();
    let mut cmd = Command::new(agent_binary());
    cmd.args(["exec", "--socket"]).arg(&agent.socket).args(["--identity", "attacker"]);
    if new_session {
        cmd.arg("--new-session");
    }
    cmd.args(["--", &std::env::current_exe().unwrap().display().to_string(), "helper", "tiocsti", "--drop-cap", "-"]);
    let tty = slave.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec: a new session, then the pty
    // as its controlling terminal.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(slave.try_clone().unwrap()).stderr(Stdio::piped()).output().expect("fence-agent exec");
    drop(master);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|e| {
        panic!("fence-agent exec printed {stdout:?} ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
