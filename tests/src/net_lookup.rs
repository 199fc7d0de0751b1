//! How the kernel finds an identity's egress rules: prefixes in a trie, and, for an identity
//! with many single addresses (`HOST_MAP_MIN`), those addresses in a hash map looked up first.
//! The compiler folds a wider prefix's ports into each address it holds, so an address's own
//! entry says it all, and an address without one is judged by the trie. (An identity with few
//! addresses has everything in the trie: every other network test.) Allowed connects work and
//! make no event.

use std::net::TcpListener;

use fence_agent::fences::net::HOST_MAP_MIN;

use crate::{
    agent::Agent,
    env::TestCgroup,
    harness::{Test, note},
    net::{entries_of, policy, port, rule, tcp_connect, to_port},
};

pub const TESTS: &[Test] = &[Test { name: "net_addresses_and_prefixes_combine", run: addresses_and_prefixes_combine }];

/// Listeners on 127.0.0.1 and 127.0.0.2 with the same port number.
fn pair() -> (TcpListener, TcpListener, u16) {
    for _ in 0..50 {
        let one = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
        let p = port(&one);
        if let Ok(two) = TcpListener::bind(("127.0.0.2", p)) {
            return (one, two, p);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2 in 50 tries");
}

/// Whether a dump's port rules (`443/tcp,8000-8080/tcp+udp grant=3`) allow TCP to `port`.
fn covers(rules: &str, port: u16) -> bool {
    rules.split(',').any(|r| {
        let r = r.split(' ').next().unwrap_or_default();
        let Some((range, protocols)) = r.split_once('/') else { return false };
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let (lo, hi) = (lo.parse().unwrap_or(u16::MAX), hi.parse().unwrap_or(0));
        protocols.split('+').any(|p| p == "tcp") && (lo..=hi).contains(&port)
    })
}

/// `first` and enough other addresses (`more(i)`) to make `HOST_MAP_MIN`, as a YAML list body.
fn many(first: &str, more: impl Fn(usize) -> String) -> String {
    let mut v = vec![first.to_owned()];
    v.extend((1..HOST_MAP_MIN).map(more));
    v.join(", ")
}

fn addresses_and_prefixes_combine() {
    let cg = TestCgroup::new("prefixes");
    let ((_a1, _a2, a), (_b1, _b2, b)) = (pair(), pair());
    let c = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
    let v6 = [TcpListener::bind("[::1]:0"), TcpListener::bind("[::1]:0"), TcpListener::bind("[::1]:0")];
    let v6_ports: Option<Vec<u16>> = v6.iter().map(|l| l.as_ref().ok().map(port)).collect();
    // Without IPv6 the rules are still compiled and held: ports apart, so that they stay two.
    let (p6, q6) = v6_ports.as_ref().map_or((1, 3), |p| (p[0], p[1]));
    // IPv4: 127.0.0.0/8 on port a (the trie); 127.0.0.1 and 127.1.0.1... on port b (the host
    // map). IPv6: ::1 and fd00::1... on port p6 (the host map); ::/127 on port q6 (the trie).
    let egress = [
        rule("127.0.0.0/8", &a.to_string(), "tcp"),
        rule(&many("127.0.0.1", |i| format!("127.1.{}.{}", i / 256, i % 256)), &b.to_string(), "tcp"),
        rule(&many("\"::1\"", |i| format!("\"fd00::{i:x}\"")), &p6.to_string(), "tcp"),
        rule("\"::/127\"", &q6.to_string(), "tcp"),
    ]
    .concat();
    let agent = Agent::start("prefixes", &policy(&cg, "enforce", "", &egress));
    tcp_connect(Some(&cg), &format!("127.0.0.1:{a}")).assert_ok("127.0.0.1, port of the /8 (folded into its entry)");
    tcp_connect(Some(&cg), &format!("127.0.0.1:{b}")).assert_ok("127.0.0.1, port of its own rule (the host map)");
    tcp_connect(Some(&cg), &format!("127.0.0.2:{a}")).assert_ok("127.0.0.2, port of the /8 (the trie)");
    let o = tcp_connect(Some(&cg), &format!("127.0.0.2:{b}"));
    o.assert_eperm("127.0.0.2 on the port only the single addresses have");
    let e = agent.wait_event("for 127.0.0.2 refused", |e| e["process"]["pid"] == o.pid && to_port(e, b));
    assert_eq!(e["destination"]["ip"], "127.0.0.2", "{e:#}");
    // The refusal's event came after the allowed connects: none of them made one.
    let events = agent.events();
    assert!(
        events.iter().all(|e| !to_port(e, a) && (e["destination"]["ip"] != "127.0.0.1" || !to_port(e, b))),
        "an allowed connect produced an event: {events:#?}"
    );
    tcp_connect(Some(&cg), &format!("127.0.0.1:{}", port(&c))).assert_eperm("127.0.0.1 on a port no rule has");
    match &v6_ports {
        Some(p) => {
            tcp_connect(Some(&cg), &format!("[::1]:{p6}")).assert_ok("::1, port of its own rule (the host map)");
            tcp_connect(Some(&cg), &format!("[::1]:{q6}")).assert_ok("::1, port of ::/127 (folded into its entry)");
            let o = tcp_connect(Some(&cg), &format!("[::1]:{}", p[2]));
            o.assert_eperm("::1 on a port no rule has");
            agent.wait_event("for ::1 refused", |e| e["process"]["pid"] == o.pid && to_port(e, p[2]));
            let events = agent.events();
            assert!(
                events.iter().all(|e| !to_port(e, p6) && !to_port(e, q6)),
                "an allowed IPv6 connect produced an event: {events:#?}"
            );
        }
        None => note("no IPv6 loopback on this host: the IPv6 connects were not made"),
    }
    // Where the kernel holds each rule.
    let dump = agent.dump();
    let identity =
        dump.entries.iter().find(|e| e.map == "FENCE_HOST4").map(|e| e.identity).expect("a FENCE_HOST4 entry");
    // Per family: the host map holds every single address, the own one with the wider
    // prefix's port folded in; the trie holds the prefix only.
    for (host, own, trie, prefix, wide, narrow) in [
        ("FENCE_HOST4", "127.0.0.1/32", "FENCE_NET4", "127.0.0.0/8", a, b),
        ("FENCE_HOST6", "::1/128", "FENCE_NET6", "::/127", q6, p6),
    ] {
        let singles = entries_of(&dump, host, identity);
        assert_eq!(singles.len(), HOST_MAP_MIN, "every single address in {host}");
        let (_, ports) =
            singles.iter().find(|(k, _)| k.as_deref() == Some(own)).expect("the own address in the host map");
        let ports = ports.as_deref().unwrap_or_default();
        assert!(covers(ports, wide) && covers(ports, narrow), "{own}: both ports, {wide} and {narrow}: {ports}");
        let prefixes = entries_of(&dump, trie, identity);
        assert_eq!(prefixes, [(Some(prefix.to_owned()), Some(format!("{wide}/tcp")))], "{trie} holds {prefix} only");
    }
}
