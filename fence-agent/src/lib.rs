//! fence-agent as a library: the pieces of the daemon and CLI, so that the binary stays thin
//! and the integration tests can reuse the host helpers (cgroup discovery, event schema).
//!
//! Pure parts (no kernel): `policy`, `compile`, `events::record`, `config`, `names`.
//! Kernel parts: `enforcer` (the one owner of the eBPF object), `events::reader`, `cgroup`.

#![allow(
    clippy::result_large_err,
    reason = "policy errors carry file, identity and field for the operator; they are rare and cold"
)]

pub mod audit;
pub mod btf;
pub mod cgroup;
pub mod cmd;
pub mod compile;
pub mod config;
pub mod control;
pub mod ebpf_object;
pub mod enforcer;
pub mod events;
pub mod fanotify;
pub mod hold;
pub mod host;
pub mod manager;
pub mod mechanisms;
pub mod metrics;
pub mod names;
pub mod offsets;
pub mod persist;
pub mod policy;
pub mod protect;
pub mod resolve;
pub mod vault;
pub mod watch;
