//! Learn mode on a real agent: a workload run in audit mode, `policy suggest` from its events,
//! the same workload under the suggestion in enforce mode: nothing denied, and nothing allowed
//! that was not seen.

use std::{fs, net::TcpListener, os::unix::net::UnixListener, path::Path, process::Command};

use fence_agent::dns::testing::a;

use crate::{
    agent::{Agent, agent_binary},
    dns::{Upstream, answered, query},
    env::{TempDir, TestCgroup, mechanism},
    harness::{Test, note},
    helper::{self, Outcome},
    kernel_fences::{Programs, s},
};

/// The name the workload resolves, and its address.
const NAME: &str = "svc.learn.test";
const NAME_IP: &str = "127.0.0.31";

pub const TESTS: &[Test] = &[Test { name: "learn_suggest_from_audit_then_enforce", run: suggest_then_enforce }];

/// The workload: a TCP connect by address, a name resolved (through the agent's resolver, a
/// test authority upstream) and connected to, a credentials file, the container runtime's
/// socket (stand-ins in the test's directory; the socket where the unix fence is enforced), a
/// program not in the allow-list.
fn workload(
    cg: &TestCgroup,
    to: &str,
    by_name: u16,
    dir: &TempDir,
    program: &Path,
    unix: bool,
) -> Vec<(&'static str, Outcome)> {
    let q = query(Some(cg), "127.0.0.99:53", NAME, "A");
    assert_eq!(answered(&q, 0, "the name"), [NAME_IP], "{}", q.raw);
    let mut done = vec![
        ("connect", helper::run(Some(cg), &["tcp-connect", to])),
        ("dns-query", q),
        ("connect", helper::run(Some(cg), &["tcp-connect", &format!("{NAME_IP}:{by_name}")])),
        ("open", helper::run(Some(cg), &["open", &s(&dir.path(".aws/credentials"))])),
        ("exec", helper::run(Some(cg), &["exec", &s(program), "helper", "noop"])),
    ];
    if unix {
        done.push(("unix-connect", helper::run(Some(cg), &["unix-connect", &s(&dir.path("docker.sock"))])));
    }
    done
}

fn suggest_then_enforce() {
    // Without BPF LSM there is no unix-socket fence, so no event to learn the socket from.
    let unix = mechanism("unix-sockets").is_some();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let named = TcpListener::bind((NAME_IP, 0)).unwrap();
    let by_name = named.local_addr().unwrap().port();
    let up = Upstream::start(vec![a(&format!("{NAME}."), 300, NAME_IP)]);
    let dir = TempDir::new("learn");
    fs::create_dir_all(dir.path(".aws")).unwrap();
    fs::write(dir.path(".aws/credentials"), "[default]\n").unwrap();
    let _docker = UnixListener::bind(dir.path("docker.sock")).unwrap();
    let programs = Programs::new("learn-programs");
    let cg = TestCgroup::new("learn");
    let policy = format!(
        "schema: 1\nidentities:\n  - name: learner\n    owner: fence-tests\n    purpose: learn mode test\n    \
         mode: audit\n    selectors: [{{cgroup: \"{}\"}}]\n    exec:\n      allow: [{:?}]\n    unix:\n      allow: []\n",
        cg.rel,
        s(&programs.allowed)
    );
    let config = format!(
        "[protect]\ndefaults = false\npaths = [{:?}]\n[dns]\nupstream = [\"{}\"]\nlearn_local_addresses = true\n",
        s(&dir.path(".aws/credentials")),
        up.authority.addr
    );
    let agent = Agent::start_with("learn", &policy, &config);

    // 1. Audit mode: everything works, and each is a would-deny event.
    for (what, o) in workload(&cg, &to, by_name, &dir, &programs.denied, unix) {
        o.assert_ok(&format!("{what} in audit mode"));
        let e = agent.wait_event(&format!("the would-deny {what}"), |e| {
            e["fence"]["identity"] == "learner"
                && e["fence"]["operation"] == what
                && e["fence"]["verdict"] == "would-deny"
                && (what == "dns-query" || e["process"]["pid"] == o.pid)
        });
        if what == "dns-query" {
            // The question went upstream (audit mode): the event has what it resolved to.
            assert_eq!(e["dns"]["resolved_ip"], serde_json::json!([NAME_IP]), "{e:#}");
        }
    }

    // 2. The suggestion, from the event file and the policy as it stands.
    let out = Command::new(agent_binary())
        .args(["policy", "suggest", "--identity", "learner", "--from"])
        .arg(&agent.events)
        .arg("--policy")
        .arg(&agent.policy)
        .output()
        .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "suggest: {}\n{yaml}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let risks: Vec<&str> = yaml.lines().filter(|l| l.starts_with("#   RISK")).collect();
    for must in [".aws/credentials", "docker.sock", "127.0.0.1"] {
        if must == "docker.sock" && !unix {
            continue;
        }
        assert!(risks.iter().any(|r| r.contains(must)), "no risk about {must}: {risks:#?}");
    }
    // No wider than what was seen.
    let suggested = dir.path("suggested.yaml");
    fs::write(&suggested, &yaml).unwrap();
    let docs = fence_agent::policy::load::load_paths(std::slice::from_ref(&suggested)).expect("the suggestion parses");
    let id = &docs[0].document.identities[0];
    assert_eq!(id.mode, fence_agent::policy::model::Mode::Enforce);
    let port = listener.local_addr().unwrap().port();
    let egress: Vec<String> = id.egress.iter().map(|r| format!("{:?} {:?} {:?}", r.protocol, r.to, r.ports)).collect();
    // The name's connect is the name's, with its own port: no address rule for it.
    assert_eq!(
        egress,
        [format!("Tcp [\"127.0.0.1/32\"] [Number({port})]"), format!("Tcp [\"{NAME}\"] [Number({by_name})]")],
        "{yaml}"
    );
    assert!(risks.iter().any(|r| r.contains(&format!("{NAME}, which resolved to {NAME_IP}"))), "{risks:#?}");
    assert_eq!(id.files.as_ref().map(|f| f.allow.clone()), Some(vec![s(&dir.path(".aws/credentials"))]));
    let sockets = if unix { vec![s(&dir.path("docker.sock"))] } else { vec![] };
    assert_eq!(id.unix.as_ref().map(|u| u.allow.clone()), Some(sockets));
    let exec: Vec<String> = id.exec.as_ref().unwrap().allow.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(exec, [format!("Path({:?})", s(&programs.allowed)), format!("Path({:?})", s(&programs.denied))]);

    // 3. Enforce mode under the suggestion: the same workload, nothing denied.
    let before = agent.handled();
    fs::write(&agent.policy, &yaml).unwrap();
    agent.reload();
    let status = agent.wait_settled(before);
    assert_eq!(status.handled.refused, 0, "the suggestion was refused:\n{}", agent.stderr_text());
    let seen = agent.events().len();
    for (what, o) in workload(&cg, &to, by_name, &dir, &programs.denied, unix) {
        o.assert_ok(&format!("{what} under the suggested policy"));
    }
    // A denial after the workload marks the end of what it could have caused.
    let sentinel = helper::run(Some(&cg), &["tcp-connect", "127.0.0.1:9"]);
    sentinel.assert_eperm("a connect the suggestion did not allow");
    agent.wait_event("the sentinel denial", |e| e["process"]["pid"] == sentinel.pid);
    let new: Vec<_> = agent.events().into_iter().skip(seen).filter(|e| e["fence"]["identity"] == "learner").collect();
    assert_eq!(new.len(), 1, "only the sentinel was denied: {new:#?}");
    note(format!(
        "{} risks listed; the workload ran denial-free in enforce mode{}",
        risks.len(),
        if unix { "" } else { " (no unix-socket fence on this kernel: the docker socket part runs in the vm tier)" }
    ));
}
