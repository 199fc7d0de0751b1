//! The agent's configuration file (TOML, default /etc/fence/agent.toml). Every field is
//! optional; unknown fields are errors.
//!
//! ```toml
//! [events]
//! stdout = true                              # one JSON line per event on stdout
//! file = "/var/log/fence/events.jsonl"       # append-only event file
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_PATH: &str = "/etc/fence/agent.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub events: EventsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            stdout: true,
            file: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`, or the default path if it exists, or returns the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(Config::default()),
        };
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner().message().trim())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fields() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse("[events]\nstdout = false\nfile = \"/tmp/e.jsonl\"\n").unwrap();
        assert!(!c.events.stdout);
        assert_eq!(c.events.file.as_deref(), Some(Path::new("/tmp/e.jsonl")));
    }

    #[test]
    fn unknown_and_mistyped_fields_name_the_field() {
        let e = Config::parse("[events]\nstdot = true\n").unwrap_err();
        assert!(e.contains("events") && e.contains("stdot"), "{e}");
        let e = Config::parse("[events]\nstdout = \"yes\"\n").unwrap_err();
        assert!(e.starts_with("events.stdout"), "{e}");
    }
}
