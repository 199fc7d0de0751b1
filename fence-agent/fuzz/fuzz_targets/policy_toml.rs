//! A policy file in TOML: `policy::parse_document`, then `policy::validate` of what parses.
#![no_main]

use fence_agent::policy::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fence_agent_fuzz::policy_text(data, Format::Toml));
