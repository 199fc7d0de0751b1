//! fence-agent as a library: the pieces of the daemon and CLI, so that the binary stays thin
//! and the integration tests can reuse the host helpers (cgroup discovery, event schema).
//!
//! Pure parts (no kernel): `policy`, `compile`, the fences' compile sections, `events::record`,
//! `config`, `names`. The running agent: `service` (the one owner of the policy in force),
//! `kernel` (the policy maps behind a trait, the program loader), `fences` (one unit per fence),
//! `events` (the event writer), `vault` (fetch and verify), `control` (the local socket).
//! See ARCHITECTURE.md for the map.

#![allow(
    clippy::result_large_err,
    reason = "policy errors carry file, identity and field for the operator; they are rare and cold"
)]

pub mod audit;
pub mod broker;
pub mod btf;
pub mod cgroup;
pub mod chain;
pub mod cmd;
pub mod compile;
pub mod config;
pub mod control;
pub mod credscan;
pub mod dns;
pub mod duration;
pub mod ebpf_object;
pub mod events;
pub mod fences;
pub mod grants;
pub mod hold;
pub mod host;
pub mod kernel;
pub mod learn;
pub mod local_addrs;
pub mod logging;
pub mod metrics;
pub mod mountinfo;
pub mod names;
pub mod offsets;
pub mod persist;
pub mod policy;
pub mod proc_status;
pub mod protect;
pub mod report;
pub mod resolve;
pub mod service;
pub mod sockdiag;
pub mod vault;
pub mod watch;
