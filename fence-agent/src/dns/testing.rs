//! A test upstream: a small authority for a fixed zone on real loopback sockets (UDP and TCP on
//! one port), built with hickory-proto. Compiled for tests only (the `testing` feature, which
//! the integration tests turn on). It follows CNAMEs inside its zone, as a recursive
//! resolver's answer would, and records every query it receives.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

pub use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinSet,
};

use crate::dns::Transport;

/// What the authority answers.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    pub records: Vec<Record>,
    /// Answer every UDP query with TC set and no records.
    pub truncate_udp: bool,
    /// Records added to every answer's answer section (an upstream that tries to make the client
    /// learn other names).
    pub extra: Vec<Record>,
}

impl Zone {
    pub fn with(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }
}

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("a test name")
}

pub fn a(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(ip.parse::<std::net::Ipv4Addr>().expect("v4").into()))
}

pub fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(ip.parse::<std::net::Ipv6Addr>().expect("v6").into()))
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(hickory_proto::rr::rdata::CNAME(name(target))))
}

/// A running authority.
pub struct Authority {
    pub addr: SocketAddr,
    /// Every query received, with its transport.
    pub seen: Arc<Mutex<Vec<(Transport, Message)>>>,
    _tasks: JoinSet<()>,
}

impl Authority {
    pub async fn start(ip: IpAddr, zone: Zone) -> Authority {
        // The TCP port the kernel picks may be taken for UDP (another test's socket): try again.
        let mut attempt = 0;
        let (tcp, udp, addr) = loop {
            let tcp = TcpListener::bind((ip, 0)).await.expect("bind tcp");
            let addr = tcp.local_addr().expect("addr");
            match UdpSocket::bind(addr).await {
                Ok(udp) => break (tcp, udp, addr),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    drop(e);
                }
                Err(e) => panic!("bind udp on the same port as tcp {addr}: {e}"),
            }
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let zone = Arc::new(zone);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, Arc::clone(&zone), Arc::clone(&seen)));
        tasks.spawn(serve_tcp(tcp, zone, Arc::clone(&seen)));
        Authority { addr, seen, _tasks: tasks }
    }

    pub fn queries(&self) -> Vec<(Transport, Message)> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>, seen: Arc<Mutex<Vec<(Transport, Message)>>>) {
    let mut buf = vec![0u8; 65535];
    while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
        if let Some(reply) = answer(&zone, &buf[..n], Transport::Udp, &seen) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, seen: Arc<Mutex<Vec<(Transport, Message)>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_connection(stream, Arc::clone(&zone), Arc::clone(&seen)));
    }
}

async fn serve_connection(mut stream: TcpStream, zone: Arc<Zone>, seen: Arc<Mutex<Vec<(Transport, Message)>>>) {
    while let Ok(len) = stream.read_u16().await {
        let mut bytes = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut bytes).await.is_err() {
            return;
        }
        let Some(reply) = answer(&zone, &bytes, Transport::Tcp, &seen) else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

fn answer(zone: &Zone, bytes: &[u8], transport: Transport, seen: &Mutex<Vec<(Transport, Message)>>) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    seen.lock().expect("lock").push((transport, query.clone()));
    let question = query.queries.first()?.clone();
    let mut m = Message::response(query.id, OpCode::Query);
    m.metadata.recursion_desired = query.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    if let Some(client) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(client.flags().dnssec_ok);
        m.set_edns(edns);
    }
    if transport == Transport::Udp && zone.truncate_udp {
        m.metadata.truncation = true;
        return m.to_vec().ok();
    }
    let records = resolve(zone, question.name(), question.query_type());
    if records.is_empty() && !zone.records.iter().any(|r| r.name == *question.name()) {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.add_answers(records);
    m.add_answers(zone.extra.iter().cloned());
    m.to_vec().ok()
}

/// The CNAME chain from `qname` inside the zone, then the records of type `qtype` at its end.
fn resolve(zone: &Zone, qname: &Name, qtype: RecordType) -> Vec<Record> {
    let mut out = Vec::new();
    let mut current = qname.clone();
    for _ in 0..20 {
        let Some(link) = zone.records.iter().find(|r| r.name == current && r.record_type() == RecordType::CNAME) else {
            break;
        };
        out.push(link.clone());
        let RData::CNAME(target) = &link.data else { break };
        current = target.0.clone();
    }
    out.extend(zone.records.iter().filter(|r| r.name == current && r.record_type() == qtype).cloned());
    out
}
