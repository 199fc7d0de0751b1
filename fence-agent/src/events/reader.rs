//! Reads the kernel's ring buffer and turns each record into a line on the sinks.

use std::{fs, os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use tokio::io::{Interest, unix::AsyncFd};

use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    SharedDirectory, Sinks,
    decode::{KernelEvent, decode},
    record::{HostView, build},
};

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

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records built in user space (the fanotify file fence).
    agent_events: UnboundedReceiver<KernelEvent>,
    directory: SharedDirectory,
    sinks: Sinks,
    host: LiveHost,
    /// Records the agent could not decode (never expected; counted, not fatal).
    pub undecodable: u64,
    pub written: u64,
}

impl EventReader {
    pub fn new(
        ring: RingBuf<MapData>,
        agent_events: UnboundedReceiver<KernelEvent>,
        directory: SharedDirectory,
        sinks: Sinks,
    ) -> std::io::Result<EventReader> {
        tracing::debug!(fd = ring.as_raw_fd(), "event ring buffer");
        // SAFETY: the ring buffer owns its map fd for its whole life and always reports that fd.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(EventReader { ring, agent_events, directory, sinks, host: LiveHost::new(), undecodable: 0, written: 0 })
    }

    /// Reads events until the task is cancelled.
    pub async fn run(&mut self) {
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "waiting on the event ring buffer failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(event) = self.agent_events.recv() => {
                    self.host.refresh_clock();
                    self.write(&event);
                }
            }
            self.drain();
        }
    }

    /// Writes every record currently in the ring buffer and the agent's queue.
    pub fn drain(&mut self) {
        self.host.refresh_clock();
        while let Ok(event) = self.agent_events.try_recv() {
            self.write(&event);
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
        match serde_json::to_string(&record) {
            Ok(line) => {
                if let Err(errors) = self.sinks.write_line(&line) {
                    for e in errors {
                        tracing::error!(error = %e, "event sink");
                    }
                }
                self.written += 1;
            }
            Err(e) => tracing::error!(error = %e, "serialising an event failed"),
        }
    }
}
