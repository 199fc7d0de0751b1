//! The pure parts: resolv.conf and configured upstreams, lifetimes, CNAME chains, names.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV6},
    time::Duration,
};

use hickory_proto::{op::Message, rr::Record};

use crate::dns::testing::{a, aaaa, cname, name};
use crate::dns::{
    EngineConfig, UpstreamError, Upstreams,
    message::{Parsed, chain_addresses, normalize, parse_query},
};

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

#[test]
fn resolv_conf_nameservers_in_order() {
    let text = "# generated\n; comment\nsearch example.com\nnameserver 127.0.0.53\n  nameserver\t2001:db8::53  # trailing\n\
                options edns0 trust-ad\nnameserver not-an-address\nnameserver fe80::1%lo\nnameserver fe80::2%3\nnameserver\n";
    let upstreams = Upstreams::parse_resolv_conf(text).expect("nameservers");
    let lo = nix::net::if_::if_nametoindex("lo").expect("lo exists");
    let expected = vec![
        sock("127.0.0.53:53"),
        sock("[2001:db8::53]:53"),
        SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("v6"), 53, 0, lo)),
        SocketAddr::V6(SocketAddrV6::new("fe80::2".parse().expect("v6"), 53, 0, 3)),
    ];
    assert_eq!(upstreams.servers(), expected.as_slice());
}

#[test]
fn resolv_conf_without_nameserver_is_an_error() {
    assert!(matches!(Upstreams::parse_resolv_conf("search x\nnameserver bogus\n"), Err(UpstreamError::Empty)));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, "options ndots:2\n").expect("write");
    assert!(matches!(Upstreams::from_resolv_conf(&path), Err(UpstreamError::NoNameserver { .. })));
    std::fs::write(&path, "nameserver 198.51.100.53\n").expect("write");
    assert_eq!(Upstreams::from_resolv_conf(&path).expect("read").servers(), &[sock("198.51.100.53:53")]);
    assert!(matches!(Upstreams::from_resolv_conf(&dir.path().join("absent")), Err(UpstreamError::Read { .. })));
}

#[test]
fn configured_upstreams() {
    let list = ["198.51.100.1", "198.51.100.2:5353", "2001:db8::1", "[2001:db8::2]:5353", "[fe80::1%4]:53"];
    let servers = Upstreams::parse_list(&list).expect("valid");
    let expected = [
        sock("198.51.100.1:53"),
        sock("198.51.100.2:5353"),
        sock("[2001:db8::1]:53"),
        sock("[2001:db8::2]:5353"),
        SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("v6"), 53, 0, 4)),
    ];
    assert_eq!(servers.servers(), expected.as_slice());
    for bad in ["dns.example", "198.51.100.1:x", "[2001:db8::1]", "fe80::1%no-such-if0", "300.0.0.1"] {
        assert!(Upstreams::parse_list(&[bad]).is_err(), "{bad} accepted");
    }
    assert!(matches!(Upstreams::parse_list::<&str>(&[]), Err(UpstreamError::Empty)));
}

#[test]
fn lifetime_is_ttl_plus_grace_between_floor_and_cap() {
    let c = EngineConfig::default();
    assert_eq!(c.keep_secs(60), 90);
    assert_eq!(c.keep_secs(0), 30);
    assert_eq!(c.keep_secs(86_400), 3600);
    assert_eq!(c.keep_secs(u32::MAX), 3600);
    let tight = EngineConfig { ttl_grace: Duration::ZERO, ttl_floor: Duration::from_secs(10), ..c };
    assert_eq!(tight.keep_secs(1), 10);
}

fn addrs(qname: &str, answers: &[Record]) -> Vec<(IpAddr, u32)> {
    chain_addresses(&name(qname), answers)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

#[test]
fn chain_follows_cnames_case_insensitively_and_ignores_other_names() {
    let answers = [
        a("Other.Example.", 10, "198.51.100.1"),
        aaaa("edge.CDN.net.", 100, "2001:db8::7"),
        cname("www.example.com.", 50, "EDGE.cdn.net."),
        a("www.example.com.", 5, "198.51.100.1"),
    ];
    assert_eq!(addrs("WWW.example.com.", &answers), vec![(ip("2001:db8::7"), 50), (ip("198.51.100.1"), 5)]);
}

#[test]
fn chain_loops_and_long_chains_end() {
    let looped = [cname("a.test.", 60, "b.test."), cname("b.test.", 60, "a.test."), a("b.test.", 60, "198.51.100.1")];
    assert_eq!(addrs("a.test.", &looped), vec![(ip("198.51.100.1"), 60)]);

    let mut long: Vec<Record> =
        (0..20).map(|i| cname(&format!("n{i}.test."), 60, &format!("n{}.test.", i + 1))).collect();
    long.push(a("n16.test.", 60, "198.51.100.16"));
    long.push(a("n17.test.", 60, "198.51.100.17"));
    assert_eq!(addrs("n0.test.", &long), vec![(ip("198.51.100.16"), 60)], "16 links, no more");
}

#[test]
fn names_are_lower_case_without_the_trailing_dot() {
    assert_eq!(normalize(&name("API.OpenAI.com.")), "api.openai.com");
    assert_eq!(normalize(&name("relative")), "relative");
    assert_eq!(normalize(&name(".")), ".");
    let odd = Message::from_vec(&[
        0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, // header, one question
        3, b'a', b'.', b'b', 1, 0xff, 0, // "a\.b" "\255"
        0, 1, 0, 1,
    ])
    .expect("parses");
    let qname = normalize(odd.queries[0].name());
    assert!(qname.starts_with("a\\.b."), "a dot inside a label stays escaped: {qname}");
}

#[test]
fn every_prefix_of_a_query_classifies_without_panic() {
    let mut m = Message::query();
    m.add_query(hickory_proto::op::Query::query(name("api.example.com."), hickory_proto::rr::RecordType::A));
    let bytes = m.to_vec().expect("encode");
    for n in 0..=bytes.len() {
        let parsed = parse_query(&bytes[..n]);
        match n {
            0..12 => assert!(matches!(parsed, Parsed::Drop), "{n}"),
            n if n < bytes.len() => assert!(matches!(parsed, Parsed::Reject(_)), "{n}"),
            _ => assert!(matches!(parsed, Parsed::Query(_))),
        }
    }
}

#[test]
fn truncated_answer_keeps_the_question_and_a_bare_opt() {
    use hickory_proto::{
        op::{Edns, OpCode, Query},
        rr::{RecordType, rdata::opt::EdnsOption},
    };
    let mut reply = Message::response(77, OpCode::Query);
    reply.add_query(Query::query(name("big.example.com."), RecordType::A));
    for i in 0..100u8 {
        reply.add_answer(a("big.example.com.", 60, &format!("198.51.100.{i}")));
    }
    let mut edns = Edns::new();
    edns.set_max_payload(4096).set_dnssec_ok(true);
    edns.options_mut().insert(EdnsOption::Unknown(65001, vec![0; 3000]));
    reply.set_edns(edns);

    let bytes = crate::dns::message::truncated(&reply, 9).expect("encodes");
    assert!(bytes.len() <= 512, "{} bytes", bytes.len());
    let t = Message::from_vec(&bytes).expect("parses");
    assert!(t.truncation && t.answers.is_empty() && t.id == 9 && t.queries.len() == 1);
    let opt = t.edns.expect("OPT kept");
    assert!(opt.flags().dnssec_ok && opt.options().as_ref().is_empty());
}
