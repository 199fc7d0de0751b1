//! Flood control, the user-space half: the kernel's rate limiter (per identity, operation and
//! verdict; see `fence-ebpf/src/events.rs`) counts the events it suppresses; every interval
//! the agent turns the counts that grew into one `events-suppressed` record per key, and the
//! kernel's and its own drop counters into `events-dropped` records. Records the agent builds
//! itself (the fanotify fence) go through the same limit here, in [`Limiter`].

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use std::borrow::Cow;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use fence_common::{EventLimit, Operation, RateKey, RateState, Verdict, counter};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::record::{Agent, EVENT_SCHEMA_VERSION, Ecs, EventFields, Host, Name, category};

/// The configured event rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events per second per (identity, operation, verdict); 0: unlimited.
    pub per_second: u32,
    /// Events that may come at once before the limit applies.
    pub burst: u32,
}

impl RateLimit {
    /// The kernel's form of the limit.
    pub fn kernel(&self) -> EventLimit {
        EventLimit::new(self.per_second, self.burst)
    }
}

/// The kernel's limit ([`EventLimit::admit`]) for records built in user space.
#[derive(Debug, Default)]
pub struct Limiter {
    limit: EventLimit,
    state: HashMap<RateKey, RateState>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter { limit: limit.kernel(), state: HashMap::new() }
    }

    /// Suppressed totals per key.
    pub fn suppressed(&self) -> impl Iterator<Item = (RateKey, u64)> + '_ {
        self.state.iter().map(|(k, s)| (*k, s.suppressed))
    }

    /// Whether an event for `key` at `now_ns` may be written; counts it as suppressed if not.
    pub fn admit(&mut self, key: RateKey, now_ns: u64) -> bool {
        if self.limit.interval_ns == 0 {
            return true;
        }
        let s = self.state.entry(key).or_default();
        match self.limit.admit(s.tat, now_ns) {
            Some(tat) => {
                s.tat = tat;
                true
            }
            None => {
                s.suppressed += 1;
                false
            }
        }
    }
}

/// The queue of records built in user space (the fanotify fence) to the event writer:
/// bounded, so that a flood cannot grow the agent's memory; a full queue is counted. The
/// writer waits on [`AgentEventsRx::wake`] (an eventfd) together with the ring buffer.
#[derive(Clone)]
pub struct AgentEvents {
    tx: std::sync::mpsc::SyncSender<super::decode::KernelEvent>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    wake: std::sync::Arc<nix::sys::eventfd::EventFd>,
}

/// Records the queue holds before new ones are dropped (and counted).
pub const AGENT_QUEUE: usize = 4096;

impl AgentEvents {
    pub fn new() -> std::io::Result<(AgentEvents, AgentEventsRx)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(AGENT_QUEUE);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wake = std::sync::Arc::new(
            nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map_err(std::io::Error::from)?,
        );
        Ok((AgentEvents { tx, dropped: dropped.clone(), wake: wake.clone() }, AgentEventsRx { rx, dropped, wake }))
    }

    /// Queues a record; counts it if the queue is full or the writer is gone.
    pub fn send(&self, event: super::decode::KernelEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                let _ = self.wake.write(1);
            }
            Err(_) => {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

pub struct AgentEventsRx {
    pub rx: std::sync::mpsc::Receiver<super::decode::KernelEvent>,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Readable when records were queued.
    pub wake: std::sync::Arc<nix::sys::eventfd::EventFd>,
}

/// Why events were dropped (each cause counted separately).
pub mod cause {
    pub const RING_BUFFER_FULL: &str = "ring-buffer-full";
    pub const QUEUE_FULL: &str = "queue-full";
    pub const RATE_TABLE_FULL: &str = "rate-table-full";
    /// The causes the kernel counts (in a run's counters, which outlive its agent when pinned).
    pub const KERNEL: [&str; 2] = [RING_BUFFER_FULL, RATE_TABLE_FULL];
}

/// Marks the user-space limiter's keys apart from the kernel's (identity | 1 << 31).
pub const USER_SPACE: u32 = 1 << 31;

/// `event.action` of a summary of suppressed events.
pub const ACTION_SUPPRESSED: &str = "events-suppressed";
/// `event.action` of a summary of lost events.
pub const ACTION_DROPPED: &str = "events-dropped";

/// A summary line: `events-suppressed` or `events-dropped`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    /// `event.reason`, for people.
    #[serde(default)]
    pub message: String,
    pub ecs: Ecs,
    #[serde(default)]
    pub agent: Agent,
    pub event: EventFields,
    pub host: Host,
    pub fence: SummaryFence,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryFence {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// `events-suppressed`: how many events of this identity, operation and verdict were not
    /// written in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// `events-dropped`: how many events were lost, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
    pub interval_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dropped {
    pub count: u64,
    pub cause: Name,
}

/// A summary record: the parts all summaries share, around `event` and `fence`.
fn summary(
    at: Timestamp,
    hostname: &str,
    category: &'static str,
    (action, outcome): (&'static str, &'static str),
    reason: String,
    fence: SummaryFence,
) -> SummaryRecord {
    SummaryRecord {
        timestamp: at.to_string(),
        message: reason.clone(),
        ecs: Ecs::CURRENT,
        agent: Agent::CURRENT,
        event: EventFields {
            id: String::new(),
            sequence: 0,
            kind: Cow::Borrowed("metric"),
            category: vec![Cow::Borrowed(category)],
            event_type: vec![Cow::Borrowed("info")],
            action: Cow::Borrowed(action),
            outcome: Cow::Borrowed(outcome),
            module: Cow::Borrowed("fence"),
            dataset: Cow::Borrowed("fence.enforcement"),
            reason,
        },
        host: Host::named(hostname),
        fence,
    }
}

/// The record for `n` suppressed events of `key`.
pub fn suppressed_record(
    at: Timestamp,
    hostname: &str,
    key: RateKey,
    identity: Option<&str>,
    n: u64,
    interval: Duration,
) -> SummaryRecord {
    let operation = Operation::from_u8(key.operation);
    let verdict = Verdict::from_u8(key.verdict);
    let identity = identity.map_or_else(|| format!("#{}", key.identity), str::to_owned);
    let name = |n: Option<&'static str>| n.unwrap_or("unknown");
    let reason = format!(
        "{n} similar events suppressed ({identity}, {}, {}) by the rate limit",
        name(operation.map(Operation::as_str)),
        name(verdict.map(Verdict::as_str))
    );
    summary(
        at,
        hostname,
        operation.map_or("host", category),
        (ACTION_SUPPRESSED, "unknown"),
        reason,
        SummaryFence {
            schema_version: EVENT_SCHEMA_VERSION,
            identity: Some(identity),
            identity_id: Some(key.identity),
            operation,
            verdict,
            suppressed: Some(n),
            dropped: None,
            interval_seconds: interval.as_secs_f64(),
        },
    )
}

/// The record for `n` events lost to `cause`.
pub fn dropped_record(at: Timestamp, hostname: &str, cause: &'static str, n: u64, interval: Duration) -> SummaryRecord {
    summary(
        at,
        hostname,
        "host",
        (ACTION_DROPPED, "failure"),
        format!("{n} events lost: {cause}"),
        SummaryFence {
            schema_version: EVENT_SCHEMA_VERSION,
            identity: None,
            identity_id: None,
            operation: None,
            verdict: None,
            suppressed: None,
            dropped: Some(Dropped { count: n, cause: Cow::Borrowed(cause) }),
            interval_seconds: interval.as_secs_f64(),
        },
    )
}

/// The kernel maps the summaries are read from.
pub struct KernelStats {
    pub rate: BpfHashMap<MapData, RateKey, RateState>,
    pub counters: PerCpuArray<MapData, u64>,
}

/// What grew since the last look: suppressed counts per key, and drops per cause.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Growth {
    pub suppressed: BTreeMap<RateKey, u64>,
    pub dropped: BTreeMap<&'static str, u64>,
}

/// Remembers the counts already reported.
#[derive(Debug, Default)]
pub struct Tracker {
    suppressed: HashMap<RateKey, u64>,
    dropped: HashMap<&'static str, u64>,
}

impl Tracker {
    /// Records the current totals; returns what grew since the last call.
    pub fn update(
        &mut self,
        suppressed: impl IntoIterator<Item = (RateKey, u64)>,
        dropped: impl IntoIterator<Item = (&'static str, u64)>,
    ) -> Growth {
        let mut g = Growth::default();
        for (key, total) in suppressed {
            let seen = self.suppressed.entry(key).or_insert(0);
            if total > *seen {
                *g.suppressed.entry(key).or_insert(0) += total - *seen;
            }
            *seen = total;
        }
        for (cause, total) in dropped {
            let seen = self.dropped.entry(cause).or_insert(0);
            if total > *seen {
                *g.dropped.entry(cause).or_insert(0) += total - *seen;
            }
            *seen = total;
        }
        g
    }

    /// Forgets a key (its map entry was removed).
    pub fn forget(&mut self, key: &RateKey) {
        self.suppressed.remove(key);
    }

    /// A tracker that has already reported `counts` (of the kernel's counters).
    pub fn reported(counts: &ReportedCounts) -> Tracker {
        let mut t = Tracker::default();
        for c in &counts.suppressed {
            let key = RateKey { identity: c.identity, operation: c.operation, verdict: c.verdict, _pad: [0; 2] };
            t.suppressed.insert(key, c.count);
        }
        for cause in cause::KERNEL {
            if let Some(&n) = counts.dropped.get(cause) {
                t.dropped.insert(cause, n);
            }
        }
        t
    }

    /// What this tracker has reported of the kernel's counters (not of user space's, which
    /// die with the agent), for `run`, at `at`.
    pub fn kernel_counts(&self, run: &str, at: Timestamp) -> ReportedCounts {
        let mut suppressed: Vec<SuppressedCount> = self
            .suppressed
            .iter()
            .filter(|(k, n)| k.identity & USER_SPACE == 0 && **n > 0)
            .map(|(k, n)| SuppressedCount {
                identity: k.identity,
                operation: k.operation,
                verdict: k.verdict,
                count: *n,
            })
            .collect();
        suppressed.sort_by_key(|c| (c.identity, c.operation, c.verdict));
        let dropped = cause::KERNEL
            .iter()
            .filter_map(|c| self.dropped.get(c).filter(|n| **n > 0).map(|n| ((*c).to_owned(), *n)))
            .collect();
        ReportedCounts { run: run.to_owned(), at: at.to_string(), dropped, suppressed }
    }
}

/// The kernel's counts the event writer has reported for one run: the run's totals at its
/// last summary. With persistence the run's counters outlive its agent (pinned), and so does
/// this (a file in the state directory, saved after every summary that reported something):
/// an agent that takes over from the run reports what grew after them, and only that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedCounts {
    /// The run's directory name (`run-abi<N>-<token>`).
    pub run: String,
    /// When they were reported (RFC 3339).
    pub at: String,
    /// Lost events by cause (`cause::KERNEL`).
    pub dropped: BTreeMap<String, u64>,
    pub suppressed: Vec<SuppressedCount>,
}

/// Events suppressed for one rate-limiter key, as [`ReportedCounts`] keep them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedCount {
    pub identity: u32,
    pub operation: u8,
    pub verdict: u8,
    pub count: u64,
}

impl ReportedCounts {
    /// What the file at `path` says was reported of `run`'s counts; nothing if it is about
    /// another run, missing or unreadable (then every count of the run is reported).
    pub fn load(path: &Path, run: &str) -> Option<ReportedCounts> {
        let counts: ReportedCounts = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (counts.run == run).then_some(counts)
    }

    /// When they were reported.
    pub fn at(&self) -> Option<Timestamp> {
        self.at.parse().ok()
    }

    /// Saves them at `path` (written to a temporary file and renamed: a reader sees the old
    /// counts or the new ones).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::persist::write_private(path, &serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }
}

impl KernelStats {
    /// A kernel counter summed over CPUs (0 if unreadable).
    pub fn counters_sum(&self, index: u32) -> u64 {
        self.counters.get(&index, 0).map(|v| v.iter().copied().fold(0u64, u64::wrapping_add)).unwrap_or(0)
    }

    /// The suppressed totals per key, and the keys idle for longer than `idle_ns` at
    /// `now_ns` (candidates for removal once their count is reported).
    pub fn suppressed(&self, now_ns: u64, idle_ns: u64) -> (Vec<(RateKey, u64)>, Vec<RateKey>) {
        let mut totals = Vec::new();
        let mut idle = Vec::new();
        for (key, state) in self.rate.iter().flatten() {
            totals.push((key, state.suppressed));
            if state.tat.saturating_add(idle_ns) < now_ns {
                idle.push(key);
            }
        }
        (totals, idle)
    }

    /// Kernel drop counters by cause.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        vec![
            (cause::RING_BUFFER_FULL, self.counters_sum(counter::RINGBUF_FULL)),
            (cause::RATE_TABLE_FULL, self.counters_sum(counter::RATE_TABLE_FULL)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identity: u32) -> RateKey {
        RateKey { identity, operation: Operation::Connect as u8, verdict: Verdict::Denied as u8, _pad: [0; 2] }
    }

    #[test]
    fn limiter_allows_the_burst_then_the_rate() {
        let mut l = Limiter::new(RateLimit { per_second: 10, burst: 5 });
        let t0 = 1_000_000_000_000;
        let admitted = (0..100).filter(|_| l.admit(key(1), t0)).count();
        assert_eq!(admitted, 5, "the burst");
        assert_eq!(l.state[&key(1)].suppressed, 95);
        // 1 s later the bucket has refilled: the burst again, then one per 100 ms.
        let admitted = (0..100).filter(|i| l.admit(key(1), t0 + 1_000_000_000 + i * 10_000_000)).count();
        assert_eq!(admitted, 5 + 9, "the burst, then the rate over the rest of the second");
        // Another key has its own budget.
        assert!(l.admit(key(2), t0));
    }

    #[test]
    fn unlimited_admits_everything() {
        let mut l = Limiter::new(RateLimit { per_second: 0, burst: 0 });
        assert!((0..10_000).all(|_| l.admit(key(1), 5)));
        assert_eq!(RateLimit { per_second: 0, burst: 9 }.kernel(), EventLimit::default());
    }

    #[test]
    fn tracker_reports_growth_once() {
        let mut t = Tracker::default();
        let g = t.update([(key(1), 10), (key(2), 0)], [(cause::RING_BUFFER_FULL, 0)]);
        assert_eq!(g.suppressed.get(&key(1)), Some(&10));
        assert!(!g.suppressed.contains_key(&key(2)));
        assert!(g.dropped.is_empty());
        let g = t.update([(key(1), 10), (key(2), 3)], [(cause::RING_BUFFER_FULL, 7)]);
        assert_eq!(g.suppressed.len(), 1);
        assert_eq!(g.suppressed.get(&key(2)), Some(&3));
        assert_eq!(g.dropped.get(cause::RING_BUFFER_FULL), Some(&7));
        assert_eq!(t.update([(key(1), 10)], []), Growth::default());
    }

    #[test]
    fn reported_counts_survive_the_agent_and_only_growth_is_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("event-counts.json");
        let at: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        // The agent of run A reported 10 suppressed (key 1), 7 lost (ring buffer full), and
        // some of user space's own counts, which die with it.
        let mut t = Tracker::default();
        let user = RateKey { identity: 1 | USER_SPACE, ..key(1) };
        t.update([(key(1), 10), (key(2), 0), (user, 4)], [(cause::RING_BUFFER_FULL, 7), (cause::QUEUE_FULL, 3)]);
        let counts = t.kernel_counts("run-a", at);
        assert_eq!(counts.suppressed.len(), 1, "kernel keys with a count only: {counts:?}");
        assert_eq!(counts.dropped.len(), 1, "kernel causes only: {counts:?}");
        counts.save(&path).unwrap();
        assert_eq!(ReportedCounts::load(&path, "run-b"), None, "another run's counts");
        let loaded = ReportedCounts::load(&path, "run-a").expect("run A's counts");
        assert_eq!(loaded, counts);
        assert_eq!(loaded.at(), Some(at));
        // Its agent is killed; the kernel goes on counting; the next agent reports the rest.
        let g = Tracker::reported(&loaded)
            .update([(key(1), 25), (key(3), 2)], [(cause::RING_BUFFER_FULL, 20_007), (cause::RATE_TABLE_FULL, 0)]);
        assert_eq!(g.suppressed, BTreeMap::from([(key(1), 15), (key(3), 2)]));
        assert_eq!(g.dropped, BTreeMap::from([(cause::RING_BUFFER_FULL, 20_000)]));
        // Without saved counts (the agent died before its first summary), everything is new.
        let g = Tracker::default().update([(key(1), 25)], [(cause::RING_BUFFER_FULL, 20_007)]);
        assert_eq!((g.suppressed[&key(1)], g.dropped[cause::RING_BUFFER_FULL]), (25, 20_007));
    }

    #[test]
    fn summary_records_name_what_was_suppressed_or_dropped() {
        let at: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let r = suppressed_record(at, "h", key(3), Some("ci"), 1234, Duration::from_secs(10));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"]["action"], "events-suppressed");
        assert_eq!(v["fence"]["suppressed"], 1234);
        assert_eq!(v["fence"]["identity"], "ci");
        assert_eq!(v["fence"]["operation"], "connect");
        assert_eq!(v["fence"]["verdict"], "denied");
        assert!(v["event"]["reason"].as_str().unwrap().starts_with("1234 similar events suppressed"));
        let d = serde_json::to_value(dropped_record(at, "h", cause::QUEUE_FULL, 5, Duration::from_secs(10))).unwrap();
        assert_eq!(d["fence"]["dropped"]["count"], 5);
        assert_eq!(d["fence"]["dropped"]["cause"], "queue-full");
        assert!(d["fence"].get("identity").is_none());
    }
}
