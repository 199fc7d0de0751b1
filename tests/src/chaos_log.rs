//! The chaos test's bookkeeping: the workload's attempts (its progress lines), the event log
//! read back, and which attempts the log has once, more than once or not at all.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
};

use serde_json::Value;

/// One attempt the workload made, from its progress line.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// 1-based position in the progress file.
    pub(crate) line: usize,
    pub(crate) op: String,
    pub(crate) pid: u64,
    /// `d` denied, `s` succeeded, `o` other.
    pub(crate) outcome: char,
    pub(crate) detail: String,
}

pub(crate) fn parse_progress(path: &Path) -> Vec<Attempt> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let mut w = l.splitn(4, ' ');
            let (op, pid, outcome, detail) = (w.next(), w.next(), w.next(), w.next());
            Attempt {
                line: i + 1,
                op: op.unwrap_or_default().to_owned(),
                pid: pid.and_then(|p| p.parse().ok()).unwrap_or(0),
                outcome: outcome.and_then(|o| o.chars().next()).unwrap_or('?'),
                detail: detail.unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

/// What the event file holds, checked for repeats.
pub(crate) struct Log {
    /// Kernel (and fanotify) events: not summaries.
    pub(crate) events: Vec<Value>,
    /// Lines that appear more than once, verbatim.
    pub(crate) repeated_lines: Vec<String>,
    /// Events with the same (pid, thread, @timestamp, operation) as another.
    pub(crate) repeated_keys: Vec<String>,
    /// `events-dropped` counts by cause.
    pub(crate) dropped: BTreeMap<String, u64>,
    pub(crate) suppressed: u64,
}

pub(crate) fn read_log(path: &Path) -> Log {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut seen_lines: HashMap<&str, usize> = HashMap::new();
    let mut seen_keys: HashMap<String, usize> = HashMap::new();
    let mut log = Log {
        events: Vec::new(),
        repeated_lines: Vec::new(),
        repeated_keys: Vec::new(),
        dropped: BTreeMap::new(),
        suppressed: 0,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        *seen_lines.entry(line).or_default() += 1;
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
        match v["event"]["action"].as_str() {
            Some("events-dropped") => {
                let cause = v["fence"]["dropped"]["cause"].as_str().unwrap_or("?").to_owned();
                *log.dropped.entry(cause).or_default() += v["fence"]["dropped"]["count"].as_u64().unwrap_or(0);
            }
            Some("events-suppressed") => log.suppressed += v["fence"]["suppressed"].as_u64().unwrap_or(0),
            _ => {
                let key = format!(
                    "{} {} {} {}",
                    v["process"]["pid"], v["process"]["thread"]["id"], v["@timestamp"], v["fence"]["operation"]
                );
                *seen_keys.entry(key).or_default() += 1;
                log.events.push(v);
            }
        }
    }
    log.repeated_lines = seen_lines.into_iter().filter(|(_, n)| *n > 1).map(|(l, n)| format!("{n}x {l}")).collect();
    log.repeated_keys = seen_keys.into_iter().filter(|(_, n)| *n > 1).map(|(k, n)| format!("{n}x {k}")).collect();
    log
}

/// Events by (pid, operation).
pub(crate) fn events_by_attempt(events: &[Value]) -> HashMap<(u64, String), Vec<&Value>> {
    let mut by: HashMap<(u64, String), Vec<&Value>> = HashMap::new();
    for e in events {
        let pid = e["process"]["pid"].as_u64().unwrap_or(0);
        let op = e["fence"]["operation"].as_str().unwrap_or_default().to_owned();
        by.entry((pid, op)).or_default().push(e);
    }
    by
}

/// What the log says about the attempts.
pub(crate) struct Matched {
    /// Denied attempts with exactly one event.
    pub(crate) once: usize,
    /// Denied attempts with more than one event: (attempt, the events' timestamps and
    /// mechanisms).
    pub(crate) repeated: Vec<(Attempt, Vec<String>)>,
    /// Denied attempts without an event.
    pub(crate) missing: Vec<Attempt>,
    /// `events-dropped` in all.
    pub(crate) dropped: u64,
}

/// Checks what every chaos test checks of the log: no line written twice, no event (same pid,
/// thread, time and operation) written twice; and matches the denied attempts to their events.
pub(crate) fn check_log(log: &Log, attempts: &[Attempt]) -> Matched {
    assert!(log.repeated_lines.is_empty(), "event lines written more than once: {:#?}", log.repeated_lines);
    assert!(
        log.repeated_keys.is_empty(),
        "events with the same pid, thread, time and operation written more than once: {:#?}",
        log.repeated_keys
    );
    let by = events_by_attempt(&log.events);
    let mut m = Matched { once: 0, repeated: Vec::new(), missing: Vec::new(), dropped: log.dropped.values().sum() };
    for a in attempts.iter().filter(|a| a.outcome == 'd') {
        match by.get(&(a.pid, a.op.clone())).map(Vec::as_slice) {
            None | Some([]) => m.missing.push(a.clone()),
            Some([_]) => m.once += 1,
            Some(events) => m.repeated.push((
                a.clone(),
                events.iter().map(|e| format!("{} {}", e["@timestamp"], e["fence"]["mechanism"])).collect(),
            )),
        }
    }
    m
}
