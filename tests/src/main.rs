//! fence's integration tests. Run by `cargo xtask test` (host and vm tiers); by hand:
//!
//! ```text
//! fence-tests list                 # test names
//! fence-tests run NAME             # one test, in this process
//! fence-tests run-all [FILTER]     # every test, each in its own process, one at a time
//! fence-tests dns-authority NAME=IP...  # a test DNS authority on 127.0.0.1 (for the bench)
//! fence-tests bench-secrets COUNT       # the broker's latencies, as JSON (for the bench)
//! ```
//!
//! Needs root, a cgroup2 mount and `fence-agent` next to this binary (or `$FENCE_AGENT`).

use std::{process::ExitCode, time::Duration};

mod agent;
mod bao;
mod broker;
mod broker_bench;
mod bypass;
mod chaos;
mod chaos_log;
mod dns;
mod env;
mod exec_checks;
mod fastpath;
mod flood;
mod grants;
mod harness;
mod helper;
mod identities;
mod kernel_fences;
mod learn;
mod logs;
mod net;
mod net_lookup;
mod persist;
mod postgres;
mod probes;
mod report;
mod schema;
mod service;
mod vault_client;
mod vault_grants;
mod vault_sync;

/// Every integration test, in the order they run. The vault tests run in the host tier only:
/// they test user space against a real OpenBao server (which the VM's initramfs does not hold);
/// what they end in, a policy applied to the kernel, is what every other test checks in both.
fn all_tests() -> impl Iterator<Item = &'static harness::Test> {
    let in_vm = std::env::var("FENCE_TEST_TIER").is_ok_and(|t| t == "vm");
    // And so do the tests of [`HOST_ONLY`].
    let host_only = move |t: &&'static harness::Test| !(in_vm && HOST_ONLY.contains(&t.name));
    let vault: &[&'static [harness::Test]] = if in_vm {
        &[]
    } else {
        &[vault_client::TESTS, vault_sync::TESTS, vault_grants::TESTS, broker::VAULT_TESTS, chaos::VAULT_TESTS]
    };
    net::TESTS
        .iter()
        .chain(kernel_fences::TESTS)
        .chain(identities::TESTS)
        .chain(persist::TESTS)
        .chain(service::TESTS)
        .chain(flood::TESTS)
        .chain(logs::TESTS)
        .chain(learn::TESTS)
        .chain(report::TESTS)
        .chain(bypass::TESTS)
        .chain(fastpath::TESTS)
        .chain(net_lookup::TESTS)
        .chain(dns::TESTS)
        .chain(grants::TESTS)
        .chain(broker::TESTS)
        .chain(chaos::TESTS)
        .chain(vault.iter().flat_map(|t| t.iter()))
        .filter(host_only)
}

/// Tests that run in the host tier only: log files, their formats and the CLI that reads them,
/// the lifecycle audit log and identity listing. What they test is user space, the same on
/// every kernel; every event they read comes from programs the vm tier's other tests exercise
/// on the BPF LSM kernel. Each cost the vm tier 40 s or more of agent starts under emulation.
/// (The report's test stays in both: on the BPF LSM kernel it also covers the unix-socket
/// finding and every fence enforced.)
const HOST_ONLY: &[&str] = &[
    "logs_follow_through_rotation",
    "logs_filters_on_a_real_file",
    "logs_ocsf_file_formats",
    "identity_listing",
    "identity_lifecycle_audit_log",
    // The agent's exemption, checked in `identity::current`, the same code on every kernel
    // (the host tier's cgroup connect program runs it).
    "agent_exemption_is_bound_to_its_cgroup",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tests: Vec<harness::Test> = all_tests().map(|t| harness::Test { name: t.name, run: t.run }).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in &tests {
                println!("{}", t.name);
            }
            ExitCode::SUCCESS
        }
        Some("run") => match args.get(1) {
            Some(name) => harness::run_one(&tests, name),
            None => usage(),
        },
        Some("run-all") => {
            let mut filter = None;
            let mut kernel_log = false;
            for a in &args[1..] {
                match a.as_str() {
                    "--kernel-log-on-failure" => kernel_log = true,
                    f => filter = Some(f.to_owned()),
                }
            }
            let limit = Duration::from_secs(120 * u64::from(env::slow_factor()));
            harness::run_all(&tests, filter.as_deref(), limit, kernel_log)
        }
        Some("helper") => helper::main(&args[1..]),
        Some("dns-authority") => dns::authority_main(&args[1..]),
        Some("bench-secrets") => broker_bench::main(&args[1..]),
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: fence-tests list | run NAME | run-all [--kernel-log-on-failure] [FILTER] | helper ... | \
         dns-authority NAME=IP... | bench-secrets COUNT"
    );
    ExitCode::from(2)
}
