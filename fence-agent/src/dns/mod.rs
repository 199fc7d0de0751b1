//! The agent's DNS resolver for egress by name: a forwarding resolver per identity that decides
//! on every question, forwards what the identity may resolve to the host's upstream resolvers,
//! and writes the addresses of the answer into the identity's allow map before the client sees
//! the answer.
//!
//! The kernel side (not here) steers every fenced identity's DNS traffic (UDP and TCP port 53,
//! any destination) to a per-identity loopback port of the agent: one UDP socket and one TCP
//! listener per identity and family (127.0.0.1 and ::1). The socket that received a query tells
//! the identity; nothing the client writes in the query is trusted for that.
//!
//! # The rule
//!
//! **The question name must be allowed; addresses are learned for the names its CNAME chain
//! reaches.** The decision ([`Decide`]) is made on the question name alone, lower-cased and
//! without its trailing dot (`api.openai.com`). An allowed question is forwarded; from a
//! NOERROR, untruncated answer the engine follows the CNAME chain that starts at the question
//! name (at most [`MAX_CNAME_CHAIN`] links, in the answer section only) and keeps the A and AAAA
//! records whose owner is on that chain. Records for other names are never learned: an upstream
//! (or whoever answers in its place) cannot make the identity learn addresses for names it did
//! not ask about. NXDOMAIN, SERVFAIL and other answers are passed through and teach nothing.
//!
//! # Lifetimes
//!
//! The lifetime of an address is the smallest TTL on its path: the TTL of its A/AAAA record
//! and of every CNAME between the question name and its owner (the address stays right for the
//! question only as long as every link does). The engine hands [`Learn`] that TTL and the time
//! to keep the entry, `clamp(ttl + grace, floor, cap)` ([`EngineConfig`]). An address that
//! appears twice is learned once, with the longer of the two. Addresses of the host and its
//! cloud ([`unlearnable`]: loopback, link-local, metadata services, this host's interfaces) are
//! not learned unless [`EngineConfig::learn_local`], and the unspecified address never is; the
//! client still gets them in its answer.
//!
//! # Order
//!
//! [`Learn::learn`] is awaited before the answer is released to the client, so the client's
//! first connect to an answered address never races the map. When learning fails (or takes
//! longer than [`EngineConfig::learn_timeout`]) the client gets SERVFAIL: fail closed.
//!
//! # Refusals and audit
//!
//! A refused question is answered locally with REFUSED (or NXDOMAIN, [`Refusal`]) and never
//! leaves the host. [`Decision::AuditWouldRefuse`] (an identity in audit mode) forwards the
//! question anyway, learns nothing and reports a would-refuse. Refusals, would-refusals,
//! upstream failures and learn failures are reported through [`Report`].
//!
//! # Transport
//!
//! Queries are parsed and built with `hickory-proto`; no DNS wire format is parsed here by
//! hand. The engine forwards one re-encoded question (a fresh random id, the client's RD/CD
//! flags and EDNS OPT record, so its buffer size and DO bit) to the upstreams in order, the next
//! on timeout or error; a truncated UDP answer is asked again over TCP; a query that came over
//! TCP goes over TCP. The answer is released as the upstream sent it, with the client's id put
//! back. A UDP answer larger than the client's buffer (512 bytes, or its EDNS size) is replaced
//! by a truncated one (TC, question only) so that the client asks again over TCP.
//!
//! # Limits
//!
//! Each identity's [`Server`] serves at most [`EngineConfig::max_in_flight`] queries at once;
//! past that a query is answered SERVFAIL at once (cheaper for the client than a timeout, and the
//! answer is no larger than the query). TCP connections past
//! [`EngineConfig::max_tcp_connections`] are closed; a TCP connection's queries are served one
//! after the other. Input that does not parse is answered FORMERR when its header parses as a
//! query, and dropped otherwise; a query with not exactly one question gets FORMERR, an opcode
//! other than QUERY gets NOTIMP, and responses sent to the resolver are dropped.

mod config;
mod engine;
mod message;
mod metrics;
mod server;
mod upstream;

/// A test authority (the upstream of the resolver's tests and of the integration tests).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::{fmt, future::Future, net::SocketAddr, pin::Pin};

pub use config::{EngineConfig, Refusal};
pub use engine::{Engine, Incoming, Reply, unlearnable};
pub use hickory_proto::rr::RecordType;
pub use message::MAX_CNAME_CHAIN;
pub use metrics::{DnsMetrics, DnsMetricsSnapshot};
pub use server::{Listeners, Server, serve};
pub use upstream::{UpstreamError, Upstreams};

/// What an identity may do with one question name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<A> {
    /// Forward the question, and learn the answer's addresses with this allowance (whatever the
    /// learner needs: the matching rules' ports, protocol, names).
    Allow(A),
    /// Answer REFUSED (or NXDOMAIN) and report; the question never leaves the host.
    Refuse,
    /// Audit mode: forward the question as if allowed, learn nothing, report a would-refuse.
    AuditWouldRefuse,
}

/// Decides whether `identity` may resolve `qname` (lower-case, no trailing dot; the root is
/// `"."`). Called once per query, on the resolver's task: keep it quick and non-blocking.
pub trait Decide<A>: Send + Sync {
    fn decide(&self, identity: u32, qname: &str) -> Decision<A>;
}

/// One address of an allowed answer, as the engine hands it to [`Learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub addr: std::net::IpAddr,
    /// The smallest TTL on the address's path (its record and every CNAME before it), seconds.
    pub ttl: u32,
    /// How long to keep the entry: `clamp(ttl + grace, floor, cap)`, seconds.
    pub keep_secs: u32,
}

/// Why the addresses of an answer could not be learned; the client gets SERVFAIL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LearnError(pub String);

/// The future [`Learn::learn`] returns.
pub type LearnFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LearnError>> + Send + 'a>>;

/// Writes an allowed answer's addresses into the identity's allow map. The engine awaits it
/// before it releases the answer; an error makes the client get SERVFAIL. Called only with a
/// non-empty `addrs`, each address once.
pub trait Learn<A>: Send + Sync {
    fn learn<'a>(&'a self, identity: u32, qname: &'a str, allowance: &'a A, addrs: &'a [Learned]) -> LearnFuture<'a>;
}

/// How a query reached the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        })
    }
}

/// What happened to a reported query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Refused (enforce): answered REFUSED/NXDOMAIN locally.
    Refused,
    /// Audit mode: would have been refused; forwarded.
    WouldRefuse,
    /// Allowed, but no upstream answered: SERVFAIL.
    UpstreamFailed,
    /// Allowed and answered, but learning the addresses failed: SERVFAIL.
    LearnFailed,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Refused => "refused",
            Verdict::WouldRefuse => "would-refuse",
            Verdict::UpstreamFailed => "upstream-failed",
            Verdict::LearnFailed => "learn-failed",
        })
    }
}

/// A reported query. `peer` is the client's socket address as the listener saw it; the
/// integrator maps it to a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent<'a> {
    pub identity: u32,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// Lower-case, no trailing dot.
    pub qname: &'a str,
    pub qtype: RecordType,
    pub verdict: Verdict,
    /// The answer's addresses: would-refuse (audit mode) only, where the question went upstream.
    pub resolved: &'a [std::net::IpAddr],
}

/// Receives refusals, would-refusals and failures (the `dns` denial events). Called on the
/// resolver's task before the answer is sent: keep it quick and non-blocking.
pub trait Report: Send + Sync {
    fn report(&self, event: &QueryEvent<'_>);
}
