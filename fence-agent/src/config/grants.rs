//! `[grants]`: just-in-time grants on this host.
//!
//! ```toml
//! [grants]
//! max_ttl = "8h"            # no grant lasts longer, whatever a policy's max_ttl says
//! pending_timeout = "1h"    # a request no one approves is denied after this
//! max_pending = 16          # open requests per identity
//! ```

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantsConfig {
    pub max_ttl: Duration,
    pub pending_timeout: Duration,
    pub max_pending: usize,
}

impl Default for GrantsConfig {
    fn default() -> GrantsConfig {
        GrantsConfig::try_from(GrantsSection::default()).expect("the built-in defaults are valid")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsSection {
    #[serde(default = "default_max_ttl")]
    max_ttl: String,
    #[serde(default = "default_pending_timeout")]
    pending_timeout: String,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
}

impl Default for GrantsSection {
    fn default() -> GrantsSection {
        GrantsSection {
            max_ttl: default_max_ttl(),
            pending_timeout: default_pending_timeout(),
            max_pending: default_max_pending(),
        }
    }
}

fn default_max_ttl() -> String {
    "8h".into()
}
fn default_pending_timeout() -> String {
    "1h".into()
}
fn default_max_pending() -> usize {
    16
}

/// The longest anything may be set to: a grant is for a task, not a standing privilege.
const LONGEST: Duration = Duration::from_secs(7 * 86_400);

impl TryFrom<GrantsSection> for GrantsConfig {
    type Error = String;

    fn try_from(s: GrantsSection) -> Result<GrantsConfig, String> {
        let duration = |field: &str, text: &str| {
            let d = crate::duration::parse(text).map_err(|e| format!("grants.{field}: {e}"))?;
            if d.is_zero() || d > LONGEST {
                return Err(format!("grants.{field}: must be between 1s and 7d (got {text})"));
            }
            Ok(d)
        };
        if !(1..=1024).contains(&s.max_pending) {
            return Err(format!("grants.max_pending: must be between 1 and 1024 (got {})", s.max_pending));
        }
        Ok(GrantsConfig {
            max_ttl: duration("max_ttl", &s.max_ttl)?,
            pending_timeout: duration("pending_timeout", &s.pending_timeout)?,
            max_pending: s.max_pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_and_errors_naming_the_field() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.grants.max_ttl.as_secs(), 8 * 3600);
        assert_eq!(c.grants.pending_timeout.as_secs(), 3600);
        let c = Config::parse("[grants]\nmax_ttl = \"30m\"").unwrap();
        assert_eq!(c.grants.max_ttl.as_secs(), 1800);
        let e = Config::parse("[grants]\nmax_ttl = \"30\"").unwrap_err();
        assert!(e.contains("grants.max_ttl") && e.contains("not a duration"), "{e}");
        let e = Config::parse("[grants]\npending_timeout = \"30d\"").unwrap_err();
        assert!(e.contains("grants.pending_timeout") && e.contains("between"), "{e}");
        let e = Config::parse("[grants]\nmax_pending = 0").unwrap_err();
        assert!(e.contains("grants.max_pending"), "{e}");
        assert!(Config::parse("[grants]\nwhatever = 1").unwrap_err().contains("unknown field"));
    }
}
