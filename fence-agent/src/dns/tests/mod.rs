//! The resolver on real loopback sockets: a test authority as the upstream, the engine's
//! listeners as the kernel would redirect to, a client built with hickory-proto.

mod local;
mod parse;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::testing::{Authority, Zone, a, aaaa, cname, name};
use super::{
    Decide, Decision, Engine, EngineConfig, Learn, LearnError, LearnFuture, Learned, Listeners, QueryEvent, Refusal,
    Report, Server, Transport, Upstreams, Verdict, serve,
};

const IDENTITY: u32 = 7;
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Allows names under the given suffixes (the allowance is the suffix); refuses the rest, or
/// would refuse them in audit mode.
struct Policy {
    allow: Vec<&'static str>,
    audit: bool,
}

impl Decide<String> for Policy {
    fn decide(&self, _identity: u32, qname: &str) -> Decision<String> {
        let allowed = self.allow.iter().find(|s| qname == **s || qname.ends_with(&format!(".{s}")));
        match (allowed, self.audit) {
            (Some(s), _) => Decision::Allow((*s).to_owned()),
            (None, false) => Decision::Refuse,
            (None, true) => Decision::AuditWouldRefuse,
        }
    }
}

#[derive(Debug, Clone)]
struct LearnCall {
    identity: u32,
    qname: String,
    allowance: String,
    addrs: Vec<Learned>,
    done: Instant,
}

/// Records what it learns and when it finished; can be slow or fail.
#[derive(Default)]
struct Learner {
    calls: Mutex<Vec<LearnCall>>,
    delay: Duration,
    fail: bool,
}

impl Learn<String> for Learner {
    fn learn<'a>(
        &'a self,
        identity: u32,
        qname: &'a str,
        allowance: &'a String,
        addrs: &'a [Learned],
    ) -> LearnFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if self.fail {
                return Err(LearnError("map full".to_owned()));
            }
            let call = LearnCall {
                identity,
                qname: qname.to_owned(),
                allowance: allowance.clone(),
                addrs: addrs.to_vec(),
                done: Instant::now(),
            };
            self.calls.lock().expect("lock").push(call);
            Ok(())
        })
    }
}

impl Learner {
    fn calls(&self) -> Vec<LearnCall> {
        self.calls.lock().expect("lock").clone()
    }
}

/// One reported query: identity, transport, name, type, verdict.
type Reported = (u32, Transport, String, RecordType, Verdict);

/// The reported queries, and the addresses each carried.
#[derive(Default)]
struct Reports(Mutex<Vec<Reported>>, Mutex<Vec<Vec<std::net::IpAddr>>>);

impl Report for Reports {
    fn report(&self, e: &QueryEvent<'_>) {
        self.0.lock().expect("lock").push((e.identity, e.transport, e.qname.to_owned(), e.qtype, e.verdict));
        self.1.lock().expect("lock").push(e.resolved.to_vec());
    }
}

impl Reports {
    fn all(&self) -> Vec<Reported> {
        self.0.lock().expect("lock").clone()
    }
}

struct Fixture {
    engine: Arc<Engine<String>>,
    server: Server,
    learner: Arc<Learner>,
    reports: Arc<Reports>,
}

impl Fixture {
    /// The listener of `family` (127.0.0.1 or ::1), UDP and TCP on the same port.
    fn addr(&self, family: IpAddr) -> SocketAddr {
        *self.server.local_addrs().iter().find(|a| a.ip() == family).expect("a listener of the family")
    }
}

struct Setup {
    upstreams: Vec<SocketAddr>,
    config: EngineConfig,
    policy: Policy,
    learner: Learner,
}

impl Setup {
    fn new(upstream: SocketAddr) -> Self {
        Setup {
            upstreams: vec![upstream],
            config: EngineConfig::default(),
            policy: Policy { allow: vec!["example.com"], audit: false },
            learner: Learner::default(),
        }
    }

    async fn start(self) -> Fixture {
        let learner = Arc::new(self.learner);
        let reports = Arc::new(Reports::default());
        let engine = Arc::new(Engine::new(
            self.config,
            Upstreams::new(self.upstreams).expect("upstreams"),
            Arc::new(self.policy),
            Arc::clone(&learner) as Arc<dyn Learn<String>>,
            Arc::clone(&reports) as Arc<dyn Report>,
        ));
        let listeners = Listeners::bind_loopback().await.expect("bind loopback");
        let server = serve(IDENTITY, listeners, Arc::clone(&engine));
        Fixture { engine, server, learner, reports }
    }
}

fn zone() -> Zone {
    Zone::default()
        .with(a("api.example.com.", 60, "198.51.100.1"))
        .with(a("api.example.com.", 600, "198.51.100.2"))
        .with(aaaa("api.example.com.", 120, "2001:db8::1"))
        .with(a("blocked.test.", 60, "198.51.100.1"))
}

/// A query for `qname`/`qtype` with `id`, and EDNS (buffer size, DO) when given.
fn query(id: u16, qname: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some((size, dnssec_ok)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size).set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

/// Sends `bytes` over UDP from the family of `to`; the answer, if one comes within 3 s.
async fn udp_ask(to: SocketAddr, bytes: &[u8]) -> Option<(Vec<u8>, Instant)> {
    udp_ask_within(to, bytes, Duration::from_secs(3)).await
}

async fn udp_ask_within(to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<(Vec<u8>, Instant)> {
    let socket = UdpSocket::bind((to.ip(), 0)).await.expect("bind client");
    socket.send_to(bytes, to).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = timeout(wait, socket.recv_from(&mut buf)).await.ok()?.ok()?;
    Some((buf[..n].to_vec(), Instant::now()))
}

async fn tcp_ask(stream: &mut TcpStream, bytes: &[u8]) -> Message {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.expect("write");
    let len = timeout(Duration::from_secs(3), stream.read_u16()).await.expect("in time").expect("length");
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.expect("body");
    Message::from_vec(&reply).expect("the answer parses")
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("the answer parses")
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn learned(f: &Fixture) -> Vec<(IpAddr, u32, u32)> {
    f.learner.calls().iter().flat_map(|c| c.addrs.iter().map(|l| (l.addr, l.ttl, l.keep_secs))).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

#[tokio::test]
async fn allowed_name_is_learned_before_the_client_sees_the_answer() {
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(upstream.addr);
    setup.learner.delay = Duration::from_millis(150);
    let f = setup.start().await;

    let (bytes, received) =
        udp_ask(f.addr(V4), &query(0x1234, "API.Example.COM.", RecordType::A, None)).await.expect("answer");
    let reply = parse(&bytes);
    assert_eq!(reply.id, 0x1234, "the client's id is kept");
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), vec![ip("198.51.100.1"), ip("198.51.100.2")]);

    let calls = f.learner.calls();
    assert_eq!(calls.len(), 1, "learned once: {calls:?}");
    let call = &calls[0];
    assert!(call.done <= received, "learning finished before the answer arrived");
    assert_eq!(
        (call.identity, call.qname.as_str(), call.allowance.as_str()),
        (IDENTITY, "api.example.com", "example.com")
    );
    // TTL + 30 s grace.
    assert_eq!(learned(&f), vec![(ip("198.51.100.1"), 60, 90), (ip("198.51.100.2"), 600, 630)]);
    let m = f.engine.metrics().snapshot();
    assert_eq!((m.allowed, m.answers_held), (1, 1));
    assert!(m.hold_us_max >= 150_000, "the hold covers the learn: {m:?}");
    // The upstream got one re-encoded question, with another id.
    let seen = upstream.queries();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Transport::Udp);
    assert!(seen[0].1.recursion_desired);
}

#[tokio::test]
async fn refused_name_never_leaves_the_host() {
    let upstream = Authority::start(V4, zone()).await;
    let f = Setup::new(upstream.addr).start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(9, "blocked.test", RecordType::A, None)).await.expect("answer");
    let reply = parse(&bytes);
    assert_eq!((reply.id, reply.response_code), (9, ResponseCode::Refused));
    assert_eq!(reply.queries.len(), 1, "the question is echoed");
    assert!(upstream.queries().is_empty(), "the upstream never saw it");
    assert!(f.learner.calls().is_empty());
    assert_eq!(
        f.reports.all(),
        vec![(IDENTITY, Transport::Udp, "blocked.test".to_owned(), RecordType::A, Verdict::Refused)]
    );
    assert_eq!(f.engine.metrics().snapshot().refused, 1);
}

#[tokio::test]
async fn refusal_can_be_nxdomain() {
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(upstream.addr);
    setup.config.refusal = Refusal::NxDomain;
    let f = setup.start().await;

    let (bytes, _) =
        udp_ask(f.addr(V4), &query(9, "blocked.test", RecordType::AAAA, Some((1232, true)))).await.expect("answer");
    let reply = parse(&bytes);
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert!(reply.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok), "an EDNS client gets OPT back");
    assert!(upstream.queries().is_empty());
}

#[tokio::test]
async fn audit_forwards_and_reports_but_learns_nothing() {
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(upstream.addr);
    setup.policy.audit = true;
    let f = setup.start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(3, "blocked.test", RecordType::A, None)).await.expect("answer");
    assert_eq!(addresses(&parse(&bytes)), vec![ip("198.51.100.1")]);
    assert!(f.learner.calls().is_empty());
    assert_eq!(f.reports.all()[0].4, Verdict::WouldRefuse);
    // The would-refuse carries what the name resolved to (learn mode ties connects to it).
    assert_eq!(*f.reports.1.lock().expect("lock"), vec![vec![ip("198.51.100.1")]]);
    assert_eq!(upstream.queries().len(), 1);
}

#[tokio::test]
async fn cname_chain_is_learned_only_for_its_names() {
    let zone = Zone {
        extra: vec![a("unrelated.evil.", 3600, "203.0.113.9"), a("other.cdn.net.", 3600, "203.0.113.10")],
        ..Zone::default()
    }
    .with(cname("www.example.com.", 300, "edge.cdn.net."))
    .with(cname("edge.cdn.net.", 20, "e1.cdn.net."))
    .with(a("e1.cdn.net.", 600, "198.51.100.7"))
    .with(a("e1.cdn.net.", 10, "198.51.100.8"));
    let upstream = Authority::start(V4, zone).await;
    let f = Setup::new(upstream.addr).start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(5, "www.example.com", RecordType::A, None)).await.expect("answer");
    let reply = parse(&bytes);
    assert_eq!(reply.answers.len(), 6, "the answer is released as the upstream sent it");
    // The smallest TTL on each address's path: the CNAMEs' 300 and 20, then its own.
    assert_eq!(learned(&f), vec![(ip("198.51.100.7"), 20, 50), (ip("198.51.100.8"), 10, 40)]);
    assert_eq!(f.learner.calls()[0].qname, "www.example.com");
}

#[tokio::test]
async fn aaaa_over_ipv6_listener_and_upstream() {
    let upstream = Authority::start(V6, zone()).await;
    let f = Setup::new(upstream.addr).start().await;

    let (bytes, _) = udp_ask(f.addr(V6), &query(6, "api.example.com", RecordType::AAAA, None)).await.expect("answer");
    assert_eq!(addresses(&parse(&bytes)), vec![ip("2001:db8::1")]);
    assert_eq!(learned(&f), vec![(ip("2001:db8::1"), 120, 150)]);
}

#[tokio::test]
async fn truncated_udp_answer_is_asked_again_over_tcp() {
    let upstream = Authority::start(V4, Zone { truncate_udp: true, ..zone() }).await;
    let f = Setup::new(upstream.addr).start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(8, "api.example.com", RecordType::A, None)).await.expect("answer");
    let reply = parse(&bytes);
    assert!(!reply.truncation);
    assert_eq!(addresses(&reply), vec![ip("198.51.100.1"), ip("198.51.100.2")]);
    let transports: Vec<Transport> = upstream.queries().iter().map(|(t, _)| *t).collect();
    assert_eq!(transports, vec![Transport::Udp, Transport::Tcp]);
    assert_eq!(learned(&f).len(), 2);
}

#[tokio::test]
async fn answer_too_large_for_the_client_is_truncated_then_served_over_tcp() {
    let mut zone = Zone { truncate_udp: true, ..Zone::default() };
    for i in 0..60 {
        zone.records.push(a("big.example.com.", 60, &format!("198.51.100.{i}")));
    }
    let upstream = Authority::start(V4, zone).await;
    let f = Setup::new(upstream.addr).start().await;

    // No EDNS: 512 bytes at most over UDP.
    let (bytes, _) = udp_ask(f.addr(V4), &query(11, "big.example.com", RecordType::A, None)).await.expect("answer");
    assert!(bytes.len() <= 512);
    let reply = parse(&bytes);
    assert!(reply.truncation && reply.answers.is_empty() && reply.id == 11, "{reply:?}");
    assert_eq!(learned(&f).len(), 60, "learned from the full TCP answer all the same");

    let mut stream = TcpStream::connect(f.addr(V4)).await.expect("connect");
    let reply = tcp_ask(&mut stream, &query(12, "big.example.com", RecordType::A, None)).await;
    assert_eq!((reply.id, reply.answers.len(), reply.truncation), (12, 60, false));
}

#[tokio::test]
async fn tcp_client_is_forwarded_over_tcp_with_its_edns() {
    let upstream = Authority::start(V4, zone()).await;
    let f = Setup::new(upstream.addr).start().await;

    let mut stream = TcpStream::connect(f.addr(V6)).await.expect("connect");
    let first = tcp_ask(&mut stream, &query(21, "api.example.com", RecordType::A, Some((4096, true)))).await;
    let refused = tcp_ask(&mut stream, &query(22, "blocked.test", RecordType::A, None)).await;
    assert_eq!((first.id, addresses(&first).len()), (21, 2));
    assert_eq!((refused.id, refused.response_code), (22, ResponseCode::Refused));

    let seen = upstream.queries();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Transport::Tcp);
    let edns = seen[0].1.edns.as_ref().expect("the client's OPT is forwarded");
    assert_eq!((edns.max_payload(), edns.flags().dnssec_ok), (4096, true));
    assert_eq!(f.reports.all()[0].1, Transport::Tcp);
}

#[tokio::test]
async fn learn_failure_is_servfail() {
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(upstream.addr);
    setup.learner.fail = true;
    let f = setup.start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(4, "api.example.com", RecordType::A, None)).await.expect("answer");
    let reply = parse(&bytes);
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty(), "no address leaks out");
    assert_eq!(f.reports.all()[0].4, Verdict::LearnFailed);
    assert_eq!(f.engine.metrics().snapshot().learn_failures, 1);
}

#[tokio::test]
async fn nxdomain_and_empty_answers_pass_through_and_teach_nothing() {
    let upstream = Authority::start(V4, zone()).await;
    let f = Setup::new(upstream.addr).start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(4, "nope.example.com", RecordType::A, None)).await.expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::NXDomain);
    let (bytes, _) = udp_ask(f.addr(V4), &query(5, "api.example.com", RecordType::MX, None)).await.expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::NoError);
    assert!(f.learner.calls().is_empty());
}

#[tokio::test]
async fn malformed_input_gets_formerr_or_nothing_and_the_server_goes_on() {
    let upstream = Authority::start(V4, zone()).await;
    let f = Setup::new(upstream.addr).start().await;
    let to = f.addr(V4);
    let quick = Duration::from_millis(300);

    // Not even a header: dropped.
    assert!(udp_ask_within(to, &[0x01], quick).await.is_none());
    // A header announcing a question that is not there: FORMERR with the id.
    let header_only = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let reply = parse(&udp_ask(to, &header_only).await.expect("answer").0);
    assert_eq!((reply.id, reply.response_code), (0xabcd, ResponseCode::FormErr));
    // Two questions: FORMERR.
    let mut two = Message::new(31, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(name("api.example.com."), RecordType::A));
    two.add_query(Query::query(name("blocked.test."), RecordType::A));
    let reply = parse(&udp_ask(to, &two.to_vec().expect("encode")).await.expect("answer").0);
    assert_eq!((reply.id, reply.response_code), (31, ResponseCode::FormErr));
    // No question: FORMERR.
    let none = Message::new(32, MessageType::Query, OpCode::Query);
    let reply = parse(&udp_ask(to, &none.to_vec().expect("encode")).await.expect("answer").0);
    assert_eq!(reply.response_code, ResponseCode::FormErr);
    // NOTIFY: NOTIMP.
    let mut notify = Message::new(33, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(name("api.example.com."), RecordType::SOA));
    let reply = parse(&udp_ask(to, &notify.to_vec().expect("encode")).await.expect("answer").0);
    assert_eq!(reply.response_code, ResponseCode::NotImp);
    // A response sent to the resolver: dropped.
    let response = Message::response(34, OpCode::Query);
    assert!(udp_ask_within(to, &response.to_vec().expect("encode"), quick).await.is_none());
    // Garbage over TCP, then a good query on a new connection.
    let mut stream = TcpStream::connect(to).await.expect("connect");
    stream.write_all(&[0, 3, 1, 2, 3]).await.expect("write");
    drop(stream);

    assert!(upstream.queries().is_empty(), "nothing malformed was forwarded");
    let (bytes, _) = udp_ask(to, &query(35, "api.example.com", RecordType::A, None)).await.expect("still serving");
    assert_eq!(parse(&bytes).response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn silent_upstream_times_out_and_the_next_answers() {
    let silent = UdpSocket::bind((V4, 0)).await.expect("bind a silent upstream");
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(silent.local_addr().expect("addr"));
    setup.upstreams.push(upstream.addr);
    setup.config.upstream_timeout = Duration::from_millis(300);
    let f = setup.start().await;

    let started = Instant::now();
    let (bytes, _) = udp_ask(f.addr(V4), &query(41, "api.example.com", RecordType::A, None)).await.expect("answer");
    assert!(started.elapsed() >= Duration::from_millis(300), "the first upstream had its time");
    assert_eq!(addresses(&parse(&bytes)).len(), 2);
    assert_eq!(upstream.queries().len(), 1);
}

#[tokio::test]
async fn no_upstream_answering_is_servfail() {
    let silent = UdpSocket::bind((V4, 0)).await.expect("bind a silent upstream");
    let mut setup = Setup::new(silent.local_addr().expect("addr"));
    setup.config.upstream_timeout = Duration::from_millis(200);
    let f = setup.start().await;

    let (bytes, _) = udp_ask(f.addr(V4), &query(42, "api.example.com", RecordType::A, None)).await.expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::ServFail);
    assert_eq!(f.reports.all()[0].4, Verdict::UpstreamFailed);
    assert_eq!(f.engine.metrics().snapshot().upstream_failures, 1);
}

#[tokio::test]
async fn the_resolver_never_forwards_to_itself() {
    let listeners = Listeners::bind_loopback().await.expect("bind");
    let own = listeners.local_addrs();
    let reports = Arc::new(Reports::default());
    let engine = Arc::new(Engine::new(
        EngineConfig { upstream_timeout: Duration::from_secs(5), ..EngineConfig::default() },
        Upstreams::new(own.clone()).expect("upstreams"),
        Arc::new(Policy { allow: vec!["example.com"], audit: false }),
        Arc::new(Learner::default()) as Arc<dyn Learn<String>>,
        Arc::clone(&reports) as Arc<dyn Report>,
    ));
    let server = serve(IDENTITY, listeners, Arc::clone(&engine));
    let started = Instant::now();
    let (bytes, _) = udp_ask(own[0], &query(43, "api.example.com", RecordType::A, None)).await.expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(1), "skipped, not timed out");
    drop(server);
}

#[tokio::test]
async fn queries_past_the_limit_get_servfail() {
    let upstream = Authority::start(V4, zone()).await;
    let mut setup = Setup::new(upstream.addr);
    setup.config.max_in_flight = 1;
    setup.learner.delay = Duration::from_millis(500);
    let f = setup.start().await;
    let to = f.addr(V4);

    let slow = tokio::spawn(async move { udp_ask(to, &query(51, "api.example.com", RecordType::A, None)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (bytes, _) = udp_ask(to, &query(52, "api.example.com", RecordType::A, None)).await.expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::ServFail);
    let (bytes, _) = slow.await.expect("join").expect("answer");
    assert_eq!(parse(&bytes).response_code, ResponseCode::NoError);
    assert_eq!(f.engine.metrics().snapshot().overloaded, 1);
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let upstream = Authority::start(V4, zone()).await;
    let f = Setup::new(upstream.addr).start().await;
    let addrs = f.server.local_addrs().to_vec();
    assert_eq!(f.server.identity(), IDENTITY);
    drop(f.server);
    for addr in addrs {
        let mut closed = false;
        for _ in 0..40 {
            if TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(closed, "{addr} still accepts");
    }
}
