//! What `--identity`, `--verdict`, `--operation` and `--since` select, and how their values
//! are read from the command line. The names are those of [`Verdict`] and [`Operation`].

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fence_common::{Operation, Verdict};
use jiff::{SignedDuration, Timestamp};

use super::line::Line;
use crate::events::summary::{ACTION_DROPPED, ACTION_SUPPRESSED};

/// A `--verdict` value: an event verdict, or one kind of summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictFilter {
    /// Events with this verdict, and the suppression summaries of such events.
    Verdict(Verdict),
    /// `events-suppressed` summaries.
    Suppressed,
    /// `events-dropped` summaries.
    Dropped,
}

impl VerdictFilter {
    pub const SUPPRESSED: &str = "suppressed";
    pub const DROPPED: &str = "dropped";

    pub fn from_name(text: &str) -> Option<VerdictFilter> {
        match text {
            Self::SUPPRESSED => Some(VerdictFilter::Suppressed),
            Self::DROPPED => Some(VerdictFilter::Dropped),
            _ => Verdict::from_name(text).map(VerdictFilter::Verdict),
        }
    }

    /// The values `--verdict` takes, with their help.
    fn possible_values() -> impl Iterator<Item = PossibleValue> {
        Verdict::ALL.iter().map(|v| PossibleValue::new(v.as_str())).chain([
            PossibleValue::new(Self::SUPPRESSED).help("`events-suppressed` summaries"),
            PossibleValue::new(Self::DROPPED).help("`events-dropped` summaries"),
        ])
    }

    fn matches(self, line: &Line) -> bool {
        match self {
            VerdictFilter::Suppressed => line.action() == ACTION_SUPPRESSED,
            VerdictFilter::Dropped => line.action() == ACTION_DROPPED,
            // Events, and the suppression summaries of events with this verdict.
            VerdictFilter::Verdict(v) => line.action() != ACTION_DROPPED && line.verdict() == Some(v),
        }
    }
}

/// `--verdict`: one of [`VerdictFilter::possible_values`]; anything else is refused with the list.
pub fn verdict_parser() -> impl TypedValueParser<Value = VerdictFilter> {
    PossibleValuesParser::new(VerdictFilter::possible_values())
        .try_map(|name| VerdictFilter::from_name(&name).ok_or_else(|| format!("{name:?} is not a verdict")))
}

/// `--operation`: one of [`Operation::ALL`]; anything else is refused with the list.
pub fn operation_parser() -> impl TypedValueParser<Value = Operation> {
    PossibleValuesParser::new(Operation::ALL.iter().map(|o| o.as_str()))
        .try_map(|name| Operation::from_name(&name).ok_or_else(|| format!("{name:?} is not an operation")))
}

/// `--since`: an RFC 3339 time, or a duration back from now (`30s`, `10m`, `2h`, `1d`).
pub fn parse_since(text: &str) -> Result<Timestamp, String> {
    parse_since_at(text, Timestamp::now())
}

fn parse_since_at(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let bad = || {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-11-25T17:00:00Z) nor a duration back from now \
             (a number and s, m, h or d: 30s, 10m, 2h, 1d)"
        )
    };
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let back = crate::duration::parse(text).map_err(|_| bad())?;
    let back = SignedDuration::try_from(back).map_err(|_| bad())?;
    now.checked_sub(back).map_err(|_| format!("{text:?} reaches back before the earliest representable time"))
}

/// The filters of the command line; all must match (each repeated one: any of its values).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub identities: Vec<String>,
    pub verdicts: Vec<VerdictFilter>,
    pub operations: Vec<Operation>,
    pub since: Option<Timestamp>,
}

impl Filter {
    pub fn matches(&self, line: &Line) -> bool {
        (self.identities.is_empty() || line.identity().is_some_and(|i| self.identities.iter().any(|w| w == i)))
            && (self.operations.is_empty() || line.operation().is_some_and(|o| self.operations.contains(&o)))
            && (self.verdicts.is_empty() || self.verdicts.iter().any(|v| v.matches(line)))
            && self.since.is_none_or(|since| line.time().is_some_and(|t| t >= since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::logs::fixtures;

    fn selected(f: &Filter) -> Vec<usize> {
        fixtures::all().iter().enumerate().filter(|(_, r)| f.matches(r)).map(|(i, _)| i).collect()
    }

    #[test]
    fn filters_combine() {
        use VerdictFilter::{Dropped, Suppressed};
        let (denied, killed, would_deny) = (
            VerdictFilter::Verdict(Verdict::Denied),
            VerdictFilter::Verdict(Verdict::Killed),
            VerdictFilter::Verdict(Verdict::WouldDeny),
        );
        assert_eq!(selected(&Filter::default()), [0, 1, 2, 3]);
        let f = |identities: &[&str], verdicts: &[VerdictFilter], operations: &[Operation]| Filter {
            identities: identities.iter().map(|s| s.to_string()).collect(),
            verdicts: verdicts.to_vec(),
            operations: operations.to_vec(),
            since: None,
        };
        assert_eq!(selected(&f(&["ci-runner"], &[], &[])), [0, 2]);
        assert_eq!(selected(&f(&["ci-runner", "model-runner"], &[], &[])), [0, 1, 2]);
        assert_eq!(selected(&f(&[""], &[], &[])), Vec::<usize>::new(), "a summary without identity has none");
        assert_eq!(selected(&f(&[], &[denied], &[])), [0, 2], "denied includes its suppression summaries");
        assert_eq!(selected(&f(&[], &[would_deny], &[])), [1]);
        assert_eq!(selected(&f(&[], &[Suppressed], &[])), [2]);
        assert_eq!(selected(&f(&[], &[Dropped], &[])), [3]);
        assert_eq!(selected(&f(&[], &[Dropped, would_deny], &[])), [1, 3]);
        assert_eq!(selected(&f(&[], &[killed], &[])), Vec::<usize>::new());
        assert_eq!(selected(&f(&[], &[], &[Operation::Exec])), [1]);
        assert_eq!(selected(&f(&[], &[], &[Operation::Connect])), [0, 2]);
        assert_eq!(selected(&f(&["ci-runner"], &[Suppressed], &[Operation::Connect])), [2]);
        assert_eq!(selected(&f(&["model-runner"], &[denied], &[])), Vec::<usize>::new());
        let since = |t: &str| Filter { since: Some(t.parse().unwrap()), ..Filter::default() };
        assert_eq!(selected(&since("2026-11-25T17:20:00Z")), [1, 2, 3], "at or after");
        assert_eq!(selected(&since("2026-11-25T17:16:53.178883876Z")), [1, 2, 3]);
        assert_eq!(selected(&since("2030-01-01T00:00:00Z")), Vec::<usize>::new());
        let mut undated = fixtures::denied_connect();
        undated["@timestamp"] = "some time".into();
        assert!(!since("2020-01-01T00:00:00Z").matches(&fixtures::line(&undated)), "no time: not after anything");
    }

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let at = |t: &str| parse_since_at(t, now).map(|t| t.to_string());
        assert_eq!(at("2026-11-25T17:00:00Z").unwrap(), "2026-11-25T17:00:00Z");
        assert_eq!(at("2026-11-25T18:00:00+01:00").unwrap(), "2026-11-25T17:00:00Z");
        assert_eq!(at("30s").unwrap(), "2026-11-25T11:59:30Z");
        assert_eq!(at("10m").unwrap(), "2026-11-25T11:50:00Z");
        assert_eq!(at("2h").unwrap(), "2026-11-25T10:00:00Z");
        assert_eq!(at("1d").unwrap(), "2026-11-24T12:00:00Z");
        for bad in ["", "10", "m", "10x", "-5m", "1.5h", "yesterday", "2026-11-25", "99999999999999999999d"] {
            let e = at(bad).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains("earliest"), "{bad}: {e}");
        }
    }
}
