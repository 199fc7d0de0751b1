//! Reads the kernel's ring buffer and the agent's own records and turns each into a line on
//! the sinks, on a thread of its own ("fence-events"): decoding, JSON encoding and the write
//! calls never run on the async runtime, and a denial storm cannot slow the control socket or
//! the policy service.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::eventfd::{EfdFlags, EventFd},
};

use fence_common::RateKey;

use super::{
    SharedDirectory, Sinks,
    build::{HostView, build},
    decode::{KernelEvent, decode},
    sequence::Sequencer,
    sink::EventLines,
    summary::{
        AgentEventsRx, Growth, KernelStats, Limiter, RateLimit, ReportedCounts, SummaryRecord, Tracker, USER_SPACE,
        cause, dropped_record, suppressed_record,
    },
};
use crate::metrics::Metrics;

/// The boot clock in ns (the kernel's event clock).
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// How long an executable read from /proc is reused for further events of the same process.
/// /proc is read when the event is written, not when it happened, so a name can already be
/// that long late; a denial storm from one process reads it once per interval, not per line.
const EXE_MEMO: Duration = Duration::from_millis(20);

/// The live host, as events see it.
pub struct LiveHost {
    hostname: String,
    /// Wall clock minus boot clock, in ns, refreshed for every batch.
    offset_ns: i128,
    /// Executables by process id, read within [`EXE_MEMO`] of `memo_since`.
    exe_memo: std::cell::RefCell<(Instant, std::collections::HashMap<u32, Option<String>>)>,
}

impl LiveHost {
    pub fn new() -> LiveHost {
        let hostname =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".to_owned());
        let memo = std::cell::RefCell::new((Instant::now(), std::collections::HashMap::new()));
        let mut h = LiveHost { hostname, offset_ns: 0, exe_memo: memo };
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
        let mut memo = self.exe_memo.borrow_mut();
        if memo.0.elapsed() > EXE_MEMO {
            *memo = (Instant::now(), std::collections::HashMap::new());
        }
        memo.1
            .entry(tgid)
            .or_insert_with(|| fs::read_link(format!("/proc/{tgid}/exe")).ok().map(|p| p.display().to_string()))
            .clone()
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

/// Where the writer saves what it has reported of its run's kernel counts (persistence on:
/// the counters are pinned and outlive the agent; see [`ReportedCounts`]).
#[derive(Debug, Clone)]
pub struct CountsFile {
    pub path: PathBuf,
    /// This run's directory name.
    pub run: String,
}

/// Whether a summary is due: every interval, and once more as the writer stops, for the
/// counts of its last, unfinished interval (or they would never be reported).
fn summary_due(now: Instant, next: Instant, stopping: bool) -> bool {
    stopping || now >= next
}

pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records built in user space (the fanotify file fence).
    agent_events: AgentEventsRx,
    directory: SharedDirectory,
    sinks: Sinks,
    host: LiveHost,
    stats: Option<KernelStats>,
    limiter: Limiter,
    tracker: Tracker,
    interval: Duration,
    /// When the last summary was written (the start, before the first).
    last_summary: Instant,
    counts_file: Option<CountsFile>,
    sequence: Sequencer,
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
            last_summary: Instant::now(),
            counts_file: None,
            sequence: Sequencer::in_memory(),
            metrics,
            undecodable: 0,
            written: 0,
        })
    }

    /// Numbers the records in the boot's sequence, reserved in `file` (see [`Sequencer`]).
    pub fn sequence_file(&mut self, file: PathBuf) {
        self.sequence = Sequencer::persistent(file);
    }

    /// Signs checkpoints of the event file (see [`crate::chain`]).
    pub fn checkpoints(&mut self, checkpoints: crate::chain::Checkpoints) {
        self.sinks.checkpoints(checkpoints);
    }

    /// Saves what is reported of this run's kernel counts at `file` after every summary.
    pub fn save_counts(&mut self, file: CountsFile) {
        self.counts_file = Some(file);
    }

    /// Runs the writer on its own thread until [`EventThread::stop`]: it waits on the ring
    /// buffer, the agent's queue and the stop signal together, writes what arrives, writes
    /// summaries every interval, and writes out what is left before it ends.
    pub fn spawn(mut self) -> std::io::Result<EventThread> {
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(std::io::Error::from)?,
        );
        let stop_fd = stop.clone();
        let handle = thread::Builder::new().name("fence-events".into()).spawn(move || self.run(&stop_fd))?;
        Ok(EventThread { stop, handle })
    }

    fn run(&mut self, stop: &EventFd) {
        let mut next_summary = Instant::now() + self.interval;
        loop {
            let mut wait = next_summary.saturating_duration_since(Instant::now());
            if let Some(checkpoint) = self.sinks.until_checkpoint() {
                wait = wait.min(checkpoint);
            }
            let timeout = PollTimeout::try_from(wait.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
            let wake = self.agent_events.wake.clone();
            let (ring_ready, stopped) = {
                let mut fds = [
                    PollFd::new(self.ring.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "waiting for events failed; retrying");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]) || ready(&fds[1]), ready(&fds[2]))
            };
            if ring_ready {
                let _ = wake.read();
            }
            self.drain();
            if summary_due(Instant::now(), next_summary, stopped) {
                self.summarize();
                next_summary = Instant::now() + self.interval;
            }
            if let Err(e) = self.sinks.checkpoint_if_due() {
                self.sink_errors(vec![e]);
            }
            self.sinks.record_head_if_due();
            if stopped {
                return;
            }
        }
    }

    /// Writes a summary line for every count that grew since the last one: events the rate
    /// limit suppressed (kernel and user space), and events lost (by cause).
    pub fn summarize(&mut self) {
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
        // The regular interval, or the shorter one before a stop.
        let interval = self.last_summary.elapsed().min(self.interval);
        self.last_summary = Instant::now();
        let reported = self.write_growth(&growth, interval);
        if reported && let Some(file) = &self.counts_file {
            let counts = self.tracker.kernel_counts(&file.run, Timestamp::now());
            if let Err(e) = counts.save(&file.path) {
                tracing::warn!(error = %e, path = %file.path.display(), "saving the reported event counts failed; an agent that takes over may report some again");
            }
        }
        // Entries idle for long, whose counts are reported, go (the table stays small).
        if let Some(stats) = &mut self.stats {
            for key in idle {
                let _ = stats.rate.remove(&key);
                self.tracker.forget(&key);
            }
        }
    }

    /// Writes the counts an earlier run's programs lost or suppressed (`stats`, its pinned
    /// counters) after its agent's last summary, as the same summary lines, and saves them as
    /// reported for that run (`run`, its directory name; `started`: its start), so that they
    /// are reported once even if this agent dies before the run's pins are gone. Called once
    /// the run's programs no longer report (its counts no longer change). Returns the lines
    /// written.
    pub fn report_earlier(&mut self, run: &str, started: Option<Timestamp>, stats: &KernelStats) -> usize {
        let saved = self.counts_file.as_ref().and_then(|f| ReportedCounts::load(&f.path, run));
        let since = saved.as_ref().and_then(ReportedCounts::at).or(started);
        let mut tracker = saved.as_ref().map(Tracker::reported).unwrap_or_default();
        let (suppressed, _) = stats.suppressed(boot_ns(), u64::MAX);
        let growth = tracker.update(suppressed, stats.dropped());
        let interval = since.map_or(self.interval, |s| Timestamp::now().duration_since(s).unsigned_abs());
        self.write_growth(&growth, interval);
        if let Some(file) = &self.counts_file
            && let Err(e) = tracker.kernel_counts(run, Timestamp::now()).save(&file.path)
        {
            tracing::warn!(error = %e, path = %file.path.display(), "saving the reported event counts failed");
        }
        growth.suppressed.len() + growth.dropped.len()
    }

    /// Writes one summary line per count in `growth`, over `interval`; whether it wrote any.
    fn write_growth(&mut self, growth: &Growth, interval: Duration) -> bool {
        // The schema wants a positive interval.
        let interval = interval.max(Duration::from_millis(1));
        let now = Timestamp::now();
        let hostname = self.host.hostname.clone();
        for (key, n) in &growth.suppressed {
            let key = RateKey { identity: key.identity & !USER_SPACE, ..*key };
            let name = {
                let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
                directory.identity(key.identity).map(|e| e.name.clone())
            };
            let record = suppressed_record(now, &hostname, key, name.as_deref(), *n, interval);
            if let Some(m) = &self.metrics {
                m.suppressed(
                    record.fence.identity.as_deref().unwrap_or_default(),
                    record.fence.operation.map_or("unknown", |o| o.as_str()),
                    record.fence.verdict.map_or("unknown", |v| v.as_str()),
                    *n,
                );
            }
            self.write_summary(record);
        }
        for (cause, n) in &growth.dropped {
            tracing::warn!(cause, count = n, "events were lost");
            if let Some(m) = &self.metrics {
                m.dropped(cause, *n);
            }
            self.write_summary(dropped_record(now, &hostname, cause, *n, interval));
        }
        self.flush();
        !growth.suppressed.is_empty() || !growth.dropped.is_empty()
    }

    fn write_summary(&mut self, mut record: SummaryRecord) {
        (record.event.id, record.event.sequence) = self.sequence.take();
        match serde_json::to_string(&record) {
            Ok(line) => {
                let ocsf = self.ocsf_line(|| super::ocsf::summary_line(&record));
                let fields = super::sink::LineFields {
                    identity: record.fence.identity.as_deref().unwrap_or_default(),
                    verdict: record.fence.verdict.map_or("", |v| v.as_str()),
                    operation: record.fence.operation.map_or("", |o| o.as_str()),
                    action: &record.event.action,
                    category: record.event.category.first().map_or("", |c| c.as_ref()),
                    pid: 0,
                };
                let lines = EventLines { ecs: &line, ocsf: ocsf.as_deref() };
                if let Err(errors) = self.sinks.write_lines(lines, &fields) {
                    self.sink_errors(errors);
                }
            }
            Err(e) => tracing::error!(error = %e, "serialising a summary failed"),
        }
    }

    /// The OCSF line of a record, if a sink wants one (the ECS line is written either way).
    fn ocsf_line(&self, make: impl FnOnce() -> Result<String, super::ocsf::OcsfError>) -> Option<String> {
        if !self.sinks.wants_ocsf() {
            return None;
        }
        make().map_err(|e| tracing::error!(error = %e, "making an event's OCSF line failed")).ok()
    }

    /// Logs and counts what the sinks could not write.
    fn sink_errors(&self, errors: Vec<super::sink::SinkError>) {
        for e in errors {
            tracing::error!(error = %e, "event sink");
            if let (Some(m), super::sink::SinkError::Write { lines, .. }) = (&self.metrics, &e) {
                m.dropped("sink-error", *lines);
            }
        }
    }

    /// Writes out the lines the sinks hold.
    fn flush(&mut self) {
        if let Err(e) = self.sinks.flush() {
            self.sink_errors(vec![e]);
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
            let decoded = match self.ring.next() {
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
        self.flush();
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
        self.flush();
        n
    }

    fn write(&mut self, event: &KernelEvent) {
        let record = {
            let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
            build(event, &directory, &self.host)
        };
        let mut record = match record {
            Ok(r) => r,
            Err(e) => {
                self.undecodable += 1;
                if let Some(m) = &self.metrics {
                    m.dropped("undecodable", 1);
                }
                tracing::error!(error = %e, "undecodable event record");
                return;
            }
        };
        if let Some(m) = &self.metrics {
            m.event(&record.fence.identity, record.fence.operation.as_str(), record.fence.verdict.as_str());
        }
        (record.event.id, record.event.sequence) = self.sequence.take();
        match serde_json::to_string(&record) {
            Ok(line) => {
                let ocsf = self.ocsf_line(|| super::ocsf::event_line(&record));
                let lines = EventLines { ecs: &line, ocsf: ocsf.as_deref() };
                if let Err(errors) = self.sinks.write_lines(lines, &super::sink::LineFields::of(&record)) {
                    self.sink_errors(errors);
                }
                self.written += 1;
            }
            Err(e) => tracing::error!(error = %e, "serialising an event failed"),
        }
    }
}

/// The running event writer.
pub struct EventThread {
    stop: Arc<EventFd>,
    handle: thread::JoinHandle<()>,
}

impl EventThread {
    /// Writes out what the kernel has already reported, then ends the thread.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        if self.handle.join().is_err() {
            tracing::error!("the event writer thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_due_every_interval_and_at_the_stop() {
        let start = Instant::now();
        let next = start + Duration::from_secs(10);
        assert!(!summary_due(start, next, false), "before the interval");
        assert!(summary_due(next, next, false), "at the interval");
        // The counts of the last, unfinished interval are written before the writer ends.
        assert!(summary_due(start, next, true), "at the stop, whatever the interval");
    }
}
