//! `[broker]`: the credential broker (`fence-agent secret get`), which needs `[vault]`.
//!
//! ```toml
//! [broker]
//! kv_mount = "secret"              # the KV v2 mount of the identities' `kv:` secrets
//! token_role = "fence-broker"      # auth/token/create/ROLE makes each identity's token
//! policy_prefix = "fence-identity-"  # the vault policy of identity NAME is PREFIX + NAME
//! token_ttl = "10m"                # an identity's token for KV reads
//! cache_ttl = "30s"                # a KV value is read again after this ("0s": never cached)
//! max_ttl = "8h"                   # no dynamic lease lasts longer
//! revoke_on_shutdown = true        # revoke the dynamic leases when the agent stops
//! files_dir = "/run/fence/secrets" # `secret file` writes below it (keep it on a tmpfs)
//! ```

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub kv_mount: String,
    pub token_role: String,
    pub policy_prefix: String,
    pub token_ttl: Duration,
    pub cache_ttl: Duration,
    pub max_ttl: Duration,
    pub revoke_on_shutdown: bool,
    /// `secret file` writes `<files_dir>/<identity>/<name>`: the whole directory is in the
    /// host's protected set, each identity excepted for its own subdirectory.
    pub files_dir: PathBuf,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig::try_from(BrokerSection::default()).expect("the built-in defaults are valid")
    }
}

impl BrokerConfig {
    /// The vault policy that limits identity `name`'s token to its own secrets.
    pub fn policy_of(&self, identity: &str) -> String {
        format!("{}{identity}", self.policy_prefix)
    }

    /// Where `secret file` writes identity `name`'s files.
    pub fn files_of(&self, identity: &str) -> PathBuf {
        self.files_dir.join(identity)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    #[serde(default = "default_kv_mount")]
    kv_mount: String,
    #[serde(default = "default_token_role")]
    token_role: String,
    #[serde(default = "default_policy_prefix")]
    policy_prefix: String,
    #[serde(default = "default_token_ttl")]
    token_ttl: String,
    #[serde(default = "default_cache_ttl")]
    cache_ttl: String,
    #[serde(default = "default_max_ttl")]
    max_ttl: String,
    #[serde(default = "default_true")]
    revoke_on_shutdown: bool,
    #[serde(default = "default_files_dir")]
    files_dir: PathBuf,
}

impl Default for BrokerSection {
    fn default() -> BrokerSection {
        BrokerSection {
            kv_mount: default_kv_mount(),
            token_role: default_token_role(),
            policy_prefix: default_policy_prefix(),
            token_ttl: default_token_ttl(),
            cache_ttl: default_cache_ttl(),
            max_ttl: default_max_ttl(),
            revoke_on_shutdown: true,
            files_dir: default_files_dir(),
        }
    }
}

fn default_kv_mount() -> String {
    "secret".into()
}
fn default_token_role() -> String {
    "fence-broker".into()
}
fn default_policy_prefix() -> String {
    "fence-identity-".into()
}
fn default_token_ttl() -> String {
    "10m".into()
}
fn default_cache_ttl() -> String {
    "30s".into()
}
fn default_max_ttl() -> String {
    "8h".into()
}
fn default_true() -> bool {
    true
}
fn default_files_dir() -> PathBuf {
    PathBuf::from("/run/fence/secrets")
}

/// A mount, role or policy name: what the vault accepts in a URL path segment and a policy
/// name.
fn vault_name(field: &str, value: &str, slashes: bool) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (slashes && c == '/'))
        && !value.starts_with('/')
        && !value.ends_with('/')
        && !value.split('/').any(|s| s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "broker.{field}: {value:?} must be 1 to 128 letters, digits, '-', '_' or '.'{}",
            if slashes { " (segments separated by /)" } else { "" }
        ))
    }
}

impl TryFrom<BrokerSection> for BrokerConfig {
    type Error = String;

    fn try_from(s: BrokerSection) -> Result<BrokerConfig, String> {
        let duration = |field: &str, text: &str, zero: bool| {
            let d = crate::duration::parse(text).map_err(|e| format!("broker.{field}: {e}"))?;
            if (d.is_zero() && !zero) || d > Duration::from_secs(7 * 86_400) {
                return Err(format!(
                    "broker.{field}: must be between {} and 7d (got {text})",
                    if zero { "0s" } else { "1s" }
                ));
            }
            Ok(d)
        };
        vault_name("kv_mount", &s.kv_mount, true)?;
        vault_name("token_role", &s.token_role, false)?;
        vault_name("policy_prefix", &s.policy_prefix, false)?;
        if !s.files_dir.is_absolute() || s.files_dir.parent().is_none() {
            return Err(format!("broker.files_dir: {} must be an absolute path below /", s.files_dir.display()));
        }
        Ok(BrokerConfig {
            kv_mount: s.kv_mount,
            token_role: s.token_role,
            policy_prefix: s.policy_prefix,
            token_ttl: duration("token_ttl", &s.token_ttl, false)?,
            cache_ttl: duration("cache_ttl", &s.cache_ttl, true)?,
            max_ttl: duration("max_ttl", &s.max_ttl, false)?,
            revoke_on_shutdown: s.revoke_on_shutdown,
            files_dir: s.files_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_and_errors_naming_the_field() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.broker.kv_mount, "secret");
        assert_eq!(c.broker.cache_ttl.as_secs(), 30);
        assert_eq!(c.broker.policy_of("ai"), "fence-identity-ai");
        let c = Config::parse("[broker]\ncache_ttl = \"0s\"\nkv_mount = \"apps/kv\"").unwrap();
        assert!(c.broker.cache_ttl.is_zero());
        assert_eq!(c.broker.kv_mount, "apps/kv");
        let e = Config::parse("[broker]\ntoken_role = \"a/b\"").unwrap_err();
        assert!(e.contains("broker.token_role"), "{e}");
        let e = Config::parse("[broker]\nkv_mount = \"../sys\"").unwrap_err();
        assert!(e.contains("broker.kv_mount"), "{e}");
        let e = Config::parse("[broker]\ntoken_ttl = \"0s\"").unwrap_err();
        assert!(e.contains("broker.token_ttl"), "{e}");
        let e = Config::parse("[broker]\nfiles_dir = \"run/x\"").unwrap_err();
        assert!(e.contains("broker.files_dir"), "{e}");
        assert!(Config::parse("[broker]\nwhatever = 1").unwrap_err().contains("unknown field"));
    }
}
