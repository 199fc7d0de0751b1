//! The engine's settings: how refusals are answered, how long learned addresses live, and the
//! limits of each identity's resolver.

use std::time::Duration;

/// How a refused question is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refusal {
    /// RCODE 5: the client knows it was refused (default).
    #[default]
    Refused,
    /// RCODE 3: the name appears not to exist.
    NxDomain,
}

/// The engine's settings; [`Default`] gives the values documented on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The answer to a refused question (REFUSED).
    pub refusal: Refusal,
    /// Added to a record's TTL to give the entry's lifetime (30 s): a client that connects just
    /// as the record expires still gets through.
    pub ttl_grace: Duration,
    /// The shortest lifetime of a learned entry (5 s), whatever the TTL (TTL 0 included).
    pub ttl_floor: Duration,
    /// The longest lifetime of a learned entry (1 h), whatever the TTL.
    pub ttl_cap: Duration,
    /// How long one upstream has to answer, per attempt and transport, before the next is
    /// asked (2 s).
    pub upstream_timeout: Duration,
    /// How long learning may take before the client gets SERVFAIL (2 s).
    pub learn_timeout: Duration,
    /// Queries one identity may have in flight at once (64); past that, SERVFAIL.
    pub max_in_flight: usize,
    /// TCP connections one identity may hold open at once (16); past that, closed at once.
    pub max_tcp_connections: usize,
    /// How long a TCP connection may wait for the next query, or take to send one (10 s).
    pub tcp_idle_timeout: Duration,
    /// Whether answers may open this host's own addresses: loopback, link-local and the cloud
    /// metadata services (off). See [`crate::dns::unlearnable`].
    pub learn_local: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            refusal: Refusal::Refused,
            ttl_grace: Duration::from_secs(30),
            ttl_floor: Duration::from_secs(5),
            ttl_cap: Duration::from_secs(3600),
            upstream_timeout: Duration::from_secs(2),
            learn_timeout: Duration::from_secs(2),
            max_in_flight: 64,
            max_tcp_connections: 16,
            tcp_idle_timeout: Duration::from_secs(10),
            learn_local: false,
        }
    }
}

impl EngineConfig {
    /// How long to keep an address whose TTL is `ttl` seconds: `clamp(ttl + grace, floor, cap)`
    /// (a cap below the floor gives the cap).
    pub fn keep_secs(&self, ttl: u32) -> u32 {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let (floor, cap) = (secs(self.ttl_floor), secs(self.ttl_cap));
        ttl.saturating_add(secs(self.ttl_grace)).max(floor).min(cap)
    }
}
