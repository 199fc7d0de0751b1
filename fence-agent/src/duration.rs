//! Durations as operators write them: a whole number and a unit, `s`, `m`, `h` or `d` (`90s`,
//! `30m`, `8h`, `1d`). One parser for policies (`max_ttl`), the command line (`--for`,
//! `--since`) and the config.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{text:?} is not a duration (a whole number and s, m, h or d: 90s, 30m, 8h, 1d)")]
pub struct DurationError {
    pub text: String,
}

/// Parses `90s`, `30m`, `8h`, `1d`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError { text: text.to_owned() };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds).map(Duration::from_secs).ok_or_else(bad)
}

/// The shortest exact form: `1d`, `8h`, `30m`, `90s` (`0s` for zero).
pub fn show(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_refuses_the_rest() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("8h"), Ok(Duration::from_secs(28_800)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "m", "30", "30 m", "-5m", "1.5h", "2w", "99999999999999999999d", "5m3s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shows_the_shortest_exact_form() {
        assert_eq!(show(Duration::from_secs(86_400)), "1d");
        assert_eq!(show(Duration::from_secs(7200)), "2h");
        assert_eq!(show(Duration::from_secs(90)), "90s");
        assert_eq!(show(Duration::from_secs(120)), "2m");
        assert_eq!(show(Duration::ZERO), "0s");
    }
}
