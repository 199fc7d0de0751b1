//! Policy size and agent scale: the connect cost of a fenced identity as its policy grows (more
//! egress rules, more identities), and what the agent itself needs for a large policy (memory,
//! start-up, the time to apply it on SIGHUP).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Env, Workload, calibrate},
    host::{Agent, Cgroup},
    kstats::{Counter, Programs, StatsEnabled},
    report::{Spread, Table},
    util::{poll, step},
};

/// Egress port rules per filler prefix: the kernel's entry for a prefix holds at most 16 port
/// rules, and a generation of the IPv4 map at most 32,768 prefixes, so 100,000 rules need
/// several ports per prefix (25,000 prefixes here).
const PORTS_PER_PREFIX: usize = 4;

/// fence-agent's `fences::net::HOST_MAP_MIN` (xtask does not build the agent's crate): an
/// identity with this many single addresses has them in the kernel's host map.
const HOST_MAP_MIN: usize = 256;

/// The program whose cost the policy-size table reports (fence-common's `programs::CONNECT4`).
const CONNECT4: &str = "fence_connect4";

/// A policy case: `identities` identities (in cgroups `ids[0..identities]`), each with `rules`
/// egress rules, the first of which allows the TCP workload's listener.
#[derive(Debug, Clone, Copy)]
struct Case {
    label: &'static str,
    identities: usize,
    rules: usize,
    /// Prefix length of the filler rules: 32, single addresses (the kernel's host map), or
    /// shorter (its prefix trie).
    filler_len: u8,
}

const BASELINE: Case = Case { label: "1 identity, 10 rules", identities: 1, rules: 10, filler_len: 32 };
const CASES: [Case; 6] = [
    BASELINE,
    Case { label: "1 identity, 1,000 rules", identities: 1, rules: 1_000, filler_len: 32 },
    Case { label: "1 identity, 100,000 rules", identities: 1, rules: 100_000, filler_len: 32 },
    Case { label: "100 identities × 10 rules", identities: 100, rules: 10, filler_len: 32 },
    Case { label: "1,000 identities × 10 rules", identities: 1_000, rules: 10, filler_len: 32 },
    Case { label: "1 identity, 100,000 rules on /30 prefixes", identities: 1, rules: 100_000, filler_len: 30 },
];

/// The policy document of a case, as JSON: the agent's YAML parser refuses documents of more
/// than 250,000 nodes (its budget against alias bombs), which 100,000 rules exceed; its JSON
/// parser has no such budget. Each rule is one egress item with one address and one port:
/// rule 0 is the loopback listener (127.0.0.1, an ephemeral port), the others 127.0.0.0,
/// 127.0.0.1, 127.0.0.2, ... with ports 1000, 1002, ... (not adjacent, so that they stay
/// separate rules in the kernel). The fillers surround the listener's address: the kernel's
/// longest-prefix lookup for the workload goes through the densest part of the trie (fillers
/// elsewhere, 10.x say, would leave 127.0.0.1 near its root and the rule count unmeasured).
/// 127.0.0.1 itself carries the same 4 filler ports in every case. A case whose fillers are
/// shorter prefixes (`filler_len` < 32) has them at 127.0.0.0/30, 127.0.0.4/30, ...: they are
/// in the kernel's prefix trie, where single addresses are in its host map. Rule 1 allows
/// [`SPREAD_PREFIX`] on [`SPREAD_PORT`] (no listener): the spread workload's destinations,
/// each new to the verdict cache.
fn policy(case: Case, ids: &[Cgroup], tcp_port: u16) -> String {
    let rule = |to: String, port: usize| serde_json::json!({"to": [to], "ports": [port], "protocol": "tcp"});
    let identities: Vec<serde_json::Value> = ids
        .iter()
        .take(case.identities)
        .enumerate()
        .map(|(i, cg)| {
            let mut egress = vec![
                rule("127.0.0.1".to_owned(), usize::from(tcp_port)),
                rule(SPREAD_PREFIX.to_owned(), usize::from(SPREAD_PORT)),
            ];
            egress.extend((0..case.rules.saturating_sub(2)).map(|j| {
                let p = (j / PORTS_PER_PREFIX) << (32 - u32::from(case.filler_len));
                let net = format!("127.{}.{}.{}", (p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
                let to = if case.filler_len == 32 { net } else { format!("{net}/{}", case.filler_len) };
                rule(to, 1000 + 2 * (j % PORTS_PER_PREFIX))
            }));
            serde_json::json!({
                "name": format!("bench-{i}"),
                "owner": "xtask",
                "purpose": "benchmark",
                "selectors": [{"cgroup": cg.rel}],
                "egress": egress,
            })
        })
        .collect();
    serde_json::json!({"schema": 1, "identities": identities}).to_string()
}

/// One cgroup per identity of the largest case.
fn identity_cgroups() -> Result<Vec<Cgroup>> {
    let n = CASES.iter().map(|c| c.identities).max().unwrap_or(1);
    (0..n).map(|i| Cgroup::create(&format!("/fence-bench/ids/id-{i:04}"))).collect()
}

/// The agent's control socket: `status`.
fn status(socket: &Path) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    // The service answers after the apply it is busy with.
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    s.write_all(b"{\"op\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("status answer {line:?}"))?;
    if v["ok"] != true {
        bail!("status refused: {v}");
    }
    Ok(v)
}

/// (applied, unchanged, refused) of a status answer.
fn handled(v: &serde_json::Value) -> (u64, u64, u64) {
    let h = &v["handled"];
    let n = |k: &str| h[k].as_u64().unwrap_or(0);
    (n("applied"), n("unchanged"), n("refused"))
}

/// Replaces the agent's policy file with `text`, sends SIGHUP, and waits until the status
/// op's `handled` count grows; returns the time from the signal. A refusal is an error.
fn apply(agent: &Agent, text: &str) -> Result<Duration> {
    let before = handled(&status(&agent.socket)?);
    let tmp = agent.policy.with_extension("new");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, &agent.policy)?;
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of our own child, not reaped (the Agent holds it).
    if unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error()).context("SIGHUP to the agent");
    }
    let after = poll(Duration::from_secs(600), || {
        let h = handled(&status(&agent.socket).ok()?);
        (h.0 + h.1 + h.2 > before.0 + before.1 + before.2).then_some(h)
    })
    .context("the agent did not handle the SIGHUP within 600 s")?;
    let took = sent.elapsed();
    if after.2 > before.2 {
        let log = fs::read_to_string(&agent.stderr).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!("the agent refused the policy: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(took)
}

/// `VmRSS` or `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32, key: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The spread workload: TCP connects to the addresses of this prefix in turn (65,535 of them,
/// more than the kernel's verdict cache holds), on a port where nothing listens, so that each
/// is a destination the cache has not seen (its cost: the prefix trie's walk and an insert).
const SPREAD_PREFIX: &str = "127.0.0.0/16";
const SPREAD_PORT: u16 = 9;
/// Connects per spread run.
const SPREAD_COUNT: u64 = 20_000;

/// An apply that takes longer than this is not repeated in every round or repetition: at most
/// [`SLOW_ROUNDS`] times (one sample of something that slow is precise enough, and each costs
/// that long).
const SLOW: Duration = Duration::from_secs(30);
const SLOW_ROUNDS: usize = 3;

/// Connect cost by policy size: one agent, its policy switched by SIGHUP between the cases in
/// an order that rotates per round; the fenced TCP connect loop in the case's first identity.
pub fn policy_size(env: &Env<'_>, rounds: u32) -> Result<Table> {
    step(format!("policy size: connect cost with {} policies, {rounds} rounds", CASES.len()));
    let ids = identity_cgroups()?;
    let texts: Vec<String> = CASES.iter().map(|c| policy(*c, &ids, env.tcp_port)).collect();
    let dir = env.agent_dir("policy-agent");
    let _stats = StatsEnabled::enable()?;
    let agent = Agent::start(&env.art.agent, &dir, &texts[0], false, "")?;
    let programs = Programs::of(agent.pid())?;
    let w = env.tcp();
    let cg = &ids[0];
    env.run(cg, w, w.count / 10 + 1)?;
    let count = calibrate(env, cg, w)?;
    let n = CASES.len();
    let spread = Workload {
        name: "TCP connects to new destinations",
        short: "spread",
        action: "bench-tcp-spread",
        count: SPREAD_COUNT,
        quick: SPREAD_COUNT / 10,
        target: format!("{}:{SPREAD_PORT}", SPREAD_PREFIX.trim_end_matches("/16")),
    };
    // Per case and round: CPU ns per connect, fence_connect4 ns per call (a cached destination,
    // and new ones), their ratios to the baseline of the same round, and the time from SIGHUP
    // to the policy applied.
    let (mut wall, mut hook) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (mut wall_ratio, mut hook_ratio) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (mut fresh, mut fresh_ratio) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut apply_ms: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut slow = vec![false; n];
    for round in 0..rounds as usize {
        let mut this: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
        for i in 0..n {
            let c = (round + i) % n;
            if slow[c] && wall[c].len() >= SLOW_ROUNDS {
                continue;
            }
            let took = apply(&agent, &texts[c])?;
            slow[c] |= took > SLOW;
            env.run(cg, w, count / 20 + 1)?;
            let s0 = programs.snapshot()?;
            let ns = env.run(cg, w, count)?.cpu;
            let s1 = programs.snapshot()?;
            let per_call = connect4_ns(&programs, &s0, &s1)?;
            env.run(cg, &spread, spread.count)?;
            let s2 = programs.snapshot()?;
            let new_dest = connect4_ns(&programs, &s1, &s2)?;
            this.insert(c, (ns, per_call, new_dest));
            // The first apply of the baseline is of the policy the agent started with.
            if !(round == 0 && c == 0) {
                apply_ms[c].push(took.as_secs_f64() * 1e3);
            }
        }
        let (base_ns, base_hook, base_new) = this[&0];
        let mut line = format!("    round {}:", round + 1);
        for (c, (ns, per_call, new_dest)) in &this {
            wall[*c].push(*ns);
            hook[*c].push(*per_call);
            fresh[*c].push(*new_dest);
            wall_ratio[*c].push(ns / base_ns);
            hook_ratio[*c].push(per_call / base_hook);
            fresh_ratio[*c].push(new_dest / base_new);
            let _ = write!(
                line,
                " [{}] {ns:.0} CPU ns/op, connect4 {per_call:.0} ns, new destinations {new_dest:.0} ns;",
                CASES[*c].label
            );
        }
        eprintln!("{line}");
    }
    drop(agent);
    let mut t = Table::new(
        "Policy size: connect cost",
        format!(
            "The fenced TCP connect+close loop ({count} connects per run, pinned) in the first identity of each \
             policy; one agent, its policy switched by SIGHUP between the cases in an order that rotates, {rounds} \
             rounds (a case whose apply takes over {} s: {SLOW_ROUNDS} at most). A rule is one egress item with one \
             address and one port ({PORTS_PER_PREFIX} ports per address: 127.0.0.0 upwards, around the listener's \
             127.0.0.1, so that its lookup goes through the densest part of the kernel's prefix trie; an identity \
             with {} single addresses or more has them in the kernel's host map instead), or in the last case one \
             /30 prefix (all in the trie). The loop's destination is in the kernel's verdict cache after its first \
             connect. New destinations: fence_connect4 in {} connects to the addresses of {SPREAD_PREFIX} in a \
             scattered order, more than the cache holds (port {SPREAD_PORT}, allowed by one rule of each policy; \
             nothing listens): each destination is one the cache has not seen. Connect: CPU time (user + system) of the \
             workload process per connect. Ratios to the 10-rule case of the same round: median ± half the IQR \
             in percent. Apply: from SIGHUP to the status op's `handled` count \
             growing, from the case before it in the rotation.",
            SLOW.as_secs(),
            HOST_MAP_MIN,
            spread.count
        ),
        &[
            "policy",
            "rounds",
            "connect, CPU ns/op",
            "ratio",
            "fence_connect4, ns/call",
            "ratio",
            "new destinations, ns/call",
            "ratio",
            "apply",
        ],
    );
    let med = |v: &[f64]| Spread::of(v).map_or("–".to_owned(), |s| format!("{:.0}", s.median));
    let ratio = |v: &[f64]| Spread::of(v).map_or("–".to_owned(), |s| s.show(3));
    for (c, case) in CASES.iter().enumerate() {
        t.row(vec![
            case.label.to_owned(),
            wall[c].len().to_string(),
            med(&wall[c]),
            ratio(&wall_ratio[c]),
            med(&hook[c]),
            ratio(&hook_ratio[c]),
            med(&fresh[c]),
            ratio(&fresh_ratio[c]),
            Spread::of(&apply_ms[c]).map_or("–".to_owned(), |s| format!("{:.0} ms", s.median)),
        ]);
    }
    Ok(t)
}

/// fence_connect4's ns per call between two snapshots.
fn connect4_ns(programs: &Programs, before: &BTreeMap<u32, Counter>, after: &BTreeMap<u32, Counter>) -> Result<f64> {
    programs.delta(before, after).get(CONNECT4).and_then(|c| c.ns_per_call()).context("fence_connect4 did not run")
}

/// What the agent needs: memory, start-up (spawn to READY=1), and the time from SIGHUP to the
/// policy handled, for the 10-rule policy, 1,000 identities and 100,000 rules. `reps`
/// repetitions, but a measurement whose first took longer than [`SLOW`] is not repeated.
pub fn agent_scale(env: &Env<'_>, reps: u32) -> Result<Table> {
    step(format!("agent scale: memory, start-up and apply time ({reps} repetitions)"));
    let ids = identity_cgroups()?;
    let cases = [BASELINE, CASES[4], CASES[2]];
    let texts: Vec<String> = cases.iter().map(|c| policy(*c, &ids, env.tcp_port)).collect();
    let dir = env.agent_dir("scale-agent");
    // Per column (case): samples.
    let mut start_ms = [const { Vec::new() }; 3];
    let mut rss = [const { Vec::new() }; 3];
    let mut hwm = [const { Vec::new() }; 3];
    let mut apply_ms = [const { Vec::new() }; 3];
    let mut apply_rss = [const { Vec::new() }; 3];
    let mut apply_hwm = [const { Vec::new() }; 3];
    let settle = || thread::sleep(Duration::from_millis(500));
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let slow = |v: &Vec<f64>| v.first().is_some_and(|&first| first > ms(SLOW));
    for rep in 0..reps {
        eprintln!("    repetition {}", rep + 1);
        // A fresh agent with the 10-rule policy, then SIGHUP to each large policy (and back).
        for c in 1..3 {
            if slow(&apply_ms[c]) {
                continue;
            }
            let agent = Agent::start(&env.art.agent, &dir, &texts[0], false, "")?;
            if c == 1 {
                start_ms[0].push(ms(agent.ready_in));
                settle();
                rss[0].push(mib(memory_kib(agent.pid(), "VmRSS:")?));
                hwm[0].push(mib(memory_kib(agent.pid(), "VmHWM:")?));
            }
            let took = apply(&agent, &texts[c])?;
            settle();
            apply_ms[c].push(ms(took));
            apply_rss[c].push(mib(memory_kib(agent.pid(), "VmRSS:")?));
            apply_hwm[c].push(mib(memory_kib(agent.pid(), "VmHWM:")?));
            eprintln!("      SIGHUP to {}: {} ms", cases[c].label, took.as_millis());
        }
        // A fresh agent started with each large policy.
        for c in 1..3 {
            if slow(&start_ms[c]) {
                continue;
            }
            let agent = Agent::start_within(&env.art.agent, &dir, &texts[c], false, "", Duration::from_secs(900))?;
            start_ms[c].push(ms(agent.ready_in));
            settle();
            rss[c].push(mib(memory_kib(agent.pid(), "VmRSS:")?));
            hwm[c].push(mib(memory_kib(agent.pid(), "VmHWM:")?));
            eprintln!("      start with {}: {} ms", cases[c].label, agent.ready_in.as_millis());
        }
    }
    let mut t = Table::new(
        "Agent scale",
        format!(
            "The agent (static release build) with three policies, {reps} repetition{} (the median, ± half the IQR \
             when repeated; a measurement whose first took over {} s is not repeated). Start-up: from the spawn to \
             READY=1 on NOTIFY_SOCKET. Memory: VmRSS half a second after READY=1 or after the apply, and the peak \
             (VmHWM). Apply: a fresh agent with the 10-rule policy, its policy file replaced, from SIGHUP to the \
             status op's `handled` count growing.",
            if reps == 1 { "" } else { "s" },
            SLOW.as_secs()
        ),
        &["", cases[0].label, cases[1].label, cases[2].label],
    );
    let cell = |v: &[f64], unit: &str, decimals: usize| match Spread::of(v) {
        Some(s) if s.n > 1 => format!("{:.d$} {unit} ±{:.0}%", s.median, s.half_iqr_pct(), d = decimals),
        Some(s) => format!("{:.d$} {unit}", s.median, d = decimals),
        None => "–".to_owned(),
    };
    let row = |label: &str, v: &[Vec<f64>; 3], unit: &str, d: usize| {
        let mut r = vec![label.to_owned()];
        r.extend(v.iter().map(|x| cell(x, unit, d)));
        r
    };
    t.row(row("start-up to READY=1", &start_ms, "ms", 0));
    t.row(row("RSS after start-up", &rss, "MiB", 1));
    t.row(row("peak RSS by then (VmHWM)", &hwm, "MiB", 1));
    t.row(row("SIGHUP from the 10-rule policy to applied", &apply_ms, "ms", 0));
    t.row(row("RSS after that apply", &apply_rss, "MiB", 1));
    t.row(row("peak RSS by then (VmHWM)", &apply_hwm, "MiB", 1));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_have_the_rules_and_identities_they_say() {
        let ids: Vec<Cgroup> = (0..3)
            .map(|i| Cgroup { rel: format!("/x/id-{i}"), dir: std::path::PathBuf::from("/nonexistent") })
            .collect();
        let doc: serde_json::Value =
            serde_json::from_str(&policy(Case { label: "", identities: 2, rules: 10, filler_len: 32 }, &ids, 4242))
                .unwrap();
        let identities = doc["identities"].as_array().unwrap();
        assert_eq!(identities.len(), 2);
        for identity in identities {
            let egress = identity["egress"].as_array().unwrap();
            assert_eq!(egress.len(), 10);
            assert_eq!(egress[0]["ports"][0], 4242);
            assert_eq!(egress[1]["to"][0], SPREAD_PREFIX);
            // Distinct (address, port) pairs: none merge.
            let mut rules: Vec<String> = egress.iter().map(|r| format!("{}:{}", r["to"][0], r["ports"][0])).collect();
            rules.sort();
            rules.dedup();
            assert_eq!(rules.len(), 10);
        }
        let big = policy(CASES[2], &ids, 1);
        assert_eq!(big.matches("\"protocol\"").count(), 100_000);
        assert!(big.len() < 16 << 20, "under the agent's policy file limit");
        let prefixes: serde_json::Value = serde_json::from_str(&policy(CASES[5], &ids, 1)).unwrap();
        let egress = prefixes["identities"][0]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 100_000);
        assert_eq!(egress[2]["to"][0], "127.0.0.0/30");
        assert_eq!(egress[2 + PORTS_PER_PREFIX]["to"][0], "127.0.0.4/30");
        std::mem::forget(ids);
    }
}
