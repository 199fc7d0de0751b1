//! The unfenced fast path, counted by the kernel: fence's cgroup programs are attached at the
//! attach points (the subtrees of bound cgroups), so a process elsewhere never runs them; the
//! global programs (tracepoints, BPF LSM) run for it but leave at the scope check, before the
//! identity lookup, which would leave its cgroup in the identity cache. The kernel's own BPF
//! run counters and the cache's keys show it; no timing is involved.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{TcpListener, UdpSocket},
};

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, loaded_maps},
    programs::loaded_programs,
};

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
    held_ids(pid, "prog_id:")
}

/// Ids after `field` in the process's /proc/PID/fdinfo entries.
fn held_ids(pid: i32, field: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("the agent's fdinfo").flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        ids.extend(text.lines().filter_map(|l| l.strip_prefix(field)).filter_map(|v| v.trim().parse::<u32>().ok()));
    }
    ids
}

/// The agent's map `name` (the kernel keeps the first 15 bytes of a map's name), opened by id.
pub fn agent_map(pid: i32, name: &str) -> Map {
    let held = held_ids(pid, "map_id:");
    let info = loaded_maps()
        .flatten()
        .find(|m| held.contains(&m.id()) && m.name_as_str().is_some_and(|n| name.starts_with(n)))
        .unwrap_or_else(|| panic!("the agent holds {name}"));
    let data = MapData::from_id(info.id()).unwrap_or_else(|e| panic!("opening {name}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("{name} as a map: {e}"))
}

/// The entries of the agent's hash map `name`, read through the kernel by map id: what its
/// programs wrote, not what the agent says.
fn agent_hash_entries<K: Pod, V: Pod>(pid: i32, name: &str) -> Vec<(K, V)> {
    let map = agent_map(pid, name);
    let hash: BpfHashMap<MapData, K, V> = BpfHashMap::try_from(map).unwrap_or_else(|e| panic!("{name} as a hash: {e}"));
    hash.iter().flatten().collect()
}

/// Every CPU's value of each element of the agent's per-CPU array `name`, read through the
/// kernel by map id.
pub fn agent_percpu_values<V: Pod>(pid: i32, name: &str) -> Vec<V> {
    let map = agent_map(pid, name);
    let array: PerCpuArray<MapData, V> =
        PerCpuArray::try_from(map).unwrap_or_else(|e| panic!("{name} as a per-CPU array: {e}"));
    array.iter().flatten().flat_map(|values| values.iter().copied().collect::<Vec<V>>()).collect()
}

/// The cgroup ids in the agent's identity cache (`FENCE_IDENTITY_CACHE`: key cgroup id,
/// sequence, generation): every cgroup some hook has asked "which identity?" about.
fn cached_cgroups(pid: i32) -> BTreeSet<u64> {
    agent_hash_entries::<[u64; 2], u32>(pid, "FENCE_IDENTITY_CACHE").into_iter().map(|(k, _)| k[0]).collect()
}

/// (runs, ns) so far of each of the agent's programs, by name: its cgroup programs (`cgroup`)
/// or the others (tracepoints, BPF LSM: they run for every process on the host). Another agent
/// may run on the machine: only the programs this one holds count.
fn program_stats(ids: &BTreeSet<u32>, cgroup: bool) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for info in loaded_programs().flatten() {
        if ids.contains(&info.id()) && CGROUP_TYPES.contains(&(info.program_type() as u32)) == cgroup {
            let e = out.entry(info.name_as_str().unwrap_or("?").to_owned()).or_insert((0, 0));
            e.0 += info.run_count();
            e.1 += info.run_time().as_nanos() as u64;
        }
    }
    out
}

/// Run counts of the agent's cgroup programs, by name.
fn cgroup_program_runs(ids: &BTreeSet<u32>) -> BTreeMap<String, u64> {
    program_stats(ids, true).into_iter().map(|(name, (runs, _))| (name, runs)).collect()
}

/// Runs counted so far of the agent's global programs, together.
fn global_program_runs(ids: &BTreeSet<u32>) -> u64 {
    program_stats(ids, false).values().map(|&(runs, _)| runs).sum()
}

/// What the global programs cost per call while `cg` runs a benchmark loop (`action`, `n`
/// times), from the kernel's statistics: a figure for the log, not an assertion (programs
/// that ran less than once per 10 operations are left out: other processes' calls).
fn global_cost(ids: &BTreeSet<u32>, cg: &TestCgroup, action: &str, target: &str, n: u64) -> String {
    let before = program_stats(ids, false);
    helper::run(Some(cg), &[action, target, &n.to_string()]).assert_ok(action);
    let after = program_stats(ids, false);
    let mut parts = Vec::new();
    for (name, &(runs, ns)) in &after {
        let (r0, n0) = before.get(name).copied().unwrap_or((0, 0));
        let (runs, ns) = (runs.saturating_sub(r0), ns.saturating_sub(n0));
        if runs * 10 >= n && runs > 0 {
            parts.push(format!("{name} {} ns/call", ns / runs));
        }
    }
    if parts.is_empty() { "no global program".to_owned() } else { parts.join(", ") }
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, a)| (k.clone(), a.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect()
}

fn unfenced_processes_run_no_cgroup_program() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_to = udp.local_addr().unwrap().to_string();
    let me = std::env::current_exe().expect("current_exe").display().to_string();
    let file = std::env::temp_dir().join(format!("fastpath-open.{}", std::process::id()));
    fs::write(&file, "not a secret").unwrap();
    let file_s = file.display().to_string();
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
    let global_before = global_program_runs(&ids);
    assert!(!before.is_empty(), "the agent holds no cgroup programs: {ids:?}");
    // Unfenced, in a sibling of the fenced cgroup: sockets, datagrams, a sysctl.
    for action in [
        vec!["tcp-connect", to.as_str()],
        vec!["udp-sendto", udp_to.as_str()],
        vec!["socket", "inet6", "tcp"],
        vec!["sysctl-rewrite", "kernel/domainname"],
        // In the cgroup: a file opened, a program started (the global programs' hooks).
        vec!["open", file_s.as_str()],
        vec!["exec", me.as_str(), "helper", "noop"],
    ] {
        helper::run(Some(&unfenced), &action).assert_ok("an unfenced workload");
    }
    let unfenced_runs = delta(&before, &cgroup_program_runs(&ids));
    assert!(
        unfenced_runs.values().all(|&n| n == 0),
        "fence's cgroup programs ran for an unfenced process: {unfenced_runs:?}"
    );
    // Global programs ran for those processes (each was exec'd), and none looked it up.
    let global = global_program_runs(&ids) - global_before;
    assert!(global > 0, "no global fence program ran: the check below would prove nothing");
    let cached = cached_cgroups(agent.pid().as_raw());
    assert!(
        !cached.contains(&unfenced.id()),
        "an unfenced cgroup ({}) was looked up (it is in the identity cache: {cached:?})",
        unfenced.id()
    );
    // The counters do count: the fenced cgroup runs them.
    let before = cgroup_program_runs(&ids);
    helper::run(Some(&fenced), &["tcp-connect", &to]).assert_eperm("a fenced connect");
    let fenced_runs = delta(&before, &cgroup_program_runs(&ids));
    assert!(fenced_runs.get("fence_connect4").is_some_and(|&n| n >= 1), "fenced: {fenced_runs:?}");
    // And the cache does fill: a fenced cgroup is looked up.
    let cached = cached_cgroups(agent.pid().as_raw());
    assert!(cached.contains(&fenced.id()), "the fenced cgroup is not in the identity cache: {cached:?}");
    note(format!("unfenced: {unfenced_runs:?}; fenced: {fenced_runs:?}"));
    // What an unfenced process pays at the global hooks on this kernel, and a fenced one.
    for (cg, who) in [(&unfenced, "unfenced"), (&fenced, "fenced")] {
        note(format!(
            "{who}: open+close {}; fork+exec {}",
            global_cost(&ids, cg, "bench-open", &file_s, 20_000),
            global_cost(&ids, cg, "bench-exec", "/bin/true", 200),
        ));
    }
    let _ = fs::remove_file(&file);
}

/// An entry of the kernel's egress verdict cache (`FENCE_VERDICTS`, fence-common's
/// `VerdictEntry`, any CPU's): a destination a rule allowed under one policy sequence, and the
/// rule's grant slot.
#[derive(Debug, PartialEq)]
pub struct CachedVerdict {
    pub sequence: u32,
    pub identity: u32,
    pub port: u16,
    pub family: u8,
    pub addr: [u8; 16],
    pub slot: u32,
}

pub fn cached_verdicts(agent: &Agent) -> Vec<CachedVerdict> {
    let word = |k: &[u8; 40], at: usize| u32::from_ne_bytes([k[at], k[at + 1], k[at + 2], k[at + 3]]);
    agent_percpu_values::<[u8; 40]>(agent.pid().as_raw(), "FENCE_VERDICTS")
        .into_iter()
        .filter(|e| word(e, 8) != 0)
        .map(|e| CachedVerdict {
            sequence: word(&e, 0),
            identity: word(&e, 8),
            port: u16::from_ne_bytes([e[12], e[13]]),
            family: e[15],
            addr: e[16..32].try_into().expect("16 bytes"),
            slot: word(&e, 32),
        })
        .collect()
}
