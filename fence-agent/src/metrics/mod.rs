//! Prometheus metrics: counters and gauges kept in memory and served in the text exposition
//! format 0.0.4 on a loopback address (`[metrics] listen = "127.0.0.1:9477"`; off when absent).
//!
//! Metric families, in the order they are rendered:
//!
//! | family                                       | type    | labels                              | meaning |
//! |----------------------------------------------|---------|-------------------------------------|---------|
//! | `fence_up`                                   | gauge   |                                     | always 1 while the agent answers |
//! | `fence_build_info`                           | gauge   | `version`                           | always 1; the agent's version |
//! | `fence_events_total`                         | counter | `identity`, `operation`, `verdict`  | events written to the sinks |
//! | `fence_events_suppressed_total`              | counter | `identity`, `operation`, `verdict`  | events not written because of rate limiting or deduplication |
//! | `fence_events_dropped_total`                 | counter | `cause`                             | events lost: `ring-buffer-full`, `queue-full`, `rate-table-full`, `sink-error`, `undecodable` (all present from the start, at 0) |
//! | `fence_policy_applies_total`                 | counter |                                     | policies applied |
//! | `fence_policy_rejections_total`              | counter |                                     | policies rejected (the previous one stays in force) |
//! | `fence_policy_applied_timestamp_seconds`     | gauge   |                                     | Unix time of the last apply; 0 before the first |
//! | `fence_identity_info`                        | gauge   | `identity`, `policy_version`, `mode`| 1 per identity of the policy in force (the set is replaced on each apply) |
//! | `fence_map_entries`                          | gauge   | `map`                               | entries in a BPF map |
//! | `fence_map_capacity`                         | gauge   | `map`                               | the map's maximum number of entries |
//! | `fence_mechanism_active`                     | gauge   | `fence`, `mechanism`                | 1 if the fence is enforced by that mechanism, 0 if not; `mechanism` is each `fence.mechanism` value of the fence's events (the doctor's mechanism for fences that log none) |
//! | `fence_grants`                               | gauge   | `state`                             | just-in-time grants `pending` and `active` now (both present from the start) |
//! | `fence_grants_ended_total`                   | counter | `state`                             | grants that ended: `expired`, `revoked`, `denied` (all present from the start) |
//!
//! and, only once the vault sync has set them (absent on an agent without a vault):
//!
//! | family                                       | type    | labels   | meaning |
//! |----------------------------------------------|---------|----------|---------|
//! | `fence_vault_sync_running`                   | gauge   |          | 1 while the vault sync task runs; 0 once it has stopped (restart the agent) |
//! | `fence_policy_source`                        | gauge   | `source` | where the policy in force came from: `local`, `cache` or `vault`, 1 for the current one |
//! | `fence_vault_sync_failures`                  | gauge   |          | consecutive failed vault polls (0: the last poll succeeded) |
//! | `fence_vault_sync_failures_total`            | counter |          | every failed vault poll (present at 0 from the first poll) |
//! | `fence_vault_policy_refused`                 | gauge   |          | 1 while the vault holds a policy set this agent refuses |
//! | `fence_vault_last_success_timestamp_seconds` | gauge   |          | Unix time of the last successful vault poll (absent before the first) |
//! | `fence_vault_index_version`                  | gauge   |          | version of the vault's index document last seen (absent before the first) |
//! | `fence_dns_queries_total`                    | counter | verdict  | fenced identities' DNS queries: allowed, refused, would-refuse, upstream-failed, learn-failed, malformed, overloaded (egress by name only) |
//! | `fence_dns_answers_held_total`, `fence_dns_answer_hold_seconds_total`, `fence_dns_answer_hold_max_seconds` | counter, counter, gauge | | allowed answers held until their addresses were in the kernel, the time held, the longest hold |
//! | `fence_dns_evictions_total`, `fence_dns_learned_addresses` | counter, gauge | | learned addresses evicted by the caps; learned addresses held |
//!
//! and the standard `process_*` families of the agent itself (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`; `metrics/process.rs`).
//!
//! A family with no series yet is not rendered at all (no `# HELP`/`# TYPE` lines either), and
//! the series of a family come in no particular order.
//!
//! The families live in a `prometheus-client` [`Registry`] and are encoded by its Prometheus
//! text (0.0.4) encoder, which escapes label values and help texts and appends `_total` to
//! counters: a counter is registered without the suffix (`fence_events`) and exposed with it
//! (`fence_events_total`). Note that `fence_vault_sync_failures` (gauge) and
//! `fence_vault_sync_failures_total` (counter) are two families in this format; in OpenMetrics
//! their names would collide, so keep this encoder.
//!
//! [`Metrics`] is a cheap handle (an `Arc`) shared by the event writer, the policy manager, the
//! vault sync and the HTTP server: counters are atomics, and the updates that touch several
//! series at once (a policy apply, a map's occupancy, the mechanisms, the policy source) take
//! one short lock that rendering takes too, so that a scrape never sees half of one. [`start`]
//! (or [`bind`] then [`serve`]) answers `GET /metrics` with hyper's HTTP/1.1 server
//! (`metrics/http.rs`).

pub mod dns;
mod http;
mod process;
#[cfg(test)]
mod tests;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use thiserror::Error;

pub use self::http::{bind, serve, start, start_remote};
use crate::fences::FenceReport;

/// The causes of `fence_events_dropped_total`, present at 0 from the start.
pub const DROP_CAUSES: [&str; 5] = ["ring-buffer-full", "queue-full", "rate-table-full", "sink-error", "undecodable"];

/// The values of `fence_grants_ended_total{state}`.
pub const GRANT_ENDS: [&str; 3] = ["expired", "revoked", "denied"];

/// The values of `fence_policy_source{source}`; [`Metrics::policy_source`] takes one of them.
pub const POLICY_SOURCES: [&str; 3] = ["local", "cache", "vault"];

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics: {0} is not a loopback address (metrics are served only on loopback)")]
    NotLoopback(SocketAddr),
    #[error("metrics: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    identity: String,
    operation: String,
    verdict: String,
}

impl EventLabels {
    fn new(identity: &str, operation: &str, verdict: &str) -> EventLabels {
        EventLabels { identity: identity.to_owned(), operation: operation.to_owned(), verdict: verdict.to_owned() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
    policy_version: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MechanismLabels {
    fence: String,
    mechanism: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The empty label set: a `Family<NoLabels, _>` is a single series that is absent (not rendered
/// at all) until it is first set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// A gauge of whole non-negative numbers (entries, versions).
type CountGauge = Gauge<u64, AtomicU64>;
/// A gauge of seconds (timestamps).
type SecondsGauge = Gauge<f64, AtomicU64>;
/// A single series, absent until first set.
type Unset<M> = Family<NoLabels, M>;

/// The families, each registered once in [`Metrics::new`]; clones share the values.
#[derive(Debug, Default)]
struct Families {
    up: Gauge,
    events: Family<EventLabels, Counter>,
    suppressed: Family<EventLabels, Counter>,
    dropped: Family<CauseLabels, Counter>,
    policy_applies: Counter,
    policy_rejections: Counter,
    policy_applied_at: SecondsGauge,
    identities: Family<IdentityLabels, Gauge>,
    map_entries: Family<MapLabels, CountGauge>,
    map_capacity: Family<MapLabels, CountGauge>,
    mechanism_active: Family<MechanismLabels, Gauge>,
    grants: Family<StateLabels, Gauge>,
    grants_ended: Family<StateLabels, Counter>,
    vault_sync_running: Unset<Gauge>,
    policy_source: Family<SourceLabels, Gauge>,
    vault_sync_failures: Unset<Gauge>,
    vault_sync_failures_total: Unset<Counter>,
    vault_policy_refused: Unset<Gauge>,
    vault_last_success: Unset<SecondsGauge>,
    vault_index_version: Unset<CountGauge>,
}

impl Families {
    /// Registers every family, in the order of the module's table. Help texts have no final
    /// period: the registry adds one. Counters have no `_total`: the encoder adds it.
    fn register(&self, r: &mut Registry) {
        r.register("fence_up", "1 while the fence agent answers", self.up.clone());
        // An info metric is a gauge named `<name>_info` at 1 in the text format.
        r.register("fence_build", "The fence agent's version", Info::new(BuildLabels { version: VERSION }));
        r.register("fence_events", "Events written, by identity, operation and verdict", self.events.clone());
        r.register(
            "fence_events_suppressed",
            "Events not written because of rate limiting or deduplication",
            self.suppressed.clone(),
        );
        r.register("fence_events_dropped", "Events lost, by cause", self.dropped.clone());
        r.register("fence_policy_applies", "Policies applied", self.policy_applies.clone());
        r.register(
            "fence_policy_rejections",
            "Policies rejected (the previous one stays in force)",
            self.policy_rejections.clone(),
        );
        r.register(
            "fence_policy_applied_timestamp_seconds",
            "Unix time of the last policy apply (0 before the first)",
            self.policy_applied_at.clone(),
        );
        r.register("fence_identity_info", "The identities of the policy in force", self.identities.clone());
        r.register("fence_map_entries", "Entries in a BPF map", self.map_entries.clone());
        r.register("fence_map_capacity", "Maximum entries of a BPF map", self.map_capacity.clone());
        r.register(
            "fence_mechanism_active",
            "1 if the fence is enforced by the mechanism, 0 if not",
            self.mechanism_active.clone(),
        );
        r.register("fence_grants", "Just-in-time grants pending and active now", self.grants.clone());
        r.register("fence_grants_ended", "Just-in-time grants that ended, by how", self.grants_ended.clone());
        self.register_vault(r);
    }

    fn register_vault(&self, r: &mut Registry) {
        r.register(
            "fence_vault_sync_running",
            "1 while the vault sync task runs; 0 once it has stopped (restart the agent)",
            self.vault_sync_running.clone(),
        );
        r.register(
            "fence_policy_source",
            "Where the policy in force came from (1 for the current source)",
            self.policy_source.clone(),
        );
        r.register(
            "fence_vault_sync_failures",
            "Consecutive failed vault polls (0: the last poll succeeded)",
            self.vault_sync_failures.clone(),
        );
        r.register("fence_vault_sync_failures", "Failed vault polls", self.vault_sync_failures_total.clone());
        r.register(
            "fence_vault_policy_refused",
            "1 while the vault holds a policy set this agent refuses (the previous one stays in force)",
            self.vault_policy_refused.clone(),
        );
        r.register(
            "fence_vault_last_success_timestamp_seconds",
            "Time of the last successful vault poll",
            self.vault_last_success.clone(),
        );
        r.register(
            "fence_vault_index_version",
            "Version of the vault's index document last seen",
            self.vault_index_version.clone(),
        );
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The lock that updates of several series at once and rendering take, so that a scrape
/// never sees half of such an update.
#[derive(Debug, Default)]
struct Side;

#[derive(Debug)]
struct Inner {
    registry: Registry,
    families: Families,
    side: Mutex<Side>,
    dns: dns::DnsCollector,
}

/// The agent's metrics. Clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let families = Families::default();
        let mut registry = Registry::default();
        families.register(&mut registry);
        let dns = dns::DnsCollector::default();
        registry.register_collector(Box::new(dns.clone()));
        families.up.set(1);
        for cause in DROP_CAUSES {
            families.dropped.get_or_create(&CauseLabels { cause: cause.to_owned() }).inc_by(0);
        }
        for state in ["pending", "active"] {
            families.grants.get_or_create(&StateLabels { state }).set(0);
        }
        for state in GRANT_ENDS {
            families.grants_ended.get_or_create(&StateLabels { state }).inc_by(0);
        }
        Metrics { inner: Arc::new(Inner { registry, families, side: Mutex::default(), dns }) }
    }

    fn f(&self) -> &Families {
        &self.inner.families
    }

    /// A poisoned lock only means another thread panicked while updating: the values are
    /// still usable.
    fn lock(&self) -> MutexGuard<'_, Side> {
        self.inner.side.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Egress by name runs: `fence_dns_*` are read from `reader` at each scrape.
    pub fn dns(&self, reader: dns::DnsReader) {
        *self.inner.dns.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    }

    /// One event written: `fence_events_total{identity,operation,verdict}`.
    pub fn event(&self, identity: &str, operation: &str, verdict: &str) {
        self.f().events.get_or_create(&EventLabels::new(identity, operation, verdict)).inc();
    }

    /// `n` events not written (rate limiting, deduplication):
    /// `fence_events_suppressed_total{identity,operation,verdict}`.
    pub fn suppressed(&self, identity: &str, operation: &str, verdict: &str, n: u64) {
        self.f().suppressed.get_or_create(&EventLabels::new(identity, operation, verdict)).inc_by(n);
    }

    /// `n` events lost: `fence_events_dropped_total{cause}`, `cause` one of [`DROP_CAUSES`]
    /// (another cause gets a series of its own).
    pub fn dropped(&self, cause: &str, n: u64) {
        self.f().dropped.get_or_create(&CauseLabels { cause: cause.to_owned() }).inc_by(n);
    }

    /// A policy was applied at `at_unix_seconds`: `identities` are (name, policy version, mode)
    /// and replace the whole `fence_identity_info` set.
    pub fn policy_applied(&self, identities: &[(String, String, String)], at_unix_seconds: f64) {
        let f = self.f();
        let _side = self.lock();
        f.identities.clear();
        for (identity, policy_version, mode) in identities {
            let labels = IdentityLabels {
                identity: identity.clone(),
                policy_version: policy_version.clone(),
                mode: mode.clone(),
            };
            f.identities.get_or_create(&labels).set(1);
        }
        f.policy_applies.inc();
        f.policy_applied_at.set(at_unix_seconds);
    }

    /// [`Metrics::policy_applied`] at the current time.
    pub fn policy_applied_now(&self, identities: &[(String, String, String)]) {
        self.policy_applied(identities, unix_now());
    }

    /// A policy was rejected: `fence_policy_rejections_total`.
    pub fn policy_rejected(&self) {
        self.f().policy_rejections.inc();
    }

    /// `fence_map_entries{map}` and `fence_map_capacity{map}`.
    pub fn map_occupancy(&self, map: &str, entries: u64, capacity: u64) {
        let f = self.f();
        let labels = MapLabels { map: map.to_owned() };
        let _side = self.lock();
        f.map_entries.get_or_create(&labels).set(entries);
        f.map_capacity.get_or_create(&labels).set(capacity);
    }

    /// `fence_mechanism_active{fence,mechanism}` from every row of a
    /// [`crate::fences::Plan::report`], replacing the previous set: one series per event
    /// mechanism value the fence reports (`fence.mechanism` in its events, so that a metric
    /// and an event can be joined on it), or one with the doctor's mechanism for a fence that
    /// logs no events.
    pub fn mechanisms(&self, rows: &[FenceReport]) {
        let _side = self.lock();
        let family = &self.f().mechanism_active;
        family.clear();
        for r in rows {
            let labels: Vec<String> = match r.events.as_slice() {
                [] => vec![r.mechanism.clone()],
                events => events.iter().map(|m| m.as_str().to_owned()).collect(),
            };
            for mechanism in labels {
                family
                    .get_or_create(&MechanismLabels { fence: r.fence.to_owned(), mechanism })
                    .set(i64::from(r.enforced));
            }
        }
    }

    /// `fence_grants{state}`: grants pending and active now.
    pub fn grants_now(&self, pending: usize, active: usize) {
        let f = self.f();
        f.grants.get_or_create(&StateLabels { state: "pending" }).set(pending as i64);
        f.grants.get_or_create(&StateLabels { state: "active" }).set(active as i64);
    }

    /// One grant ended: `fence_grants_ended_total{state}`, `state` one of [`GRANT_ENDS`].
    pub fn grant_ended(&self, state: &str) {
        if let Some(&state) = GRANT_ENDS.iter().find(|s| **s == state) {
            self.f().grants_ended.get_or_create(&StateLabels { state }).inc();
        }
    }

    /// `fence_vault_sync_running`: 1 while the vault sync task runs, 0 once it has stopped.
    pub fn vault_sync_running(&self, running: bool) {
        self.f().vault_sync_running.get_or_create(&NoLabels).set(i64::from(running));
    }

    /// `fence_policy_source{source}`: 1 for `source`, 0 for the other [`POLICY_SOURCES`]. Any
    /// other value is ignored with a warning.
    pub fn policy_source(&self, source: &str) {
        if !POLICY_SOURCES.contains(&source) {
            tracing::warn!(source, "metrics: fence_policy_source not updated: unknown source");
            return;
        }
        let family = &self.f().policy_source;
        let _side = self.lock();
        for s in POLICY_SOURCES {
            family.get_or_create(&SourceLabels { source: s }).set(i64::from(s == source));
        }
    }

    /// `fence_vault_sync_failures`: consecutive failed polls (0 after a successful one). Also
    /// makes `fence_vault_sync_failures_total` present (at 0 until a poll fails).
    pub fn vault_sync_failures(&self, consecutive: u32) {
        let f = self.f();
        f.vault_sync_failures_total.get_or_create(&NoLabels).inc_by(0);
        f.vault_sync_failures.get_or_create(&NoLabels).set(i64::from(consecutive));
    }

    /// One failed vault poll: `fence_vault_sync_failures_total`.
    pub fn vault_sync_failed(&self) {
        self.f().vault_sync_failures_total.get_or_create(&NoLabels).inc();
    }

    /// `fence_vault_policy_refused`: 1 while the vault holds a policy set this agent refuses.
    pub fn vault_policy_refused(&self, refused: bool) {
        self.f().vault_policy_refused.get_or_create(&NoLabels).set(i64::from(refused));
    }

    /// `fence_vault_last_success_timestamp_seconds`: the time of the last successful poll.
    pub fn vault_last_success(&self, at_unix_seconds: f64) {
        self.f().vault_last_success.get_or_create(&NoLabels).set(at_unix_seconds);
    }

    /// `fence_vault_index_version`: the version of the vault's index document last seen.
    pub fn vault_index_version(&self, version: u64) {
        self.f().vault_index_version.get_or_create(&NoLabels).set(version);
    }

    /// The metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let side = self.lock();
        // Writing to a String cannot fail, nor can encoding our label sets.
        if let Err(e) = prometheus_text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        drop(side);
        out
    }

    /// What `GET /metrics` answers: [`Metrics::render`] and the agent's `process_*` families.
    pub fn scrape(&self) -> String {
        let mut out = self.render();
        process::append(&mut out);
        out
    }
}

/// Seconds since the Unix epoch, as a gauge value.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
