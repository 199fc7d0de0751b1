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
}
