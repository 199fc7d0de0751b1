//! One line of the event file, read back through the types it was written from: an
//! enforcement event ([`Record`]) or a summary ([`SummaryRecord`]), told apart by
//! `event.action`.

use fence_common::{Operation, Verdict};
use jiff::Timestamp;
use serde_json::Value;

use crate::events::{
    record::Record,
    summary::{ACTION_DROPPED, ACTION_SUPPRESSED, SummaryRecord},
};

/// Whether `raw` is one of the log's signed checkpoints (`event.action: log-checkpoint`).
pub fn is_checkpoint(raw: &[u8]) -> bool {
    serde_json::from_slice::<Value>(raw).is_ok_and(|v| v["event"]["action"] == "log-checkpoint")
}

/// What fence's readers say of a file that holds OCSF lines and no ECS line.
pub const OCSF_ONLY: &str = "the event file holds OCSF lines only, and fence's readers (`logs`, `policy suggest`) \
    read ECS lines: set [events] file_format = \"ecs\" or \"both\" (each event as its ECS line and its OCSF line)";

/// A line that is not an event record: a signed checkpoint, an OCSF line (`format = "ocsf"` or
/// `"both"`; the readers read the ECS line of each event), or something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    Checkpoint,
    Ocsf,
    NotEvent,
}

impl Skipped {
    /// Why `raw`, which [`Line::parse`] refused, is skipped.
    pub fn of(raw: &[u8]) -> Skipped {
        match serde_json::from_slice::<Value>(raw) {
            Ok(v) if v["event"]["action"] == "log-checkpoint" => Skipped::Checkpoint,
            Ok(v) if crate::events::ocsf::is_ocsf(&v) => Skipped::Ocsf,
            _ => Skipped::NotEvent,
        }
    }
}

/// What a reader skipped, and whether the file held only OCSF events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skips {
    /// Lines read as events (ECS).
    pub events: u64,
    pub ocsf: u64,
    /// Lines that were neither events, OCSF lines nor checkpoints.
    pub not_events: u64,
}

impl Skips {
    /// Counts a line [`Line::parse`] refused.
    pub fn skipped(&mut self, raw: &[u8]) {
        match Skipped::of(raw) {
            Skipped::Checkpoint => {}
            Skipped::Ocsf => self.ocsf += 1,
            Skipped::NotEvent => self.not_events += 1,
        }
    }

    /// The file held OCSF events and no ECS one: the reader cannot read it.
    pub fn ocsf_only(&self) -> bool {
        self.ocsf > 0 && self.events == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An enforcement event.
    Event(Box<Record>),
    /// An `events-suppressed` or `events-dropped` summary.
    Summary(Box<SummaryRecord>),
}

impl Line {
    /// The line as the record its `event.action` names: a summary for `events-suppressed` and
    /// `events-dropped`, an enforcement event otherwise. Anything else (not JSON, missing or
    /// mistyped fields, an unknown verdict, operation, mechanism or reason) is an error.
    pub fn parse(raw: &[u8]) -> serde_json::Result<Line> {
        let value: Value = serde_json::from_slice(raw)?;
        match value["event"]["action"].as_str() {
            Some(ACTION_SUPPRESSED | ACTION_DROPPED) => {
                serde_json::from_value(value).map(|s| Line::Summary(Box::new(s)))
            }
            _ => serde_json::from_value(value).map(|r| Line::Event(Box::new(r))),
        }
    }

    /// `@timestamp` as written.
    pub fn timestamp(&self) -> &str {
        match self {
            Line::Event(r) => &r.timestamp,
            Line::Summary(s) => &s.timestamp,
        }
    }

    /// `@timestamp`, if it is a time.
    pub fn time(&self) -> Option<Timestamp> {
        self.timestamp().parse().ok()
    }

    /// `event.action`: the operation of an event, `events-suppressed` or `events-dropped`.
    pub fn action(&self) -> &str {
        match self {
            Line::Event(r) => &r.event.action,
            Line::Summary(s) => &s.event.action,
        }
    }

    pub fn identity(&self) -> Option<&str> {
        match self {
            Line::Event(r) => Some(&r.fence.identity),
            Line::Summary(s) => s.fence.identity.as_deref(),
        }
    }

    pub fn operation(&self) -> Option<Operation> {
        match self {
            Line::Event(r) => Some(r.fence.operation),
            Line::Summary(s) => s.fence.operation,
        }
    }

    /// The verdict of an event, or of the events a suppression summary counts.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            Line::Event(r) => Some(r.fence.verdict),
            Line::Summary(s) => s.fence.verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cmd::logs::fixtures;

    #[test]
    fn lines_parse_into_the_record_their_action_names() {
        for (fixture, summary) in
            [(fixtures::denied_connect(), false), (fixtures::suppressed(), true), (fixtures::dropped(), true)]
        {
            let line = Line::parse(fixture.to_string().as_bytes()).unwrap();
            assert_eq!(matches!(line, Line::Summary(_)), summary, "{fixture}");
        }
        let refused = |mutate: &dyn Fn(&mut Value), base: Value| {
            let mut v = base;
            mutate(&mut v);
            assert!(Line::parse(v.to_string().as_bytes()).is_err(), "should be refused: {v}");
        };
        // An event that calls itself a summary, and a summary that does not.
        refused(&|v| v["event"]["action"] = json!("events-dropped"), fixtures::denied_connect());
        refused(&|v| v["event"]["action"] = json!("connect"), fixtures::suppressed());
        // Values the enums do not name, missing and mistyped fields.
        refused(&|v| v["fence"]["verdict"] = json!("allowed-by-grant"), fixtures::denied_connect());
        refused(&|v| v["fence"]["operation"] = json!("connect4"), fixtures::denied_connect());
        refused(&|v| v["fence"]["mechanism"] = json!("kprobe"), fixtures::denied_connect());
        refused(&|v| v["fence"]["reason"] = json!("because"), fixtures::denied_connect());
        refused(&|v| v["fence"]["verdict"] = json!("maybe"), fixtures::suppressed());
        refused(
            &|v| {
                v.as_object_mut().unwrap().remove("process");
            },
            fixtures::denied_connect(),
        );
        refused(&|v| v["process"]["pid"] = json!("19547"), fixtures::denied_connect());
        refused(
            &|v| {
                v["fence"].as_object_mut().unwrap().remove("interval_seconds");
            },
            fixtures::dropped(),
        );
        for raw in [&b"not json"[..], b"[1,2]", b"{\"a\":1}", b"{\"cut", b"", b"null"] {
            assert!(Line::parse(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    /// An OCSF line (format ocsf or both) is not read as an event, and is told apart from a
    /// line that is not an event at all; a file of OCSF lines only is one readers refuse.
    #[test]
    fn ocsf_lines_are_skipped_and_a_file_of_them_only_is_named() {
        let Line::Event(r) = fixtures::line(&fixtures::denied_connect()) else { panic!("an event") };
        let ocsf = crate::events::ocsf::event_line(&r).unwrap();
        assert!(Line::parse(ocsf.as_bytes()).is_err(), "an OCSF line is not an ECS record");
        assert_eq!(Skipped::of(ocsf.as_bytes()), Skipped::Ocsf);
        assert_eq!(Skipped::of(b"{\"a\":1}"), Skipped::NotEvent);
        let mut only = Skips::default();
        only.skipped(ocsf.as_bytes());
        assert!(only.ocsf_only());
        let both = Skips { events: 1, ..only };
        assert!(!both.ocsf_only(), "format both: the ECS lines are read, the OCSF ones skipped");
        assert!(!Skips::default().ocsf_only(), "an empty file is not an OCSF one");
    }
}
