//! The network fence, end to end: the real agent, real cgroups, real sockets on loopback.
//! Every denial is asserted by its errno and by its event; every test also shows that what
//! the policy allows still works, so that a fence that denies everything cannot pass.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use serde_json::Value;

use fence_agent::control::protocol::DumpReply;

use crate::{
    agent::{Agent, read_jsonl},
    env::{TestCgroup, slow_factor, wait_for},
    harness::{Test, skip},
    helper::{self, Outcome},
};

pub const TESTS: &[Test] = &[
    Test { name: "net_tcp_denied_port_eperm_one_event", run: tcp_denied_port_eperm_one_event },
    Test { name: "net_ipv6_loopback", run: ipv6_loopback },
    Test { name: "net_ipv4_mapped_ipv6_judged_by_v4_rules", run: ipv4_mapped_judged_by_v4_rules },
    Test { name: "net_udp_sendto_sendmsg_sendmmsg_connect", run: udp_unconnected_and_connected },
    Test { name: "net_dns_off_port_53_is_ordinary_egress", run: dns_is_not_special },
    Test { name: "net_child_cgroup_is_fenced", run: child_cgroup_is_fenced },
    Test { name: "net_unfenced_processes_unaffected", run: unfenced_processes_unaffected },
    Test { name: "net_audit_mode_allows_and_logs", run: audit_mode_allows_and_logs },
    Test { name: "net_sighup_bad_reload_keeps_old_policy", run: sighup_bad_reload_keeps_old_policy },
    Test { name: "policy_maps_hold_the_applied_policy", run: policy_maps_hold_the_applied_policy },
    Test { name: "net_other_socket_kinds_denied", run: other_socket_kinds_denied },
    Test { name: "net_tcp_fast_open_is_judged", run: tcp_fast_open_is_judged },
    Test { name: "net_expired_identity_is_deny_all", run: expired_identity_is_deny_all },
    Test { name: "agent_refuses_bad_policy_at_start", run: agent_refuses_bad_policy_at_start },
];

/// A one-identity policy for `cgroup`.
pub(crate) fn policy(cgroup: &TestCgroup, mode: &str, extra: &str, egress: &str) -> String {
    format!(
        "schema: 1\nidentities:\n  - name: test-bot\n    owner: fence-tests\n    purpose: integration test\n    \
         mode: {mode}\n{extra}    selectors: [{{cgroup: \"{}\"}}]\n    egress:{}",
        cgroup.rel,
        if egress.is_empty() { " []\n".to_owned() } else { format!("\n{egress}") }
    )
}

pub(crate) fn rule(to: &str, ports: &str, protocol: &str) -> String {
    format!("      - to: [{to}]\n        ports: [{ports}]\n        protocol: {protocol}\n")
}

fn tcp4() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener")
}

fn tcp6() -> TcpListener {
    match TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => skip(format!("no IPv6 loopback on this host ({e})")),
    }
}

pub(crate) fn port(l: &TcpListener) -> u16 {
    l.local_addr().expect("local_addr").port()
}

pub(crate) fn s(a: SocketAddr) -> String {
    a.to_string()
}

pub(crate) fn tcp_connect(cg: Option<&TestCgroup>, to: &str) -> Outcome {
    helper::run(cg, &["tcp-connect", to])
}

/// What a test expects of a network event.
struct Expect<'a> {
    verdict: &'a str,
    op: &'a str,
    family: &'a str,
    transport: &'a str,
    ip: &'a str,
    port: u16,
}

/// Fields every network event must carry, checked against what the test knows.
#[track_caller]
fn assert_net_event(e: &Value, cg: &TestCgroup, o: &Outcome, x: Expect<'_>) {
    let Expect { verdict, op, family, transport, ip, port } = x;
    let ctx = || format!("event: {e:#}");
    assert!(e["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 30), "{}", ctx());
    assert_eq!(e["fence"]["identity"], "test-bot", "{}", ctx());
    assert_eq!(e["fence"]["verdict"], verdict, "{}", ctx());
    assert_eq!(e["fence"]["operation"], op, "{}", ctx());
    assert_eq!(e["process"]["pid"], o.pid, "{}", ctx());
    assert_eq!(e["process"]["thread"]["id"], o.pid, "{}", ctx());
    assert_eq!(e["process"]["real_user"]["id"], nix::unistd::getuid().as_raw().to_string(), "{}", ctx());
    assert_eq!(e["process"]["user"]["id"], nix::unistd::geteuid().as_raw().to_string(), "{}", ctx());
    assert_eq!(e["process"]["group"]["id"], nix::unistd::getegid().as_raw().to_string(), "{}", ctx());
    assert_eq!(e["process"]["name"], "fence-tests", "{}", ctx());
    assert_eq!(e["fence"]["cgroup"]["id"], cg.id(), "{}", ctx());
    assert_eq!(e["network"]["type"], family, "{}", ctx());
    assert_eq!(e["network"]["transport"], transport, "{}", ctx());
    assert_eq!(e["destination"]["ip"], ip, "{}", ctx());
    assert_eq!(e["destination"]["port"], port, "{}", ctx());
    assert!(e["fence"]["policy_version"].as_str().is_some_and(|v| v.starts_with("sha256:")), "{}", ctx());
}

pub(crate) fn to_port(e: &Value, port: u16) -> bool {
    e["destination"]["port"] == port
}

fn tcp_denied_port_eperm_one_event() {
    let cg = TestCgroup::new("tcp-denied");
    let (allowed, denied, barrier) = (tcp4(), tcp4(), tcp4());
    let agent =
        Agent::start("tcp-denied", &policy(&cg, "enforce", "", &rule("127.0.0.1", &port(&allowed).to_string(), "tcp")));
    let o = tcp_connect(Some(&cg), &s(denied.local_addr().unwrap()));
    o.assert_eperm("connect to a port the policy does not allow");
    let e = agent.wait_event("for the denied connect", |e| to_port(e, port(&denied)));
    assert_net_event(
        &e,
        &cg,
        &o,
        Expect {
            verdict: "denied",
            op: "connect",
            family: "ipv4",
            transport: "tcp",
            ip: "127.0.0.1",
            port: port(&denied),
        },
    );
    assert_eq!(e["fence"]["mechanism"], "cgroup/connect4");
    assert_eq!(e["fence"]["rule"], "default-deny");
    // Exactly one line per denial, in the file and on stdout alike.
    tcp_connect(Some(&cg), &s(barrier.local_addr().unwrap())).assert_eperm("barrier connect");
    agent.wait_event("for the barrier connect", |e| to_port(e, port(&barrier)));
    let in_file = agent.events().iter().filter(|e| to_port(e, port(&denied))).count();
    assert_eq!(in_file, 1, "events for one denial in the event file: {:#?}", agent.events());
    let on_stdout = wait_for(Duration::from_secs(5), || {
        let lines = read_jsonl(&agent.stdout);
        lines.iter().any(|e| to_port(e, port(&barrier))).then_some(lines)
    })
    .expect("events on stdout");
    assert_eq!(on_stdout.iter().filter(|e| to_port(e, port(&denied))).count(), 1, "events on stdout");
    // A process whose effective uid is not its real one (a set-user-id program): the event
    // names both, each under its ECS name.
    let o = helper::run(Some(&cg), &["euid-connect", "65534", &s(denied.local_addr().unwrap())]);
    o.assert_eperm("connect with effective uid 65534");
    let e = agent.wait_event("for the connect with another effective uid", |e| e["process"]["pid"] == o.pid);
    assert_eq!(e["process"]["user"]["id"], "65534", "effective uid: {e:#}");
    assert_eq!(e["process"]["real_user"]["id"], nix::unistd::getuid().as_raw().to_string(), "real uid: {e:#}");
    // The allowed port still works.
    tcp_connect(Some(&cg), &s(allowed.local_addr().unwrap())).assert_ok("connect to the allowed port");
}

fn ipv6_loopback() {
    let cg = TestCgroup::new("ipv6");
    let (allowed, denied) = (tcp6(), tcp6());
    let agent =
        Agent::start("ipv6", &policy(&cg, "enforce", "", &rule("\"::1/128\"", &port(&allowed).to_string(), "tcp")));
    tcp_connect(Some(&cg), &s(allowed.local_addr().unwrap())).assert_ok("IPv6 connect to the allowed port");
    let o = tcp_connect(Some(&cg), &s(denied.local_addr().unwrap()));
    o.assert_eperm("IPv6 connect to another port");
    let e = agent.wait_event("for the IPv6 denial", |e| to_port(e, port(&denied)));
    assert_net_event(
        &e,
        &cg,
        &o,
        Expect { verdict: "denied", op: "connect", family: "ipv6", transport: "tcp", ip: "::1", port: port(&denied) },
    );
    assert_eq!(e["fence"]["mechanism"], "cgroup/connect6");
}

fn ipv4_mapped_judged_by_v4_rules() {
    let cg = TestCgroup::new("v4mapped");
    let dual = match TcpListener::bind("[::]:0") {
        Ok(l) => l,
        Err(e) => skip(format!("no IPv6 on this host ({e})")),
    };
    let other = TcpListener::bind("[::]:0").expect("dual-stack listener");
    // Only an IPv4 rule: ::ffff:127.0.0.1 must be allowed by it, and nothing IPv6 is allowed.
    let agent =
        Agent::start("v4mapped", &policy(&cg, "enforce", "", &rule("127.0.0.1/32", &port(&dual).to_string(), "tcp")));
    tcp_connect(Some(&cg), &format!("[::ffff:127.0.0.1]:{}", port(&dual)))
        .assert_ok("v4-mapped connect allowed by the IPv4 rule");
    tcp_connect(Some(&cg), &format!("127.0.0.1:{}", port(&dual))).assert_ok("plain IPv4 connect");
    let o = tcp_connect(Some(&cg), &format!("[::ffff:127.0.0.1]:{}", port(&other)));
    o.assert_eperm("v4-mapped connect to a port the IPv4 rule does not allow");
    let e = agent.wait_event("for the v4-mapped denial", |e| to_port(e, port(&other)));
    assert_net_event(
        &e,
        &cg,
        &o,
        Expect {
            verdict: "denied",
            op: "connect",
            family: "ipv6",
            transport: "tcp",
            ip: "::ffff:127.0.0.1",
            port: port(&other),
        },
    );
    tcp_connect(Some(&cg), &format!("[::1]:{}", port(&dual))).assert_eperm("IPv6 ::1 has no rule");
}

fn udp_unconnected_and_connected() {
    let cg = TestCgroup::new("udp");
    let allowed = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let denied = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let ap = allowed.local_addr().unwrap().port();
    let dp = denied.local_addr().unwrap().port();
    let agent = Agent::start("udp", &policy(&cg, "enforce", "", &rule("127.0.0.1", &ap.to_string(), "udp")));
    allowed.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for action in ["udp-sendto", "udp-sendmsg", "udp-sendmmsg", "udp-connect"] {
        helper::run(Some(&cg), &[action, &format!("127.0.0.1:{ap}")])
            .assert_ok(&format!("{action} to the allowed port"));
        let mut buf = [0u8; 16];
        allowed.recv(&mut buf).unwrap_or_else(|e| panic!("{action}: the allowed datagram did not arrive: {e}"));
        let o = helper::run(Some(&cg), &[action, &format!("127.0.0.1:{dp}")]);
        o.assert_eperm(&format!("{action} to a port the policy does not allow"));
        let op = if action == "udp-connect" { "connect" } else { "sendmsg" };
        let e = agent.wait_event(&format!("for {action}"), |e| to_port(e, dp) && e["process"]["pid"] == o.pid);
        assert_net_event(
            &e,
            &cg,
            &o,
            Expect { verdict: "denied", op, family: "ipv4", transport: "udp", ip: "127.0.0.1", port: dp },
        );
    }
    // TCP to the UDP-only port is not allowed either.
    let tcp = TcpListener::bind(format!("127.0.0.1:{ap}")).ok();
    if tcp.is_some() {
        tcp_connect(Some(&cg), &format!("127.0.0.1:{ap}")).assert_eperm("TCP to a UDP-only rule");
    }
    denied.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(denied.recv(&mut [0u8; 16]).is_err(), "a denied datagram arrived");
}

fn dns_is_not_special() {
    let cg = TestCgroup::new("dns");
    let policy = policy(&cg, "enforce", "", &rule("127.0.0.2", "53", "udp"));
    // With egress by name off, DNS is not steered: port 53 on a host the policy does not name
    // is denied like any other port.
    let agent = Agent::start_with("dns", &policy, "[dns]\nenabled = false\n");
    let o = helper::run(Some(&cg), &["udp-sendto", "127.0.0.1:53"]);
    o.assert_eperm("DNS to a resolver the policy does not allow");
    agent.wait_event("for the DNS denial", |e| to_port(e, 53) && e["destination"]["ip"] == "127.0.0.1");
    helper::run(Some(&cg), &["udp-sendto", "127.0.0.2:53"]).assert_ok("DNS to the allowed resolver");
    helper::run(Some(&cg), &["tcp-connect", "127.0.0.2:53"]).assert_eperm("TCP DNS when only UDP is allowed");
}

fn child_cgroup_is_fenced() {
    let cg = TestCgroup::new("child");
    let (allowed, denied) = (tcp4(), tcp4());
    let agent =
        Agent::start("child", &policy(&cg, "enforce", "", &rule("127.0.0.1", &port(&allowed).to_string(), "tcp")));
    // Created after the agent applied the policy: inherited in the kernel, no reload.
    let child = cg.child("worker");
    let grandchild = child.child("task");
    for c in [&child, &grandchild] {
        tcp_connect(Some(c), &s(allowed.local_addr().unwrap())).assert_ok("allowed connect from a descendant cgroup");
        let o = tcp_connect(Some(c), &s(denied.local_addr().unwrap()));
        o.assert_eperm("denied connect from a descendant cgroup");
        let e = agent.wait_event("for the descendant's denial", |e| e["process"]["pid"] == o.pid);
        assert_eq!(e["fence"]["cgroup"]["id"], c.id());
        assert_eq!(e["fence"]["identity"], "test-bot");
    }
}

fn unfenced_processes_unaffected() {
    let cg = TestCgroup::new("fenced");
    let sibling = TestCgroup::new("unfenced-sibling");
    let denied = tcp4();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The policy allows nothing at all.
    let agent = Agent::start("unfenced", &policy(&cg, "enforce", "", ""));
    let to = s(denied.local_addr().unwrap());
    let uto = s(udp.local_addr().unwrap());
    tcp_connect(Some(&cg), &to).assert_eperm("the fenced process is denied");
    for (where_, c) in [("a sibling cgroup", Some(&sibling)), ("the test's own cgroup", None)] {
        tcp_connect(c, &to).assert_ok(&format!("TCP from {where_}"));
        helper::run(c, &["udp-sendto", &uto]).assert_ok(&format!("UDP from {where_}"));
        let icmp = helper::run(c, &["socket", "inet", "raw"]);
        assert_ne!(icmp.errno, Some(libc::EPERM), "raw socket from {where_}: {}", icmp.raw);
        let v6 = tcp_connect(c, "[::1]:9");
        assert_ne!(v6.errno, Some(libc::EPERM), "IPv6 connect from {where_}: {}", v6.raw);
    }
    // Only the fenced process produced events.
    let barrier = tcp_connect(Some(&cg), &to);
    agent.wait_event("for the barrier", |e| e["process"]["pid"] == barrier.pid);
    assert!(agent.events().iter().all(|e| e["fence"]["cgroup"]["id"] == cg.id()), "{:#?}", agent.events());
}

fn audit_mode_allows_and_logs() {
    let cg = TestCgroup::new("audit");
    let (allowed, other) = (tcp4(), tcp4());
    let agent =
        Agent::start("audit", &policy(&cg, "audit", "", &rule("127.0.0.1", &port(&allowed).to_string(), "tcp")));
    let o = tcp_connect(Some(&cg), &s(other.local_addr().unwrap()));
    o.assert_ok("audit mode allows what enforce mode would deny");
    let e = agent.wait_event("for the would-deny", |e| to_port(e, port(&other)));
    assert_net_event(
        &e,
        &cg,
        &o,
        Expect {
            verdict: "would-deny",
            op: "connect",
            family: "ipv4",
            transport: "tcp",
            ip: "127.0.0.1",
            port: port(&other),
        },
    );
    assert_eq!(e["fence"]["mode"], "audit");
    assert_eq!(e["event"]["outcome"], "success");
    let u = helper::run(Some(&cg), &["udp-sendto", "127.0.0.1:9"]);
    u.assert_ok("audit mode lets UDP through");
    agent.wait_event("for the UDP would-deny", |e| {
        e["process"]["pid"] == u.pid && e["fence"]["verdict"] == "would-deny"
    });
    tcp_connect(Some(&cg), &s(allowed.local_addr().unwrap())).assert_ok("allowed connect");
}

fn sighup_bad_reload_keeps_old_policy() {
    let cg = TestCgroup::new("reload");
    let (a, b) = (tcp4(), tcp4());
    let good = policy(&cg, "enforce", "", &rule("127.0.0.1", &port(&a).to_string(), "tcp"));
    let mut agent = Agent::start("reload", &good);
    let to_a = s(a.local_addr().unwrap());
    let to_b = s(b.local_addr().unwrap());
    tcp_connect(Some(&cg), &to_a).assert_ok("A allowed before the reload");
    tcp_connect(Some(&cg), &to_b).assert_eperm("B denied before the reload");
    // The allowed destination is in the kernel's verdict cache (standing rule: slot 0); the
    // refused one is not.
    let before = crate::fastpath::cached_verdicts(&agent);
    let (pa, pb) = (port(&a), port(&b));
    assert!(before.iter().any(|v| v.port == pa && v.slot == 0), "A cached after its connect: {before:?}");
    assert!(!before.iter().any(|v| v.port == pb), "a refused destination is never cached: {before:?}");
    // A broken file (one bad port among good changes): nothing of it may apply.
    let bad = policy(&cg, "audit", "", &rule("127.0.0.1", &format!("{}, 70000", port(&b)), "tcp"));
    std::fs::write(&agent.policy, bad).unwrap();
    let log = agent.reload();
    assert!(
        log.contains("reload refused") && log.contains("70000 is out of range"),
        "the agent log must say why:\n{log}"
    );
    tcp_connect(Some(&cg), &to_a).assert_ok("A still allowed after the refused reload");
    tcp_connect(Some(&cg), &to_b).assert_eperm("B still denied after the refused reload (enforce mode kept)");
    assert!(agent.try_exit_status().is_none(), "the agent must survive a bad reload");
    // A good reload takes effect.
    std::fs::write(&agent.policy, policy(&cg, "enforce", "", &rule("127.0.0.1", &port(&b).to_string(), "tcp")))
        .unwrap();
    let log = agent.reload();
    assert_eq!(log.matches("reload refused").count(), 1, "{log}");
    tcp_connect(Some(&cg), &to_b).assert_ok("B allowed after the good reload");
    // A's entry from the earlier policy is still in the cache, under the earlier policy's
    // sequence: the new policy does not find it. (Unless B's entry took its place: one chance
    // in 4,096 that their hashes share an index.)
    let after = crate::fastpath::cached_verdicts(&agent);
    let old = before.iter().find(|v| v.port == pa).expect("A's entry");
    if !after.contains(old) {
        crate::harness::note(format!("A's earlier entry was replaced (same index as B's): {after:?}"));
    }
    assert!(old.family == 4 && old.addr[..4] == [127, 0, 0, 1], "A's destination: {old:?}");
    assert!(
        after.iter().any(|v| v.port == pb && v.sequence > old.sequence && v.identity == old.identity),
        "B cached under the new policy: {after:?}"
    );
    let o = tcp_connect(Some(&cg), &to_a);
    o.assert_eperm("A denied after the good reload, its earlier verdict cached");
    agent.wait_event("for A refused after the reload", |e| e["process"]["pid"] == o.pid && to_port(e, pa));
}

/// The test identity's entries of `map` in a dump: (key, value), sorted.
pub(crate) fn entries_of(dump: &DumpReply, map: &str, identity: u32) -> Vec<(Option<String>, Option<String>)> {
    let mut v: Vec<_> = dump
        .entries
        .iter()
        .filter(|e| e.map == map && e.identity == identity)
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    v.sort();
    v
}

/// A dump's entries in a stable order (the kernel's iteration order is not the policy's).
fn sorted(dump: &DumpReply) -> Vec<(String, u32, Option<String>, Option<String>)> {
    let mut v: Vec<_> =
        dump.entries.iter().map(|e| (e.map.to_string(), e.identity, e.key.clone(), e.value.clone())).collect();
    v.sort();
    v
}

/// What the kernel holds for the test identity: its number (from its cgroup's binding), and
/// its entries in the maps this policy fills.
fn assert_maps_hold(agent: &Agent, cg: &TestCgroup, port: u16) -> (DumpReply, u32) {
    let dump = agent.dump();
    let cgroup_id = cg.id().to_string();
    let bound: Vec<u32> = dump
        .entries
        .iter()
        .filter(|e| e.map == "FENCE_CGROUPS" && e.key.as_deref() == Some(cgroup_id.as_str()))
        .map(|e| e.identity)
        .collect();
    let [identity] = bound[..] else {
        panic!("one FENCE_CGROUPS entry for the test cgroup (id {cgroup_id}), got {bound:?}: {:#?}", dump.entries)
    };
    assert_ne!(identity, 0, "the test cgroup is bound to an identity: {:#?}", dump.entries);
    let ctx = || format!("{:#?}", dump.entries);
    assert_eq!(
        entries_of(&dump, "FENCE_CGROUPS", identity),
        [(Some(cgroup_id.clone()), None)],
        "the identity's only cgroup is the test cgroup: {}",
        ctx()
    );
    assert_eq!(
        entries_of(&dump, "FENCE_NET4", identity),
        [(Some("127.0.0.1/32".to_owned()), Some(format!("{port}/tcp")))],
        "the identity's IPv4 allow-list is the policy's one rule (one address: in the trie): {}",
        ctx()
    );
    for map in ["FENCE_NET6", "FENCE_HOST4", "FENCE_HOST6"] {
        assert_eq!(entries_of(&dump, map, identity), [], "{map}: the policy has no other rule: {}", ctx());
    }
    // Mode and version as the agent reports the policy in force (the kernel carries the
    // version's first four bytes).
    let st = agent.status();
    let version = &st.policy.iter().find(|p| p.identity == "test-bot").expect("test-bot in the status").version;
    let short = version.strip_prefix("sha256:").and_then(|h| h.get(..8)).expect("a sha256 version");
    let info = entries_of(&dump, "FENCE_IDENTITIES", identity);
    assert!(
        matches!(&info[..], [(None, Some(v))] if v.starts_with("mode=1 ") && v.ends_with(&format!(" version={short}"))),
        "one FENCE_IDENTITIES entry, in enforce mode (1), of version {version}: {info:?}\n{}",
        ctx()
    );
    (dump, identity)
}

fn policy_maps_hold_the_applied_policy() {
    let cg = TestCgroup::new("maps");
    let (x, y) = (tcp4(), tcp4());
    let (px, py) = (port(&x), port(&y));
    let agent = Agent::start("maps", &policy(&cg, "enforce", "", &rule("127.0.0.1/32", &px.to_string(), "tcp")));
    let (first, identity) = assert_maps_hold(&agent, &cg, px);
    // A changed port, reloaded: the live maps hold the new rule and not the old one.
    std::fs::write(&agent.policy, policy(&cg, "enforce", "", &rule("127.0.0.1/32", &py.to_string(), "tcp"))).unwrap();
    let log = agent.reload();
    let (second, again) = assert_maps_hold(&agent, &cg, py);
    assert_eq!(again, identity, "the identity keeps its number across a reload");
    let net4 = entries_of(&second, "FENCE_NET4", identity);
    assert!(!net4.iter().any(|(_, v)| v.as_deref() == Some(&format!("{px}/tcp"))), "port {px} is gone: {net4:?}");
    assert_eq!(second.sequence, first.sequence + 1, "one apply, one sequence step:\n{log}");
    // A refused reload (a port out of range) leaves every live map as it was.
    let refused = agent.status().handled.refused;
    std::fs::write(&agent.policy, policy(&cg, "enforce", "", &rule("127.0.0.1/32", "70000", "tcp"))).unwrap();
    let log = agent.reload();
    assert_eq!(agent.status().handled.refused, refused + 1, "the reload was refused:\n{log}");
    let third = agent.dump();
    assert_eq!(third.sequence, second.sequence, "a refused reload applies nothing:\n{log}");
    assert_eq!(sorted(&third), sorted(&second), "a refused reload leaves the maps as they were");
}

fn other_socket_kinds_denied() {
    let cg = TestCgroup::new("sockets");
    let agent = Agent::start("sockets", &policy(&cg, "enforce", "", &rule("0.0.0.0/0", "any", "any")));
    for family in ["inet", "inet6"] {
        helper::run(Some(&cg), &["socket", family, "tcp"]).assert_ok("TCP sockets are allowed");
        helper::run(Some(&cg), &["socket", family, "udp"]).assert_ok("UDP sockets are allowed");
        for kind in ["raw", "icmp", "udplite"] {
            // Unfenced first: if the kernel itself refuses this kind, the fenced result says nothing.
            let unfenced = helper::run(None, &["socket", family, kind]);
            if !unfenced.ok() {
                eprintln!(
                    "note: {family}/{kind} sockets unavailable here even unfenced ({}); not judged",
                    unfenced.raw
                );
                continue;
            }
            let o = helper::run(Some(&cg), &["socket", family, kind]);
            o.assert_eperm(&format!("{family}/{kind} socket in a fenced identity"));
            let e = agent.wait_event("for the socket denial", |e| e["process"]["pid"] == o.pid);
            assert_eq!(e["fence"]["operation"], "socket");
            assert_eq!(e["fence"]["rule"], "socket-kinds");
            assert_eq!(e["fence"]["mechanism"], "cgroup/sock_create");
            assert!(e.get("destination").is_none());
        }
    }
}

fn tcp_fast_open_is_judged() {
    let cg = TestCgroup::new("tfo");
    let (allowed, denied) = (tcp4(), tcp4());
    let agent =
        Agent::start("tfo", &policy(&cg, "enforce", "", &rule("127.0.0.1", &port(&allowed).to_string(), "tcp")));
    let o = helper::run(Some(&cg), &["tcp-fastopen", &s(denied.local_addr().unwrap())]);
    o.assert_eperm("sendto(MSG_FASTOPEN) connects without connect(2)");
    agent.wait_event("for the fast-open denial", |e| e["process"]["pid"] == o.pid);
    let ok = helper::run(Some(&cg), &["tcp-fastopen", &s(allowed.local_addr().unwrap())]);
    assert_ne!(ok.errno, Some(libc::EPERM), "fast open to the allowed port: {}", ok.raw);
}

fn expired_identity_is_deny_all() {
    let cg = TestCgroup::new("expired");
    let allowed = tcp4();
    let agent = Agent::start(
        "expired",
        &policy(&cg, "enforce", "    expires: 2020-01-01\n", &rule("127.0.0.1", &port(&allowed).to_string(), "tcp")),
    );
    assert!(agent.stderr_text().contains("EXPIRED"), "the agent must flag it loudly:\n{}", agent.stderr_text());
    let o = tcp_connect(Some(&cg), &s(allowed.local_addr().unwrap()));
    o.assert_eperm("an expired identity is denied even what its rules allow");
    let e = agent.wait_event("for the expired identity's denial", |e| e["process"]["pid"] == o.pid);
    assert_eq!(e["fence"]["rule"], "identity-expired");
}

fn agent_refuses_bad_policy_at_start() {
    let cg = TestCgroup::new("badstart");
    let egress = format!("{}{}", rule("10.0.0.0/33", "22", "tcp"), rule("api.example.com, \"*.com\"", "443", "tcp"));
    let bad = policy(&cg, "enforce", "", &egress).replace("    owner: fence-tests\n", "");
    let mut agent = Agent::spawn("badstart", &bad);
    let status = agent.wait_exit(Duration::from_secs(30 * u64::from(slow_factor())));
    assert_eq!(status.code(), Some(2), "exit status for a bad policy");
    let err = agent.stderr_text();
    let needles = [
        "policy.yaml",
        "identity \"test-bot\"",
        "owner: is required",
        "egress[0].to[0]",
        "prefix length 33",
        // A wildcard over a public suffix (egress by name).
        "egress[1].to[1]",
        "public suffix \"com\"",
    ];
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Nothing was attached: a process in the cgroup is not fenced.
    let l = tcp4();
    tcp_connect(Some(&cg), &s(l.local_addr().unwrap())).assert_ok("no enforcement from a refused start");
    // A configuration error is exit 2 too (the unit does not restart on it), naming the field.
    let dir = crate::env::TempDir::new("badconfig");
    std::fs::write(dir.path("policy.yaml"), "schema: 1\nidentities: []\n").unwrap();
    std::fs::write(dir.path("agent.toml"), "[grants]\nmax_ttl = \"8x\"\n").unwrap();
    let out = std::process::Command::new(crate::agent::agent_binary())
        .args(["run", "--policy"])
        .arg(dir.path("policy.yaml"))
        .arg("--config")
        .arg(dir.path("agent.toml"))
        .output()
        .expect("fence-agent run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status for a bad configuration: {err}");
    assert!(err.contains("grants.max_ttl"), "{err}");
}
