//! Reads the kernel's ring buffer and turns each record into a line on the sinks.

use std::{fs, os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use tokio::io::{Interest, unix::AsyncFd};

use fence_common::RateKey;

use super::{
    SharedDirectory, Sinks,
    decode::{KernelEvent, decode},
    record::{HostView, build},
    summary::{
        AgentEventsRx, KernelStats, Limiter, RateLimit, SummaryRecord, Tracker, cause, dropped_record,
        suppressed_record,
    },
};
use crate::metrics::Metrics;

/// Marks the user-space limiter's keys apart from the kernel's in the tracker.
const USER_SPACE: u32 = 1 << 31;

/// The boot clock in ns (the kernel's event clock).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The live host, as events see it.
pub struct LiveHost {
    hostname: String,
    /// Wall clock minus boot clock, in ns, refreshed for every batch.
    offset_ns: i128,
}

impl LiveHost {
    pub fn new() -> LiveHost {
        let hostname =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".to_owned());
        let mut h = LiveHost { hostname, offset_ns: 0 };
        h.refresh_clock();
        h
    }

    fn refresh_clock(&mut self) {
        use nix::time::{ClockId, clock_gettime};
        let ns = |c| clock_gettime(c).map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()));
        if let (Ok(real), Ok(boot)) = (ns(ClockId::CLOCK_REALTIME), ns(ClockId::CLOCK_BOOTTIME)) {
            self.offset_ns = real - boot;
        }
    }
}

impl Default for LiveHost {
    fn default() -> Self {
        LiveHost::new()
    }
}

impl HostView for LiveHost {
    fn hostname(&self) -> &str {
        &self.hostname
    }
    fn wall_time(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.offset_ns + i128::from(boot_ns)).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    fn executable(&self, tgid: u32) -> Option<String> {
        fs::read_link(format!("/proc/{tgid}/exe")).ok().map(|p| p.display().to_string())
    }
    fn cgroup_path(&self, tgid: u32) -> Option<String> {
        crate::cgroup::Cgroups::path_of_process(&tgid.to_string())
    }
}

/// Flood control for the reader: the kernel's limiter state and counters, the same limit for
/// records built in user space, and how often summaries are written.
pub struct FloodControl {
    pub stats: Option<KernelStats>,
    pub limit: RateLimit,
    pub interval: Duration,
}

/// Rate-limiter entries idle this long (and fully reported) are removed from the kernel map.
const IDLE_RATE_ENTRY: Duration = Duration::from_secs(120);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records built in user space (the fanotify file fence).
    agent_events: AgentEventsRx,
    directory: SharedDirectory,
    sinks: Sinks,
    host: LiveHost,
    stats: Option<KernelStats>,
    limiter: Limiter,
    tracker: Tracker,
    interval: Duration,
    metrics: Option<Metrics>,
    /// Records the agent could not decode (never expected; counted, not fatal).
    pub undecodable: u64,
    pub written: u64,
}

impl EventReader {
    pub fn new(
        ring: RingBuf<MapData>,
        agent_events: AgentEventsRx,
        directory: SharedDirectory,
        sinks: Sinks,
        flood: FloodControl,
        metrics: Option<Metrics>,
    ) -> std::io::Result<EventReader> {
        tracing::debug!(fd = ring.as_raw_fd(), "event ring buffer");
        // SAFETY: the ring buffer owns its map fd for its whole life and always reports that fd.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(EventReader {
            ring,
            agent_events,
            directory,
            sinks,
            host: LiveHost::new(),
            stats: flood.stats,
            limiter: Limiter::new(flood.limit),
            tracker: Tracker::default(),
            interval: flood.interval,
            metrics,
            undecodable: 0,
            written: 0,
        })
    }

    /// Reads events until the task is cancelled; writes summaries every interval.
    pub async fn run(&mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "waiting on the event ring buffer failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(event) = self.agent_events.rx.recv() => {
                    self.host.refresh_clock();
                    self.write_limited(&event);
                }
                _ = tick.tick() => {
                    self.drain();
                    self.summarize();
                }
            }
            self.drain();
        }
    }

    /// Writes a summary line for every count that grew since the last one: events the rate
    /// limit suppressed (kernel and user space), and events lost (by cause).
    pub fn summarize(&mut self) {
        let now = Timestamp::now();
        let boot_now = boot_ns();
        let (mut suppressed, idle) = match &self.stats {
            Some(s) => s.suppressed(boot_now, IDLE_RATE_ENTRY.as_nanos() as u64),
            None => (Vec::new(), Vec::new()),
        };
        // User-space records are limited under the same keys, identity | 1 << 31 apart.
        suppressed
            .extend(self.limiter.suppressed().map(|(k, n)| (RateKey { identity: k.identity | USER_SPACE, ..k }, n)));
        let mut dropped = self.stats.as_ref().map(KernelStats::dropped).unwrap_or_default();
        dropped.push((cause::QUEUE_FULL, self.agent_events.dropped.load(std::sync::atomic::Ordering::Relaxed)));
        let growth = self.tracker.update(suppressed, dropped);
        let hostname = self.host.hostname.clone();
        for (key, n) in &growth.suppressed {
            let key = RateKey { identity: key.identity & !USER_SPACE, ..*key };
            let name = {
                let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
                directory.identity(key.identity).map(|e| e.name.clone())
            };
            let record = suppressed_record(now, &hostname, key, name.as_deref(), *n, self.interval);
            if let Some(m) = &self.metrics {
                m.suppressed(
                    record.fence.identity.as_deref().unwrap_or_default(),
                    record.fence.operation.unwrap_or_default(),
                    record.fence.verdict.unwrap_or_default(),
                    *n,
                );
            }
            self.write_summary(&record);
        }
        for (cause, n) in &growth.dropped {
            tracing::warn!(cause, count = n, "events were lost");
            if let Some(m) = &self.metrics {
                m.dropped(cause, *n);
            }
            self.write_summary(&dropped_record(now, &hostname, cause, *n, self.interval));
        }
        // Entries idle for long, whose counts are reported, go (the table stays small).
        if let Some(stats) = &mut self.stats {
            for key in idle {
                let _ = stats.rate.remove(&key);
                self.tracker.forget(&key);
            }
        }
    }

    fn write_summary(&mut self, record: &SummaryRecord) {
        match serde_json::to_string(record) {
            Ok(line) => {
                let fields = super::sink::LineFields {
                    identity: record.fence.identity.as_deref().unwrap_or_default(),
                    verdict: record.fence.verdict.unwrap_or_default(),
                    operation: record.fence.operation.unwrap_or_default(),
                    action: record.event.action,
                };
                if let Err(errors) = self.sinks.write_event(&line, &fields) {
                    for e in errors {
                        tracing::error!(error = %e, "event sink");
                        if let Some(m) = &self.metrics {
                            m.dropped("sink-error", 1);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "serialising a summary failed"),
        }
    }

    /// Writes a record built in user space, within the rate limit.
    fn write_limited(&mut self, event: &KernelEvent) {
        let h = event.header();
        let key = RateKey { identity: h.identity, operation: h.operation, verdict: h.verdict, _pad: [0; 2] };
        if self.limiter.admit(key, boot_ns()) {
            self.write(event);
        }
    }

    /// Writes every record currently in the ring buffer and the agent's queue.
    pub fn drain(&mut self) {
        self.host.refresh_clock();
        while let Ok(event) = self.agent_events.rx.try_recv() {
            self.write_limited(&event);
        }
        loop {
            let decoded = match self.ring.get_mut().next() {
                Some(item) => decode(&item),
                None => break,
            };
            match decoded {
                Ok(event) => self.write(&event),
                Err(e) => {
                    self.undecodable += 1;
                    if let Some(m) = &self.metrics {
                        m.dropped("undecodable", 1);
                    }
                    tracing::error!(error = %e, "undecodable event record");
                }
            }
        }
    }

    /// Writes every record of another ring buffer (an earlier run's); returns how many.
    pub fn drain_ring(&mut self, mut ring: RingBuf<MapData>) -> usize {
        self.host.refresh_clock();
        let mut n = 0;
        loop {
            let decoded = match ring.next() {
                Some(item) => decode(&item),
                None => break,
            };
            match decoded {
                Ok(event) => {
                    self.write(&event);
                    n += 1;
                }
                Err(e) => tracing::error!(error = %e, "undecodable event record from an earlier run"),
            }
        }
        n
    }

    fn write(&mut self, event: &KernelEvent) {
        let record = {
            let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
            build(event, &directory, &self.host)
        };
        if let Some(m) = &self.metrics {
            m.event(&record.fence.identity, record.fence.operation, record.fence.verdict);
        }
        match serde_json::to_string(&record) {
            Ok(line) => {
                if let Err(errors) = self.sinks.write_event(&line, &super::sink::LineFields::of(&record)) {
                    for e in errors {
                        tracing::error!(error = %e, "event sink");
                        if let Some(m) = &self.metrics {
                            m.dropped("sink-error", 1);
                        }
                    }
                }
                self.written += 1;
            }
            Err(e) => tracing::error!(error = %e, "serialising an event failed"),
        }
    }
}
