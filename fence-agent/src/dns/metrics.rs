//! Counters of the resolver, for the integrator to export. All are monotonic except
//! `hold_us_max`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// The engine's counters (relaxed atomics).
#[derive(Debug, Default)]
pub struct DnsMetrics {
    /// Questions allowed (forwarded to learn).
    pub allowed: AtomicU64,
    /// Questions refused (answered locally).
    pub refused: AtomicU64,
    /// Questions that audit mode forwarded but enforce would refuse.
    pub would_refuse: AtomicU64,
    /// Forwarded questions no upstream answered (SERVFAIL).
    pub upstream_failures: AtomicU64,
    /// Answers whose addresses could not be learned (SERVFAIL).
    pub learn_failures: AtomicU64,
    /// Input answered FORMERR/NOTIMP or dropped.
    pub malformed: AtomicU64,
    /// Queries answered SERVFAIL because the identity had too many in flight.
    pub overloaded: AtomicU64,
    /// Upstream answers held and then released to the client.
    pub answers_held: AtomicU64,
    /// Total time answers were held, from the upstream's answer to the client's reply sent
    /// (learning included), microseconds.
    pub hold_us_total: AtomicU64,
    /// The longest hold, microseconds.
    pub hold_us_max: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsMetricsSnapshot {
    pub allowed: u64,
    pub refused: u64,
    pub would_refuse: u64,
    pub upstream_failures: u64,
    pub learn_failures: u64,
    pub malformed: u64,
    pub overloaded: u64,
    pub answers_held: u64,
    pub hold_us_total: u64,
    pub hold_us_max: u64,
}

impl DnsMetrics {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one answer held for `held`.
    pub(crate) fn held(&self, held: Duration) {
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        Self::add(&self.answers_held);
        self.hold_us_total.fetch_add(us, Ordering::Relaxed);
        self.hold_us_max.fetch_max(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DnsMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsMetricsSnapshot {
            allowed: get(&self.allowed),
            refused: get(&self.refused),
            would_refuse: get(&self.would_refuse),
            upstream_failures: get(&self.upstream_failures),
            learn_failures: get(&self.learn_failures),
            malformed: get(&self.malformed),
            overloaded: get(&self.overloaded),
            answers_held: get(&self.answers_held),
            hold_us_total: get(&self.hold_us_total),
            hold_us_max: get(&self.hold_us_max),
        }
    }
}
