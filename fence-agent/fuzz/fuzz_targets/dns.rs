//! The DNS resolver's query handling (`dns::Engine::handle`) on fuzz-chosen bytes, both sides:
//! the client's query, and the answer an upstream gives to what the engine forwards.
//!
//! Input: two bytes (little-endian) giving the length of the query, the query, then the
//! upstream's answer. A test upstream on 127.0.0.1 (UDP and TCP on one port) answers every
//! forwarded question with that answer: if it parses as a DNS message, with the forwarded id
//! and question put in (so that the engine takes it), else as the raw bytes. The policy allows
//! names under `example.com` and would-refuse (audit) names under `audit.test`; learning
//! succeeds and checks what it is given.
//!
//! Checked: no panic; an answer, when there is one, parses, carries the client's id, and over
//! UDP fits the client's buffer; learned addresses come once each, with lifetimes in bounds.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use fence_agent::dns::{
    Decide, Decision, Engine, EngineConfig, Incoming, Learn, LearnFuture, Learned, QueryEvent, Report, Transport,
    Upstreams,
};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

struct Policy;

impl Decide<()> for Policy {
    fn decide(&self, _identity: u32, qname: &str) -> Decision<()> {
        if qname == "example.com" || qname.ends_with(".example.com") {
            Decision::Allow(())
        } else if qname.ends_with("audit.test") {
            Decision::AuditWouldRefuse
        } else {
            Decision::Refuse
        }
    }
}

struct Learner;

impl Learn<()> for Learner {
    fn learn<'a>(&'a self, _identity: u32, qname: &'a str, _a: &'a (), addrs: &'a [Learned]) -> LearnFuture<'a> {
        assert!(qname.ends_with("example.com"), "learned for a name that was not allowed: {qname}");
        assert!(!addrs.is_empty(), "learn called with no address");
        for (i, l) in addrs.iter().enumerate() {
            assert!((5..=3600).contains(&l.keep_secs), "lifetime out of bounds: {l:?}");
            assert!(addrs[..i].iter().all(|o| o.addr != l.addr), "address learned twice: {addrs:?}");
        }
        Box::pin(async { Ok(()) })
    }
}

struct Quiet;

impl Report for Quiet {
    fn report(&self, _event: &QueryEvent<'_>) {}
}

struct Harness {
    runtime: Runtime,
    engine: Arc<Engine<()>>,
    answer: Arc<Mutex<Vec<u8>>>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answer = Arc::new(Mutex::new(Vec::new()));
        let upstream = runtime.block_on(start_upstream(Arc::clone(&answer)));
        let config = EngineConfig {
            upstream_timeout: Duration::from_millis(20),
            learn_timeout: Duration::from_millis(100),
            ..EngineConfig::default()
        };
        let upstreams = Upstreams::new(vec![upstream]).expect("one upstream");
        let engine = Arc::new(Engine::new(config, upstreams, Arc::new(Policy), Arc::new(Learner), Arc::new(Quiet)));
        Harness { runtime, engine, answer }
    })
}

/// The test upstream; its tasks run whenever the runtime runs (inside `block_on`).
async fn start_upstream(answer: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind tcp");
    let addr = tcp.local_addr().expect("addr");
    let udp = UdpSocket::bind(addr).await.expect("bind udp");
    let for_udp = Arc::clone(&answer);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let reply = reply_to(&buf[..n], &for_udp);
            let _ = udp.send_to(&reply, peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let Ok(len) = stream.read_u16().await else { continue };
            let mut query = vec![0u8; usize::from(len)];
            if stream.read_exact(&mut query).await.is_err() {
                continue;
            }
            let reply = reply_to(&query, &answer);
            let mut framed = (reply.len().min(65535) as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply[..reply.len().min(65535)]);
            let _ = stream.write_all(&framed).await;
        }
    });
    addr
}

/// The fuzz-chosen answer, made to fit the forwarded query when it parses.
fn reply_to(query: &[u8], answer: &Mutex<Vec<u8>>) -> Vec<u8> {
    let mut raw = answer.lock().expect("lock").clone();
    let Ok(query) = Message::from_vec(query) else { return raw };
    match Message::from_vec(&raw) {
        Ok(mut m) => {
            m.metadata.id = query.id;
            m.metadata.message_type = MessageType::Response;
            m.queries = query.queries.clone();
            m.to_vec().unwrap_or(raw)
        }
        Err(_) => {
            if let Some(head) = raw.get_mut(..2) {
                head.copy_from_slice(&query.id.to_be_bytes());
            }
            raw
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (query, answer) = rest.split_at(split);
    let h = harness();
    *h.answer.lock().expect("lock") = answer.to_vec();
    for transport in [Transport::Udp, Transport::Tcp] {
        let incoming =
            Incoming { identity: 1, peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 5353)), transport, bytes: query };
        let Some(reply) = h.runtime.block_on(h.engine.handle(&incoming)) else { continue };
        let parsed = Message::from_vec(&reply.bytes).expect("every answer parses");
        assert_eq!(&reply.bytes[..2], &query[..2], "the answer carries the client's id");
        assert_eq!(parsed.message_type, MessageType::Response);
        if transport == Transport::Udp {
            let limit = Message::from_vec(query).ok().and_then(|q| q.edns).map_or(512, |e| e.max_payload().max(512));
            assert!(reply.bytes.len() <= usize::from(limit), "UDP answer larger than the client's buffer");
        }
    }
});
