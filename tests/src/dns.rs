//! Egress by name, end to end: the real agent steering a fenced identity's DNS to its resolver,
//! a real authority on loopback (hickory-proto, `fence_agent::dns::testing`) as the upstream,
//! real clients (a hand-built query over UDP and TCP, the C library's getaddrinfo), and
//! connects to what was learned. Each test starts one agent and checks several things with it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use fence_agent::dns::{
    Transport,
    testing::{Authority, Record, Zone, a, aaaa, cname},
};
use serde_json::Value;

use crate::{
    agent::{Agent, agent_binary},
    env::{TempDir, TestCgroup, slow_factor, wait_for},
    harness::Test,
    helper::{self, Outcome},
    persist::Pins,
};

pub const TESTS: &[Test] = &[
    Test { name: "dns_names_steered_answered_and_enforced", run: names_steered_answered_and_enforced },
    Test { name: "dns_expiry_identities_and_agent_down", run: expiry_identities_and_agent_down },
];

/// The test authority, served on its own runtime for as long as it lives.
pub(crate) struct Upstream {
    pub(crate) authority: Authority,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub(crate) fn start(records: Vec<Record>) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test authority");
        let zone = records.into_iter().fold(Zone::default(), Zone::with);
        let authority = runtime.block_on(Authority::start(IpAddr::V4(Ipv4Addr::LOCALHOST), zone));
        Upstream { authority, _runtime: runtime }
    }

    /// Whether the authority was ever asked about `name`.
    fn asked(&self, name: &str) -> bool {
        let fqdn = format!("{name}.");
        self.authority
            .queries()
            .iter()
            .any(|(_, m)| m.queries.iter().any(|q| q.name().to_ascii().eq_ignore_ascii_case(&fqdn)))
    }

    fn asked_over_tcp(&self) -> bool {
        self.authority.queries().iter().any(|(t, _)| *t == Transport::Tcp)
    }
}

/// `fence-tests dns-authority NAME=IP...`: serves A records (TTL 300) on 127.0.0.1 until stdin
/// closes; prints the address it listens on first (the bench's upstream).
pub fn authority_main(args: &[String]) -> std::process::ExitCode {
    let mut records = Vec::new();
    for arg in args {
        let Some((name, ip)) = arg.split_once('=') else {
            eprintln!("dns-authority: expected NAME=IP, got {arg:?}");
            return std::process::ExitCode::from(2);
        };
        records.push(a(&format!("{name}."), 300, ip));
    }
    let up = Upstream::start(records);
    println!("{}", up.authority.addr);
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    std::process::ExitCode::SUCCESS
}

/// A listener on `ip`, port `port` (0: any), for connects that must succeed.
fn listen(ip: &str, port: u16) -> TcpListener {
    TcpListener::bind((ip.parse::<IpAddr>().expect("ip"), port)).unwrap_or_else(|e| panic!("listening on {ip}: {e}"))
}

fn identity(name: &str, cg: &TestCgroup, egress: &str) -> String {
    format!(
        "  - name: {name}\n    owner: fence-tests\n    purpose: egress by name\n    mode: enforce\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress:\n{egress}",
        cg.rel
    )
}

fn rule(names: &[&str], port: u16) -> String {
    let to: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("      - to: [{}]\n        ports: [{port}]\n        protocol: tcp\n", to.join(", "))
}

pub(crate) fn query(cg: Option<&TestCgroup>, server: &str, name: &str, qtype: &str) -> Outcome {
    helper::run(cg, &["dns-query", server, name, qtype])
}

/// The answer's addresses; asserts the query was answered with `rcode`.
#[track_caller]
pub(crate) fn answered(o: &Outcome, rcode: u64, what: &str) -> Vec<String> {
    o.assert_ok(what);
    assert_eq!(o.raw["rcode"], rcode, "{what}: {}", o.raw);
    o.raw["addrs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn connect(cg: &TestCgroup, ip: &str, port: u16) -> Outcome {
    let to = SocketAddr::new(ip.parse().expect("ip"), port);
    helper::run(Some(cg), &["tcp-connect", &to.to_string()])
}

fn names_steered_answered_and_enforced() {
    let l = listen("127.0.0.20", 0);
    let port = l.local_addr().unwrap().port();
    let _listeners: Vec<TcpListener> = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.25", "127.0.0.26"]
        .iter()
        .map(|ip| listen(ip, port))
        .collect();
    let v6 = TcpListener::bind(("::1", port)).ok();
    let up = Upstream::start(vec![
        a("api.allowed.test.", 300, "127.0.0.20"),
        a("a.wild.test.", 300, "127.0.0.21"),
        a("b.a.wild.test.", 300, "127.0.0.22"),
        a("x.y.deep.test.", 300, "127.0.0.23"),
        a("deep.test.", 300, "127.0.0.24"),
        cname("alias.allowed.test.", 300, "edge.cdn.test."),
        a("edge.cdn.test.", 300, "127.0.0.25"),
        a("denied.test.", 300, "127.0.0.26"),
        aaaa("v6.allowed.test.", 300, "::1"),
    ]);
    let cg = TestCgroup::new("dns");
    let names = ["api.allowed.test", "alias.allowed.test", "*.wild.test", "**.deep.test", "v6.allowed.test"];
    let policy = format!("schema: 1\nidentities:\n{}", identity("dns-bot", &cg, &rule(&names, port)));
    // Every address here is loopback (tests reach nothing else), which [dns] learns only when
    // told to; `expiry_identities_and_agent_down` checks the default.
    let config = format!("[dns]\nupstream = [\"{}\"]\nlearn_local_addresses = true\n", up.authority.addr);
    let agent = Agent::start_with("dns", &policy, &config);

    // Before any answer, the address is as denied as any other.
    connect(&cg, "127.0.0.20", port).assert_eperm("a connect before the name was resolved");
    // A query to any server on port 53 is answered by fence, as if by that server.
    let o = query(Some(&cg), "127.0.0.99:53", "api.allowed.test", "A");
    assert_eq!(answered(&o, 0, "an allowed name"), ["127.0.0.20"]);
    assert_eq!(o.raw["from"], "127.0.0.99:53", "the answer shows the server the process asked");
    connect(&cg, "127.0.0.20", port).assert_ok("a connect to the learned address, on the rule's port");
    connect(&cg, "127.0.0.20", port + 1).assert_eperm("the learned address on a port the rule does not allow");

    // A name the identity may not resolve: REFUSED, never sent upstream, one dns event.
    let o = query(Some(&cg), "127.0.0.99:53", "denied.test", "A");
    assert!(answered(&o, 5, "a name no rule names").is_empty());
    assert!(!up.asked("denied.test"), "a refused name must never leave the host");
    let e = agent.wait_event("for the refused query", |e| e["dns"]["question"]["name"] == "denied.test");
    assert_eq!(e["fence"]["operation"], "dns-query");
    assert_eq!(e["fence"]["identity"], "dns-bot");
    assert_eq!(e["fence"]["reason"], "name-not-allowed");
    assert_eq!(e["dns"]["question"]["type"], "A");
    assert_eq!(e["process"]["pid"], o.pid, "the event names the process that asked: {e:#}");
    // Its address, learned by an unfenced lookup, is still denied.
    let direct = query(None, &up.authority.addr.to_string(), "denied.test", "A");
    assert_eq!(answered(&direct, 0, "the unfenced lookup"), ["127.0.0.26"]);
    connect(&cg, "127.0.0.26", port).assert_eperm("the address of a name the identity may not resolve");

    // `*.` is exactly one label, `**.` one or more, never the domain itself.
    answered(&query(Some(&cg), "127.0.0.99:53", "a.wild.test", "A"), 0, "*.wild.test matches one label");
    answered(&query(Some(&cg), "127.0.0.99:53", "b.a.wild.test", "A"), 5, "*.wild.test does not match two");
    answered(&query(Some(&cg), "127.0.0.99:53", "x.y.deep.test", "A"), 0, "**.deep.test matches two labels");
    answered(&query(Some(&cg), "127.0.0.99:53", "deep.test", "A"), 5, "**.deep.test does not match deep.test");
    connect(&cg, "127.0.0.21", port).assert_ok("a name allowed by *.");
    connect(&cg, "127.0.0.22", port).assert_eperm("a name *. does not match");

    // A CNAME chain: the question name is allowed, the address of the chain's end is learned.
    let o = query(Some(&cg), "127.0.0.99:53", "alias.allowed.test", "A");
    assert_eq!(answered(&o, 0, "an allowed alias"), ["127.0.0.25"]);
    connect(&cg, "127.0.0.25", port).assert_ok("the address the alias leads to");

    // TCP, to yet another server address: the connection shows that server as its peer.
    let o = helper::run(Some(&cg), &["dns-query", "127.0.0.98:53", "a.wild.test", "A", "tcp"]);
    assert_eq!(answered(&o, 0, "a query over TCP"), ["127.0.0.21"]);
    assert_eq!(o.raw["from"], "127.0.0.98:53");
    assert!(up.asked_over_tcp(), "a TCP client's question goes upstream over TCP");

    // AAAA over IPv6, to ::1.
    if let Some(_v6) = &v6 {
        let o = query(Some(&cg), "[::1]:53", "v6.allowed.test", "AAAA");
        assert_eq!(answered(&o, 0, "AAAA over ::1"), ["::1"]);
        assert_eq!(o.raw["from"], "[::1]:53");
        connect(&cg, "::1", port).assert_ok("the learned IPv6 address");
    } else {
        println!("no ::1 on this host: the IPv6 resolver is not checked");
    }

    // The C library's resolver (whatever resolv.conf names, port 53) gets fence's answer too.
    let o = helper::run(Some(&cg), &["resolve", "api.allowed.test"]);
    o.assert_ok("getaddrinfo of an allowed name");
    assert!(o.raw["addrs"].as_array().is_some_and(|a| a.iter().any(|v| v == "127.0.0.20")), "{}", o.raw);
    let o = helper::run(Some(&cg), &["resolve", "denied.test"]);
    assert_eq!(o.raw["ok"], false, "getaddrinfo of a refused name fails: {}", o.raw);

    // An unfenced process's DNS is untouched: nothing answers at 127.0.0.99:53 for it.
    let o = query(None, "127.0.0.99:53", "api.allowed.test", "A");
    assert_eq!(o.raw["ok"], false, "unfenced DNS must not reach fence: {}", o.raw);

    // `fence-agent dns` lists what was learned.
    let listed = dns_listing(&agent);
    let learned = listed["learned"].as_array().cloned().unwrap_or_default();
    assert!(
        learned
            .iter()
            .any(|l| l["name"] == "api.allowed.test" && l["address"] == "127.0.0.20" && l["identity"] == "dns-bot"),
        "{listed:#}"
    );
    drop(l);
}

fn expiry_identities_and_agent_down() {
    let slow = u32::max(slow_factor(), 1);
    let lx = listen("127.0.0.28", 0);
    let px = lx.local_addr().unwrap().port();
    let ly = listen("127.0.0.28", 0);
    let py = ly.local_addr().unwrap().port();
    let _only = listen("127.0.0.29", px);
    let _short = listen("127.0.0.30", px);
    let _medium = listen("127.0.0.31", px);
    let up = Upstream::start(vec![
        a("shared.x.test.", 300, "127.0.0.28"),
        a("only.x.test.", 300, "127.0.0.29"),
        a("shared.y.test.", 2 * slow, "127.0.0.28"),
        a("short.x.test.", slow, "127.0.0.30"),
        a("medium.x.test.", 4 * slow, "127.0.0.31"),
    ]);
    let (cx, cy) = (TestCgroup::new("dns-x"), TestCgroup::new("dns-y"));
    let policy = format!(
        "schema: 1\nidentities:\n{}{}",
        identity("x-bot", &cx, &rule(&["shared.x.test", "only.x.test", "short.x.test", "medium.x.test"], px)),
        identity("y-bot", &cy, &rule(&["shared.y.test"], py)),
    );
    let state = TempDir::new("dns-state");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/fence-dns-test-{}", std::process::id()));
    let _pins = Pins(pin_dir.clone());
    let config = format!(
        "[dns]\nupstream = [\"{}\"]\nttl_grace = 0\nttl_floor = 1\nlearn_local_addresses = true\n[persist]\n\
         enabled = true\npin_dir = {:?}\nstate_dir = {:?}\n",
        up.authority.addr,
        pin_dir.display().to_string(),
        state.0.display().to_string()
    );
    let mut agent = Agent::start_with("dns-expiry", &policy, &config);
    let ask = |cg: &TestCgroup, name: &str| answered(&query(Some(cg), "127.0.0.99:53", name, "A"), 0, name);

    // Two identities, one address: each entry keeps its own ports and its own expiry.
    ask(&cx, "shared.x.test");
    ask(&cx, "only.x.test");
    ask(&cy, "shared.y.test");
    connect(&cy, "127.0.0.29", px).assert_eperm("an address only the other identity learned");
    connect(&cx, "127.0.0.28", px).assert_ok("x's port to the shared address");
    connect(&cx, "127.0.0.28", py).assert_eperm("y's port is not x's");
    connect(&cy, "127.0.0.28", py).assert_ok("y's port to the shared address");
    connect(&cy, "127.0.0.28", px).assert_eperm("x's port is not y's");
    let y_gone = wait_for(Duration::from_secs(10 * u64::from(slow)), || {
        let o = connect(&cy, "127.0.0.28", py);
        (o.errno == Some(libc::EPERM)).then_some(o)
    });
    assert!(y_gone.is_some(), "y's entry must expire with its TTL");
    connect(&cx, "127.0.0.28", px).assert_ok("x's entry outlives y's");

    // A TTL ends: new connects are refused until the name is resolved again.
    ask(&cx, "short.x.test");
    connect(&cx, "127.0.0.30", px).assert_ok("right after the answer");
    let expired = wait_for(Duration::from_secs(10 * u64::from(slow)), || {
        (connect(&cx, "127.0.0.30", px).errno == Some(libc::EPERM)).then_some(())
    });
    assert!(expired.is_some(), "a learned address must expire");
    ask(&cx, "short.x.test");
    connect(&cx, "127.0.0.30", px).assert_ok("resolved again");

    // The agent stops (persistence on): what was learned keeps its expiry, judged by the
    // kernel, and DNS fails closed.
    ask(&cx, "medium.x.test");
    nix::sys::signal::kill(agent.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    agent.wait_exit(Duration::from_secs(10 * u64::from(slow)));
    connect(&cx, "127.0.0.31", px).assert_ok("a learned address while the agent is down");
    let o = query(Some(&cx), "127.0.0.99:53", "medium.x.test", "A");
    assert_eq!(o.raw["ok"], false, "DNS while the agent is down must fail, not go around fence: {}", o.raw);
    let expired = wait_for(Duration::from_secs(20 * u64::from(slow)), || {
        (connect(&cx, "127.0.0.31", px).errno == Some(libc::EPERM)).then_some(())
    });
    assert!(expired.is_some(), "a learned address expires with the agent down");

    // The next run takes over what the earlier one learned (pinned), with its expiry.
    let again = Agent::start_with("dns-expiry-again", &policy, &config);
    connect(&cx, "127.0.0.29", px).assert_ok("an address the earlier run learned, after a restart");
    let listed = dns_listing(&again);
    assert!(
        listed["learned"].as_array().is_some_and(|l| l.iter().any(|e| e["address"] == "127.0.0.29"
            && e["identity"] == "x-bot"
            && e["name"].as_str().is_some_and(|n| n.starts_with("(learned before this run)")))),
        "{listed:#}"
    );
    ask(&cx, "medium.x.test");
    connect(&cx, "127.0.0.31", px).assert_ok("the new run answers and learns");
    nix::sys::signal::kill(again.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut again = again;
    again.wait_exit(Duration::from_secs(10 * u64::from(slow)));

    // By default an answer naming the host's own addresses (all of these are loopback) opens
    // nothing: what the earlier runs learned is forgotten at start, and a new answer reaches the
    // client without being learned (a name that rebinds to 127.0.0.1 or 169.254.169.254).
    let strict = config.replace("learn_local_addresses = true\n", "");
    let mut strict = Agent::start_with("dns-expiry-strict", &policy, &strict);
    connect(&cx, "127.0.0.29", px).assert_eperm("a loopback address an earlier run learned, forgotten at start");
    let listed = dns_listing(&strict);
    assert!(
        listed["learned"].as_array().is_some_and(|l| !l.iter().any(|e| e["address"] == "127.0.0.29")),
        "{listed:#}"
    );
    assert_eq!(ask(&cx, "only.x.test"), ["127.0.0.29"], "the client still gets the answer");
    connect(&cx, "127.0.0.29", px).assert_eperm("a loopback address in an answer, not learned by default");
    let log = strict.stderr_text();
    assert!(
        log.lines().any(|l| l.contains("not learnable now: forgotten") && l.contains("127.0.0.29"))
            && log.contains("a loopback address (this host): not learned"),
        "the agent says what it forgot and refused: {log}"
    );
    nix::sys::signal::kill(strict.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    strict.wait_exit(Duration::from_secs(10 * u64::from(slow)));
    uninstall(&strict, &pin_dir);
    drop((agent, again));
}

/// `fence-agent dns --json` of `agent`.
fn dns_listing(agent: &Agent) -> Value {
    let out = Command::new(agent_binary())
        .args(["dns", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .expect("fence-agent dns");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("fence-agent dns --json ({e}): {out:?}"))
}

/// Lifts the pinned enforcement the test left (as `fence-agent uninstall` does).
fn uninstall(agent: &Agent, pin_dir: &std::path::Path) {
    let status = Command::new(agent_binary())
        .args(["uninstall", "--config"])
        .arg(&agent.config)
        .status()
        .expect("fence-agent uninstall");
    assert!(status.success(), "fence-agent uninstall failed");
    assert!(!pin_dir.exists() || std::fs::read_dir(pin_dir).map(|d| d.count() == 0).unwrap_or(true));
}
