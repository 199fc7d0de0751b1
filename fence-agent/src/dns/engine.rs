//! The engine: one query from parse to the bytes of its answer (decide, forward, learn).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hickory_proto::op::{Message, ResponseCode};
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

use crate::local_addrs::{Interfaces, Local, classify};

use super::{
    Decide, Decision, EngineConfig, Learn, LearnError, Learned, QueryEvent, Refusal, Report, Transport, Upstreams,
    Verdict,
    message::{self, ClientQuery, Parsed},
    metrics::DnsMetrics,
    upstream::Exchange,
};

/// One query as a listener received it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The identity whose listener received the query.
    pub identity: u32,
    /// The client's address as the listener saw it.
    pub peer: SocketAddr,
    pub transport: Transport,
    /// The DNS message (without the TCP length prefix).
    pub bytes: &'a [u8],
}

/// The answer to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DNS message (without the TCP length prefix).
    pub bytes: Vec<u8>,
    /// When the upstream's answer arrived, for an answer that came from upstream: the hold time
    /// runs from there to the reply sent.
    pub upstream_at: Option<Instant>,
}

impl Reply {
    fn local(bytes: Vec<u8>) -> Self {
        Self { bytes, upstream_at: None }
    }
}

/// The resolver's listening addresses, shared by every identity's server: never forwarded to.
#[derive(Debug, Default)]
pub(crate) struct OwnAddrs(Mutex<HashSet<SocketAddr>>);

impl OwnAddrs {
    pub(crate) fn add(&self, addrs: &[SocketAddr]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(addrs);
    }
    pub(crate) fn remove(&self, addrs: &[SocketAddr]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|a| !addrs.contains(a));
    }
    fn snapshot(&self) -> HashSet<SocketAddr> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The resolver engine, shared by every identity's [`super::Server`]. `A` is what
/// [`Decide`] hands to [`Learn`] for an allowed name.
pub struct Engine<A> {
    config: EngineConfig,
    upstreams: RwLock<Arc<Upstreams>>,
    decide: Arc<dyn Decide<A>>,
    learn: Arc<dyn Learn<A>>,
    report: Arc<dyn Report>,
    metrics: DnsMetrics,
    own: Arc<OwnAddrs>,
    interfaces: Interfaces,
    unlearned: Mutex<Unlearned>,
}

/// Addresses refused since the last warning: one warning at most every [`UNLEARNED_WARN_EVERY`]
/// (a resolver that answers blocked names with 127.0.0.1, asked in a loop, must not flood
/// the log).
#[derive(Debug, Default)]
struct Unlearned {
    last_warning: Option<Instant>,
    since: u64,
}

const UNLEARNED_WARN_EVERY: Duration = Duration::from_secs(10);

impl<A: Send + Sync + 'static> Engine<A> {
    pub fn new(
        config: EngineConfig,
        upstreams: Upstreams,
        decide: Arc<dyn Decide<A>>,
        learn: Arc<dyn Learn<A>>,
        report: Arc<dyn Report>,
    ) -> Self {
        Self {
            config,
            upstreams: RwLock::new(Arc::new(upstreams)),
            decide,
            learn,
            report,
            metrics: DnsMetrics::default(),
            own: Arc::default(),
            interfaces: Interfaces::default(),
            unlearned: Mutex::default(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The upstreams in use.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        Arc::clone(&self.upstreams.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the upstreams (resolv.conf changed); queries in flight finish with the old ones.
    pub fn set_upstreams(&self, upstreams: Upstreams) {
        *self.upstreams.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(upstreams);
    }

    pub(crate) fn own_addrs(&self) -> &Arc<OwnAddrs> {
        &self.own
    }

    /// Answers one query: `None` when it gets no answer (not a query at all). The answer to an
    /// allowed question is returned only after its addresses are learned.
    pub async fn handle(&self, incoming: &Incoming<'_>) -> Option<Reply> {
        let q = match message::parse_query(incoming.bytes) {
            Parsed::Query(q) => q,
            Parsed::Reject(bytes) => {
                DnsMetrics::add(&self.metrics.malformed);
                return Some(Reply::local(bytes));
            }
            Parsed::Drop => {
                DnsMetrics::add(&self.metrics.malformed);
                return None;
            }
        };
        match self.decide.decide(incoming.identity, &q.qname) {
            Decision::Allow(allowance) => {
                DnsMetrics::add(&self.metrics.allowed);
                self.forward(incoming, &q, Forward::Learn(&allowance)).await
            }
            Decision::Refuse => self.refuse(incoming, &q),
            Decision::AuditWouldRefuse => {
                DnsMetrics::add(&self.metrics.would_refuse);
                self.forward(incoming, &q, Forward::Audit).await
            }
        }
    }

    /// The answer to a query past the identity's in-flight limit: SERVFAIL (FORMERR/NOTIMP or
    /// nothing for input that is not a good query).
    pub(crate) fn overloaded(&self, incoming: &Incoming<'_>) -> Option<Reply> {
        DnsMetrics::add(&self.metrics.overloaded);
        match message::parse_query(incoming.bytes) {
            Parsed::Query(q) => servfail(&q),
            Parsed::Reject(bytes) => Some(Reply::local(bytes)),
            Parsed::Drop => None,
        }
    }

    /// Records that `reply` was sent to the client.
    pub(crate) fn sent(&self, reply: &Reply) {
        if let Some(at) = reply.upstream_at {
            self.metrics.held(at.elapsed());
        }
    }

    fn refuse(&self, incoming: &Incoming<'_>, q: &ClientQuery) -> Option<Reply> {
        DnsMetrics::add(&self.metrics.refused);
        self.report(incoming, q, Verdict::Refused, &[]);
        let code = match self.config.refusal {
            Refusal::Refused => ResponseCode::Refused,
            Refusal::NxDomain => ResponseCode::NXDomain,
        };
        message::local_answer(q, code).map(Reply::local)
    }

    /// Forwards `q`; with an allowance, learns the answer's addresses before returning it; in
    /// audit mode, reports the would-refuse with the answer's addresses (learn mode ties the
    /// name to the connects that follow).
    async fn forward(&self, incoming: &Incoming<'_>, q: &ClientQuery, how: Forward<'_, A>) -> Option<Reply> {
        let id = random_id();
        let Some(bytes) = message::upstream_query(q, id) else {
            if matches!(how, Forward::Audit) {
                self.report(incoming, q, Verdict::WouldRefuse, &[]);
            }
            return servfail(q);
        };
        let own = self.own.snapshot();
        let exchange = Exchange {
            bytes: &bytes,
            id,
            query: &q.query,
            transport: incoming.transport,
            timeout: self.config.upstream_timeout,
            own: &own,
        };
        let Some((raw, answer)) = self.upstreams().exchange(&exchange).await else {
            warn!(identity = incoming.identity, qname = %q.qname, "no upstream resolver answered");
            DnsMetrics::add(&self.metrics.upstream_failures);
            if matches!(how, Forward::Audit) {
                self.report(incoming, q, Verdict::WouldRefuse, &[]);
            }
            self.report(incoming, q, Verdict::UpstreamFailed, &[]);
            return servfail(q);
        };
        let upstream_at = Instant::now();
        match how {
            Forward::Learn(allowance) => {
                if let Err(e) = self.learn_answer(incoming, q, allowance, &answer).await {
                    warn!(identity = incoming.identity, qname = %q.qname, error = %e, "answer not learned: SERVFAIL");
                    DnsMetrics::add(&self.metrics.learn_failures);
                    self.report(incoming, q, Verdict::LearnFailed, &[]);
                    return servfail(q);
                }
            }
            Forward::Audit => {
                // What enforce mode would learn (a NOERROR, untruncated answer's chain, not what
                // `unlearnable` refuses), at most RESOLVED_IN_EVENT of it: one answer must not
                // make a huge event line.
                let mut addrs: Vec<IpAddr> = if answer.response_code == ResponseCode::NoError && !answer.truncation {
                    message::chain_addresses(q.query.name(), &answer.answers)
                        .into_iter()
                        .map(|(a, _)| a)
                        .filter(|&a| unlearnable(a, self.config.learn_local, &self.interfaces).is_none())
                        .collect()
                } else {
                    Vec::new()
                };
                addrs.sort_unstable();
                addrs.dedup();
                addrs.truncate(RESOLVED_IN_EVENT);
                self.report(incoming, q, Verdict::WouldRefuse, &addrs);
            }
        }
        let bytes = if incoming.transport == Transport::Udp && raw.len() > message::udp_limit(q) {
            message::truncated(&answer, q.metadata.id)?
        } else {
            message::with_id(raw, q.metadata.id)
        };
        Some(Reply { bytes, upstream_at: Some(upstream_at) })
    }

    /// Learns the addresses of a NOERROR, untruncated answer (see the module doc for which).
    async fn learn_answer(
        &self,
        incoming: &Incoming<'_>,
        q: &ClientQuery,
        allowance: &A,
        answer: &Message,
    ) -> Result<(), LearnError> {
        if answer.response_code != ResponseCode::NoError || answer.truncation {
            return Ok(());
        }
        let addrs = self.learned(message::chain_addresses(q.query.name(), &answer.answers));
        if addrs.is_empty() {
            return Ok(());
        }
        debug!(identity = incoming.identity, qname = %q.qname, addresses = addrs.len(), "learning");
        let learning = self.learn.learn(incoming.identity, &q.qname, allowance, &addrs);
        match timeout(self.config.learn_timeout, learning).await {
            Ok(result) => result,
            Err(_) => Err(LearnError(format!("learning took longer than {:?}", self.config.learn_timeout))),
        }
    }

    /// Each address once (the longest TTL), with its lifetime; not those that [`unlearnable`]
    /// refuses.
    fn learned(&self, addrs: Vec<(IpAddr, u32)>) -> Vec<Learned> {
        let mut by_addr: HashMap<IpAddr, u32> = HashMap::new();
        for (addr, ttl) in addrs {
            if let Some(why) = unlearnable(addr, self.config.learn_local, &self.interfaces) {
                self.unlearned(addr, why);
                continue;
            }
            let e = by_addr.entry(addr).or_insert(ttl);
            *e = (*e).max(ttl);
        }
        let mut learned: Vec<Learned> = by_addr
            .into_iter()
            .map(|(addr, ttl)| Learned { addr, ttl, keep_secs: self.config.keep_secs(ttl) })
            .collect();
        learned.sort_by_key(|l| l.addr);
        learned
    }

    fn unlearned(&self, addr: IpAddr, why: Local) {
        let mut u = self.unlearned.lock().unwrap_or_else(PoisonError::into_inner);
        u.since += 1;
        if u.last_warning.is_some_and(|t| t.elapsed() < UNLEARNED_WARN_EVERY) {
            return;
        }
        let refused = std::mem::take(&mut u.since);
        u.last_warning = Some(Instant::now());
        warn!(%addr, refused, "an answer names {}: not learned (dns.learn_local_addresses)", why.describe());
    }

    fn report(&self, incoming: &Incoming<'_>, q: &ClientQuery, verdict: Verdict, resolved: &[IpAddr]) {
        debug!(identity = incoming.identity, peer = %incoming.peer, qname = %q.qname, %verdict, "dns query reported");
        self.report.report(&QueryEvent {
            identity: incoming.identity,
            peer: incoming.peer,
            transport: incoming.transport,
            qname: &q.qname,
            qtype: q.query.query_type(),
            verdict,
            resolved,
        });
    }
}

/// Why an answer's address must not be learned, or `None` when it may be. Never the unspecified
/// address (0.0.0.0, ::), which the kernel judges as given but connects to as the host itself:
/// a filtering resolver's answer for a blocked name, or one an attacker controls, would open
/// the host's local services on the name's ports. Unless `learn_local`, neither any other
/// address of the host or its cloud ([`crate::local_addrs`]): loopback, link-local, the cloud
/// metadata services, this host's interface addresses. An allowed name whose answers an
/// attacker controls (a wildcard over names anyone can register, or DNS rebinding) would
/// otherwise reach them. IPv6 forms carrying an IPv4 address are judged by it. A CIDR rule can
/// still allow any of them by address.
pub fn unlearnable(addr: IpAddr, learn_local: bool, interfaces: &Interfaces) -> Option<Local> {
    match classify(addr) {
        Some(Local::Unspecified) => Some(Local::Unspecified),
        Some(local) if !learn_local => Some(local),
        None if !learn_local && interfaces.contains(addr) => Some(Local::Interface),
        _ => None,
    }
}

/// The most addresses an audit-mode `dns-query` event carries (`dns.resolved_ip`).
pub const RESOLVED_IN_EVENT: usize = 16;

/// What is done with an answer from upstream.
enum Forward<'a, A> {
    /// Its addresses are learned for the identity first.
    Learn(&'a A),
    /// Audit mode: nothing learned; the would-refuse is reported with the addresses.
    Audit,
}

fn servfail(q: &ClientQuery) -> Option<Reply> {
    message::local_answer(q, ResponseCode::ServFail).map(Reply::local)
}

/// A random id for the forwarded question (the client's id is not trusted to be random). From
/// getrandom(2); should that fail, the clock's nanoseconds.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u16::from_ne_bytes(b),
        Err(_) => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            (nanos ^ (nanos >> 16)) as u16
        }
    }
}
