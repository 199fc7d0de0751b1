//! Answers naming the host's own addresses: the unspecified address is never learned, the
//! other local classes only when the operator opts in.

use std::net::IpAddr;

use hickory_proto::{op::ResponseCode, rr::RecordType};

use super::{Authority, Setup, V4, a, aaaa, addresses, ip, learned, parse, query, udp_ask, zone};
use crate::{dns::engine::unlearnable, local_addrs::Interfaces};

/// A filtering resolver answers a blocked name with 0.0.0.0 and ::; the kernel would judge a
/// connect to them as given, then connect to the host itself. The client gets the answer;
/// nothing of it is learned (and the real address beside it is).
#[tokio::test]
async fn unspecified_addresses_are_never_learned() {
    let zone = zone()
        .with(a("sink.example.com.", 60, "0.0.0.0"))
        .with(a("sink.example.com.", 60, "198.51.100.9"))
        .with(aaaa("sink.example.com.", 60, "::"))
        .with(aaaa("sink.example.com.", 60, "::ffff:0.0.0.0"));
    let upstream = Authority::start(V4, zone).await;
    let f = Setup::new(upstream.addr).start().await;
    for qtype in [RecordType::A, RecordType::AAAA] {
        let (bytes, _) = udp_ask(f.addr(V4), &query(7, "sink.example.com", qtype, None)).await.expect("answer");
        assert_eq!(parse(&bytes).response_code, ResponseCode::NoError);
    }
    let learned: Vec<IpAddr> = learned(&f).into_iter().map(|(addr, _, _)| addr).collect();
    assert_eq!(learned, vec![ip("198.51.100.9")], "only the real address");
    let none = Interfaces::default();
    assert!(
        unlearnable(ip("::ffff:0.0.0.0"), true, &none).is_some()
            && unlearnable(ip("::ffff:198.51.100.9"), false, &none).is_none()
    );
}

/// An allowed name answered with the host's own addresses (loopback, link-local, a cloud
/// metadata service, an address of one of its interfaces): the client gets the whole answer,
/// nothing local of it is learned unless the operator opts in, and the unspecified address never
/// is. (The classes themselves: `local_addrs`'s tests.)
#[tokio::test]
async fn local_addresses_are_learned_only_when_allowed() {
    let mut local: Vec<IpAddr> = ["127.0.0.1", "169.254.169.254", "100.100.100.200", "::1", "fe80::1", "fd00:ec2::254"]
        .iter()
        .map(|a| ip(a))
        .collect();
    local.push(ip("::ffff:169.254.169.254"));
    // This host's own interface address, where it has one that no other class covers.
    let interface = nix::ifaddrs::getifaddrs()
        .expect("the host's interfaces")
        .filter(|i| i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip()))))
        .find(|&a| crate::local_addrs::classify(a).is_none());
    if let Some(addr) = interface {
        assert_eq!(unlearnable(addr, false, &Interfaces::default()), Some(crate::local_addrs::Local::Interface));
    } else {
        eprintln!("this host has no up IPv4 interface besides loopback and link-local: that class is not checked");
    }
    local.extend(interface);
    let mut zone =
        zone().with(a("rebind.example.com.", 60, "198.51.100.9")).with(a("rebind.example.com.", 60, "0.0.0.0"));
    for addr in &local {
        let text = addr.to_string();
        zone = match addr {
            IpAddr::V4(_) => zone.with(a("rebind.example.com.", 60, &text)),
            IpAddr::V6(_) => zone.with(aaaa("rebind.example.com.", 60, &text)),
        };
    }
    let upstream = Authority::start(V4, zone).await;
    for learn_local in [false, true] {
        let mut setup = Setup::new(upstream.addr);
        setup.config.learn_local = learn_local;
        let f = setup.start().await;
        let mut answered = Vec::new();
        for qtype in [RecordType::A, RecordType::AAAA] {
            let (bytes, _) = udp_ask(f.addr(V4), &query(7, "rebind.example.com", qtype, None)).await.expect("answer");
            let reply = parse(&bytes);
            assert_eq!(reply.response_code, ResponseCode::NoError);
            answered.extend(addresses(&reply));
        }
        let mut everything = local.clone();
        everything.extend([ip("198.51.100.9"), ip("0.0.0.0")]);
        everything.sort();
        answered.sort();
        assert_eq!(answered, everything, "the client gets the whole answer");
        let mut learned: Vec<IpAddr> = learned(&f).into_iter().map(|(addr, _, _)| addr).collect();
        learned.sort();
        let mut expected = vec![ip("198.51.100.9")];
        if learn_local {
            expected.extend(&local);
            expected.sort();
        }
        assert_eq!(learned, expected, "learn_local = {learn_local} (this host's interface: {interface:?})");
    }
}
