//! The unfenced fast path, counted by the kernel: fence's cgroup programs are attached at the
//! attach points (the subtrees of bound cgroups), so a process elsewhere never runs them. The
//! kernel's own BPF run counters show it; no timing is involved.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{TcpListener, UdpSocket},
};

use aya::programs::loaded_programs;

use crate::{
    agent::Agent,
    env::TestCgroup,
    harness::{Test, note},
    helper,
};

pub const TESTS: &[Test] = &[Test {
    name: "fastpath_unfenced_processes_run_no_cgroup_program",
    run: unfenced_processes_run_no_cgroup_program,
}];

/// BPF_PROG_TYPE_CGROUP_SKB, _SOCK, _SOCK_ADDR, _SYSCTL: the types fence attaches at the
/// attach points.
const CGROUP_TYPES: [u32; 4] = [8, 9, 18, 23];

/// Program ids the process holds (program and link descriptors), from /proc/PID/fdinfo.
fn held_program_ids(pid: i32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("the agent's fdinfo").flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        ids.extend(
            text.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids
}

/// Run counts of the agent's cgroup programs, by name (another agent may run on the machine:
/// only the programs this one holds count).
fn cgroup_program_runs(ids: &BTreeSet<u32>) -> BTreeMap<String, u64> {
    let mut runs = BTreeMap::new();
    for info in loaded_programs().flatten() {
        if ids.contains(&info.id()) && CGROUP_TYPES.contains(&(info.program_type() as u32)) {
            *runs.entry(info.name_as_str().unwrap_or("?").to_owned()).or_default() += info.run_count();
        }
    }
    runs
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, a)| (k.clone(), a.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect()
}

fn unfenced_processes_run_no_cgroup_program() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_to = udp.local_addr().unwrap().to_string();
    let fenced = TestCgroup::new("fastpath-fenced");
    let unfenced = TestCgroup::new("fastpath-unfenced");
    let policy = format!(
        "schema: 1\nidentities:\n  - name: fast\n    owner: fence-tests\n    purpose: fast path test\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        fenced.rel
    );
    let agent = Agent::start("fastpath", &policy);
    // The kernel counts runs only while statistics are on; they go off when the fd closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let ids = held_program_ids(agent.pid().as_raw());
    let before = cgroup_program_runs(&ids);
    assert!(!before.is_empty(), "the agent holds no cgroup programs: {ids:?}");
    // Unfenced, in a sibling of the fenced cgroup: sockets, datagrams, a sysctl.
    for action in [
        vec!["tcp-connect", to.as_str()],
        vec!["udp-sendto", udp_to.as_str()],
        vec!["socket", "inet6", "tcp"],
        vec!["sysctl-rewrite", "kernel/domainname"],
    ] {
        helper::run(Some(&unfenced), &action).assert_ok("an unfenced workload");
    }
    let unfenced_runs = delta(&before, &cgroup_program_runs(&ids));
    assert!(
        unfenced_runs.values().all(|&n| n == 0),
        "fence's cgroup programs ran for an unfenced process: {unfenced_runs:?}"
    );
    // The counters do count: the fenced cgroup runs them.
    let before = cgroup_program_runs(&ids);
    helper::run(Some(&fenced), &["tcp-connect", &to]).assert_eperm("a fenced connect");
    let fenced_runs = delta(&before, &cgroup_program_runs(&ids));
    assert!(fenced_runs.get("fence_connect4").is_some_and(|&n| n >= 1), "fenced: {fenced_runs:?}");
    note(format!("unfenced: {unfenced_runs:?}; fenced: {fenced_runs:?}"));
}
