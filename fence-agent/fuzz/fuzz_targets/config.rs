//! The agent's configuration file (TOML): `config::Config::parse`, every rule checked there.
#![no_main]

use fence_agent::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        // What `fence-agent doctor` and the start-up log show of it.
        Ok(config) => drop(format!("{config:?}")),
        Err(message) => drop(message),
    }
});
