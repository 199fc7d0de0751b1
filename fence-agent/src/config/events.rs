//! `[events]`: where denial events go (see `events::sink`) and how floods of them are held back.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

pub const DEFAULT_RATE_LIMIT: u32 = 50;
pub const DEFAULT_RATE_BURST: u32 = 200;
/// Seconds between summaries of suppressed and dropped events.
pub const DEFAULT_SUMMARY_INTERVAL: u32 = 10;
pub const DEFAULT_EVENTS_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_EVENTS_KEEP: u32 = 5;
/// More rotated files than this is a mistake (each rotation renames every one of them).
pub const MAX_EVENTS_KEEP: u32 = 1000;

/// How events are written to a sink: `format` (stdout) and `file_format` (the file).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// One Elastic Common Schema line per event (`schema/event.schema.json`).
    #[default]
    Ecs,
    /// One OCSF line per event (`schema/ocsf.schema.json`, see `events::ocsf`).
    Ocsf,
    /// Both lines per event: the ECS line, then the OCSF line of the same event (same
    /// `event.id` / `metadata.uid`).
    Both,
}

impl EventFormat {
    /// Whether the sink gets ECS lines.
    pub fn ecs(self) -> bool {
        matches!(self, EventFormat::Ecs | EventFormat::Both)
    }

    /// Whether the sink gets OCSF lines.
    pub fn ocsf(self) -> bool {
        matches!(self, EventFormat::Ocsf | EventFormat::Both)
    }
}

/// Where denial events go (see `events::sink`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// One JSON line per event on stdout (to the journal with fields when stdout is the journal).
    #[serde(default = "yes")]
    pub stdout: bool,
    /// The event file: append-only, never truncated, rotated by size.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The lines written for each event: `ecs` (the default), `ocsf` or `both`; for stdout, and
    /// for the file unless `file_format` says otherwise.
    #[serde(default)]
    pub format: EventFormat,
    /// The lines written to the file, if not `format`'s.
    #[serde(default)]
    pub file_format: Option<EventFormat>,
    /// Rotate the event file before a line would take it past this size; 0: never rotate.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` newest … `events.jsonl.<keep>` oldest), 1 to
    /// [`MAX_EVENTS_KEEP`].
    #[serde(default = "default_keep", deserialize_with = "rotated_files_kept")]
    pub keep: u32,
    /// Flood control: events written per second per (identity, operation, verdict), enforced
    /// in the kernel; the rest are counted and reported as one summary per interval. 0: no
    /// limit.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Events of one (identity, operation, verdict) that may come at once before the limit.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Time between summaries of suppressed and dropped events: whole seconds, 1 to 3600
    /// (`summary_interval = 10` in the file).
    #[serde(default = "default_summary_interval", deserialize_with = "summary_interval")]
    pub summary_interval: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            stdout: true,
            file: None,
            format: EventFormat::Ecs,
            file_format: None,
            max_bytes: DEFAULT_EVENTS_MAX_BYTES,
            keep: DEFAULT_EVENTS_KEEP,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_burst: DEFAULT_RATE_BURST,
            summary_interval: default_summary_interval(),
        }
    }
}

impl EventsConfig {
    /// The format of the file's lines: `file_format`, else `format`.
    pub fn file_format(&self) -> EventFormat {
        self.file_format.unwrap_or(self.format)
    }
}

fn yes() -> bool {
    true
}

fn default_rate_limit() -> u32 {
    DEFAULT_RATE_LIMIT
}

fn default_rate_burst() -> u32 {
    DEFAULT_RATE_BURST
}

fn default_summary_interval() -> Duration {
    Duration::from_secs(DEFAULT_SUMMARY_INTERVAL.into())
}

fn default_max_bytes() -> u64 {
    DEFAULT_EVENTS_MAX_BYTES
}

fn default_keep() -> u32 {
    DEFAULT_EVENTS_KEEP
}

fn summary_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    super::seconds_in(d, 1, 3600)
}

fn rotated_files_kept<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error as _;
    let keep = u32::deserialize(d)?;
    if keep < 1 {
        return Err(D::Error::custom("must be at least 1 (the live file is rotated to <file>.1)"));
    }
    if keep > MAX_EVENTS_KEEP {
        return Err(D::Error::custom(format!("must be at most {MAX_EVENTS_KEEP} (got {keep})")));
    }
    Ok(keep)
}
