//! `cargo xtask bench`: what fencing costs, as one report (text, or Markdown with `--markdown`).
//!
//! - Per hook, from the kernel: BPF run-time statistics of each program of the agent, around
//!   each workload run unfenced and fenced ([`per_hook`]; `--quick` runs only this, with small
//!   loop counts).
//! - Ratios: each workload without the agent, with the agent in a cgroup no identity is bound
//!   to (what every other process on the host pays), and fenced with what it does allowed; in
//!   rounds whose order rotates, the workload pinned to one CPU; median and interquartile
//!   spread of the per-round ratios.
//! - Policy size and agent scale ([`crate::bench_scale`]), the denial storm
//!   ([`crate::bench_storm`]), egress by name
//!   ([`crate::bench_dns`]), just-in-time grants ([`crate::bench_grants`]), vault propagation.
//!
//! Ratios and timings, not thresholds: nothing here passes or fails on timing.

use std::{
    collections::BTreeMap,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitCode},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    artifacts::{Artifacts, build_static},
    host::{Agent, Cgroup},
    kstats::{Cost, Programs, StatsEnabled, foreign_fence_programs},
    report::{Machine, Report, Spread, Table, loadavg},
    util::{require_root, step, target_dir},
};

pub struct Options<'a> {
    pub rounds: u32,
    pub filter: Option<&'a str>,
    pub markdown: bool,
    pub quick: bool,
}

/// One ratio workload: a `fence-tests helper` action run `count` times.
pub struct Workload {
    pub name: &'static str,
    /// Short name, for the per-round lines.
    pub short: &'static str,
    pub action: &'static str,
    /// Operations per run before calibration (and in the per-hook table).
    pub count: u64,
    /// Operations per run with `--quick`.
    pub quick: u64,
    pub target: String,
}

/// What every section shares: the binaries, the cgroups, the loopback targets, the CPU the
/// workloads run on.
pub struct Env<'a> {
    pub art: &'a Artifacts,
    pub work: PathBuf,
    pub fenced: Cgroup,
    pub unfenced: Cgroup,
    pub tcp_port: u16,
    pub workloads: Vec<Workload>,
    /// The fenced identity's policy: every workload allowed.
    pub policy: String,
    /// The CPU the workloads are pinned to.
    pub cpu: usize,
    _udp: UdpSocket,
}

/// Seconds one measured run of a ratio workload should take (the count is calibrated to it).
const RUN_SECONDS: f64 = 1.0;

impl<'a> Env<'a> {
    pub fn new(art: &'a Artifacts) -> Result<Env<'a>> {
        let fenced = Cgroup::create("/fence-bench/fenced")?;
        let unfenced = Cgroup::create("/fence-bench-unfenced/workload")?;
        // A listener that accepts and drops, so the backlog never fills.
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let tcp_port = tcp.local_addr()?.port();
        // std listens with a backlog of 128; a connect loop outruns the accept thread at
        // times, and dropped SYNs cost a 1 s retransmit. listen(2) again raises the backlog.
        // SAFETY: listen(2) on a socket we own.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&tcp), 4096) };
        thread::spawn(move || {
            for conn in tcp.incoming() {
                drop(conn);
            }
        });
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let udp_port = udp.local_addr()?.port();
        let work = target_dir()?.join("fence-bench");
        std::fs::create_dir_all(&work)?;
        // Outside the agents' directories: the agent watches its policy file's directory and
        // every ancestor (inotify), and a file directly in a watched directory pays more per
        // open and close than a file elsewhere on the host.
        let plain_dir = target_dir()?.join("fence-bench-files");
        std::fs::create_dir_all(&plain_dir)?;
        let plain_file = plain_dir.join("plain-file");
        std::fs::write(&plain_file, "not a secret")?;
        let program = std::fs::canonicalize("/bin/true").context("/bin/true")?;
        let program = program.display().to_string();
        let workloads = vec![
            Workload {
                name: "TCP connect+close to loopback",
                short: "tcp",
                action: "bench-tcp",
                count: 3_000,
                quick: 300,
                target: format!("127.0.0.1:{tcp_port}"),
            },
            Workload {
                name: "UDP sendto to loopback",
                short: "udp",
                action: "bench-udp",
                count: 50_000,
                quick: 5_000,
                target: format!("127.0.0.1:{udp_port}"),
            },
            Workload {
                name: "open+close of a non-protected file",
                short: "open",
                action: "bench-open",
                count: 100_000,
                quick: 10_000,
                target: plain_file.display().to_string(),
            },
            Workload {
                name: "fork+exec of an allowed program",
                short: "exec",
                action: "bench-exec",
                count: 1_000,
                quick: 100,
                target: program.clone(),
            },
        ];
        let policy = format!(
            "schema: 1\nidentities:\n  - name: bench\n    owner: xtask\n    purpose: benchmark\n    \
             selectors: [{{cgroup: \"{}\"}}]\n    egress:\n      \
             - {{to: [127.0.0.1], ports: [{tcp_port}], protocol: tcp}}\n      \
             - {{to: [127.0.0.1], ports: [{udp_port}], protocol: udp}}\n    exec:\n      allow: [{program:?}]\n",
            fenced.rel
        );
        Ok(Env { art, work, fenced, unfenced, tcp_port, workloads, policy, cpu: workload_cpu()?, _udp: udp })
    }

    pub fn tcp(&self) -> &Workload {
        &self.workloads[0]
    }

    /// One run of `w` with `count` operations in `cgroup`, pinned to the workload CPU.
    pub fn run(&self, cgroup: &Cgroup, w: &Workload, count: u64) -> Result<Run> {
        let mut cmd = Command::new(&self.art.tests);
        cmd.arg("helper").arg("--cgroup").arg(&cgroup.dir).args([w.action, &w.target, &count.to_string()]);
        let cpu = self.cpu;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // sched_setaffinity(2) on a cpu_set_t on its own stack: async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        // Runs are sequential and no other child of this process ends meanwhile, so the
        // children's CPU time grows by the helper's (its own children's included).
        let cpu_before = children_cpu_ns();
        let out = cmd.output().with_context(|| format!("starting {}", self.art.tests.display()))?;
        let cpu = children_cpu_ns() - cpu_before;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))?;
        if v["ok"] != true {
            bail!("{} failed: {v} {}", w.name, String::from_utf8_lossy(&out.stderr));
        }
        Ok(Run { wall: v["ns"].as_f64().context("ns")? / count as f64, cpu: cpu / count as f64 })
    }

    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

/// Per operation of a run: the wall-clock time of the loop, and the CPU time (user and
/// system) of the whole helper process. On a machine shared with other work the wall-clock
/// time includes the time the workload waited for the CPU; the CPU time does not.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub wall: f64,
    pub cpu: f64,
}

/// User and system CPU time of this process's waited-for children, in ns.
fn children_cpu_ns() -> f64 {
    // SAFETY: rusage is plain data; getrusage(2) fills the one we pass.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut r);
        r
    };
    let ns = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    ns(r.ru_utime) + ns(r.ru_stime)
}

/// The highest-numbered CPU this process may run on (on a 2-core machine, CPU 1).
fn workload_cpu() -> Result<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity(2) fills the set we pass.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize).rev().find(|&c| unsafe { libc::CPU_ISSET(c, &set) }).context("no CPU allowed")
}

fn wanted(filter: Option<&str>, names: &[&str]) -> bool {
    filter.is_none_or(|f| names.iter().any(|n| n.to_lowercase().contains(&f.to_lowercase())))
}

pub fn bench(opts: &Options<'_>) -> Result<ExitCode> {
    require_root("the benchmarks")?;
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let started = Instant::now();
    let machine = Machine::probe();
    let art = build_static()?;
    let env = Env::new(&art)?;
    let mut report = Report { machine, settings: Vec::new(), tables: Vec::new(), notes: Vec::new() };
    let mut failed = false;
    report.settings.push(format!(
        "Workloads pinned to CPU {} (sched_setaffinity); the agent is not pinned. Per-hook costs are the kernel's BPF \
         run-time statistics (BPF_ENABLE_STATS).",
        env.cpu
    ));
    if opts.quick {
        step("per-hook cost (quick: small loop counts)");
        let hooks = per_hook(&env, true)?;
        report.notes.extend(hooks.foreign_note());
        report.tables.push(hooks.table(true));
    } else {
        report.settings.push(format!("{} rounds; ratio runs calibrated to about {RUN_SECONDS} s each.", opts.rounds));
        let f = opts.filter;
        // A section that fails is reported as such and the others still run: a long run keeps
        // what it measured.
        let mut section = |report: &mut Report, name: &str, result: Result<Table>| match result {
            Ok(t) => report.tables.push(t),
            Err(e) => {
                eprintln!("xtask: {name} failed: {e:#}");
                report.notes.push(format!("{name} failed: {e:#}"));
                failed = true;
            }
        };
        if wanted(f, &["per-hook", "hooks"]) {
            step("per-hook cost, from the kernel's BPF run-time statistics");
            let hooks = per_hook(&env, false);
            if let Ok(h) = &hooks {
                report.notes.extend(h.foreign_note());
            }
            section(&mut report, "per-hook cost", hooks.map(|h| h.table(false)));
        }
        let selected: Vec<&Workload> = env
            .workloads
            .iter()
            .filter(|w| wanted(f, &[w.name, "ratios"]) || f.is_some_and(|f| f == w.short))
            .collect();
        if !selected.is_empty() {
            section(&mut report, "ratios", ratios(&env, &selected, opts.rounds));
        }
        if wanted(f, &["policy size"]) {
            section(&mut report, "policy size", crate::bench_scale::policy_size(&env, opts.rounds));
        }
        if wanted(f, &["agent scale"]) {
            section(&mut report, "agent scale", crate::bench_scale::agent_scale(&env, opts.rounds.min(3)));
        }
        if wanted(f, &["denial storm"]) {
            section(&mut report, "denial storm", crate::bench_storm::storm(&env));
        }
        if wanted(f, &["egress by name", "dns"]) {
            section(&mut report, "egress by name", crate::bench_dns::dns(&env, opts.rounds));
        }
        if wanted(f, &["just-in-time grants", "grants"]) {
            section(&mut report, "just-in-time grants", crate::bench_grants::grants(&env, opts.rounds));
        }
        if wanted(f, &["credential broker", "secrets"]) {
            section(&mut report, "credential broker", crate::bench_secrets::secrets(&env, opts.rounds));
        }
        if wanted(f, &["vault propagation"]) {
            section(&mut report, "vault propagation", vault(&env));
        }
    }
    report.machine.load_after = loadavg();
    report.settings.push(format!(
        "The whole run took {:.0} s (the build included, the set-up not).",
        started.elapsed().as_secs_f64()
    ));
    println!("{}", report.render(opts.markdown));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Policy propagation from a real OpenBao dev server, for pushes of 1 and 1,000 identities.
fn vault(env: &Env<'_>) -> Result<Table> {
    let mut t = Table::new(
        "Policy propagation from a vault",
        "A real OpenBao dev server, the agent polling it every second: from the start of `fence-agent policy push` \
         to the first denied connect of the workload the pushed policy fences.",
        &["identities pushed", "push", "first denied connect after the push started", "after it ended"],
    );
    for n in [1, 1000] {
        let p = crate::bench_vault::propagation(env.art, &env.work, n)?;
        t.row(vec![
            n.to_string(),
            format!("{} ms", p.push.as_millis()),
            format!("{} ms", p.denied.as_millis()),
            format!("{} ms", p.denied.saturating_sub(p.push).as_millis()),
        ]);
    }
    Ok(t)
}

/// Per workload and program: what the kernel counted, unfenced and fenced.
pub struct HookRow {
    pub workload: &'static str,
    pub ops: u64,
    pub program: String,
    pub unfenced: Cost,
    pub fenced: Cost,
    /// ns per call per repetition (unfenced, fenced), for the spread.
    pub unfenced_ns: Vec<f64>,
    pub fenced_ns: Vec<f64>,
}

pub struct Hooks {
    pub rows: Vec<HookRow>,
    /// Fence programs of other agents seen on the machine.
    pub foreign: usize,
    pub reps: u32,
}

impl Hooks {
    fn foreign_note(&self) -> Option<String> {
        (self.foreign > 0).then(|| {
            format!(
                "{} fence programs of another agent were loaded during the per-hook measurement (other work on \
                 this machine); attached to the same hooks, they run in every set-up, the one without this agent \
                 included. The per-hook costs count this agent's programs only.",
                self.foreign
            )
        })
    }

    pub fn table(&self, quick: bool) -> Table {
        let mut t = Table::new(
            "Per-hook cost (kernel BPF statistics)",
            format!(
                "Each workload with the agent running, once in a cgroup no identity is bound to (unfenced) and once \
                 fenced; calls and ns per call of each fence program, from the kernel's run-time statistics \
                 (run_cnt, run_time_ns), {}. Calls per operation: calls counted / operations of the workload (other \
                 processes on the machine add their own calls; programs below 0.01 calls per operation are left out).",
                if quick || self.reps == 1 {
                    "one run each".to_owned()
                } else {
                    format!("median ns per call of {} runs each", self.reps)
                }
            ),
            &["workload", "program", "calls/op unfenced", "ns/call unfenced", "calls/op fenced", "ns/call fenced"],
        );
        let ns = |v: &[f64]| match Spread::of(v) {
            Some(s) if s.n > 1 => format!("{:.0} ±{:.0}%", s.median, s.half_iqr_pct()),
            Some(s) => format!("{:.0}", s.median),
            None => "–".to_owned(),
        };
        for r in &self.rows {
            t.row(vec![
                format!("{} ({} ops)", r.workload, r.ops),
                r.program.clone(),
                format!("{:.2}", r.unfenced.calls as f64 / r.ops as f64),
                ns(&r.unfenced_ns),
                format!("{:.2}", r.fenced.calls as f64 / r.ops as f64),
                ns(&r.fenced_ns),
            ]);
        }
        t
    }
}

/// The per-hook measurement: one agent with the fenced identity's policy, each workload run
/// unfenced then fenced, the kernel's counters of each of the agent's programs read around
/// each run. `quick`: small loop counts and one run each (for a slow machine or a VM).
pub fn per_hook(env: &Env<'_>, quick: bool) -> Result<Hooks> {
    let reps: u32 = if quick { 1 } else { 3 };
    let _stats = StatsEnabled::enable()?;
    let agent = Agent::start(&env.art.agent, &env.agent_dir("hooks-agent"), &env.policy, false, "")?;
    let programs = Programs::of(agent.pid())?;
    let foreign = foreign_fence_programs(&programs);
    let mut rows = Vec::new();
    for w in &env.workloads {
        let ops = if quick { w.quick } else { w.count };
        // Warm up caches and the listener.
        env.run(&env.fenced, w, ops / 10 + 1)?;
        let mut per: BTreeMap<String, HookRow> = BTreeMap::new();
        for rep in 0..reps {
            // Unfenced first, then fenced first: neither always runs on warmer caches.
            let first_unfenced = rep % 2 == 0;
            let s0 = programs.snapshot()?;
            env.run(if first_unfenced { &env.unfenced } else { &env.fenced }, w, ops)?;
            let s1 = programs.snapshot()?;
            env.run(if first_unfenced { &env.fenced } else { &env.unfenced }, w, ops)?;
            let s2 = programs.snapshot()?;
            let (first, second) = (programs.delta(&s0, &s1), programs.delta(&s1, &s2));
            let (u, f) = if first_unfenced { (first, second) } else { (second, first) };
            for name in programs.names.values() {
                let row = per.entry(name.clone()).or_insert_with(|| HookRow {
                    workload: w.name,
                    ops: ops * u64::from(reps),
                    program: name.clone(),
                    unfenced: Cost::default(),
                    fenced: Cost::default(),
                    unfenced_ns: Vec::new(),
                    fenced_ns: Vec::new(),
                });
                if let Some(c) = u.get(name) {
                    row.unfenced.calls += c.calls;
                    row.unfenced.ns += c.ns;
                    row.unfenced_ns.extend(c.ns_per_call());
                }
                if let Some(c) = f.get(name) {
                    row.fenced.calls += c.calls;
                    row.fenced.ns += c.ns;
                    row.fenced_ns.extend(c.ns_per_call());
                }
            }
        }
        let mut any = false;
        for row in per.into_values() {
            let relevant = |c: &Cost| c.calls as f64 >= 0.01 * row.ops as f64;
            if relevant(&row.unfenced) || relevant(&row.fenced) {
                any = true;
                eprintln!(
                    "    {}: {} unfenced {} calls {}, fenced {} calls {}",
                    w.short,
                    row.program,
                    row.unfenced.calls,
                    row.unfenced.ns_per_call().map_or("–".to_owned(), |n| format!("{n:.0} ns/call")),
                    row.fenced.calls,
                    row.fenced.ns_per_call().map_or("–".to_owned(), |n| format!("{n:.0} ns/call")),
                );
                rows.push(row);
            }
        }
        if !any {
            eprintln!("    {}: no fence program ran", w.short);
            rows.push(HookRow {
                workload: w.name,
                ops: ops * u64::from(reps),
                program: "none loaded for this operation on this kernel".to_owned(),
                unfenced: Cost::default(),
                fenced: Cost::default(),
                unfenced_ns: Vec::new(),
                fenced_ns: Vec::new(),
            });
        }
    }
    Ok(Hooks { rows, foreign, reps })
}

/// The three set-ups of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    NoAgent,
    Unfenced,
    Fenced,
}

/// Operations per run for about `RUN_SECONDS`, from one run of `w.count` operations.
pub fn calibrate(env: &Env<'_>, cgroup: &Cgroup, w: &Workload) -> Result<u64> {
    let ns = env.run(cgroup, w, w.count)?.wall * w.count as f64;
    let scaled = (w.count as f64 * RUN_SECONDS * 1e9 / ns.max(1.0)) as u64;
    Ok(scaled.clamp(w.count / 4 + 1, w.count * 100))
}

/// The wall-clock ratios: per round, the three set-ups in a rotating order (no agent,
/// unfenced, fenced; then unfenced, fenced, no agent; ...), the agent started for the
/// set-ups that need it.
fn ratios(env: &Env<'_>, selected: &[&Workload], rounds: u32) -> Result<Table> {
    let mut t = Table::new(
        "Ratios to the same workload without the agent",
        format!(
            "Each workload pinned to one CPU, in {rounds} rounds; each round runs it without the agent, with the agent \
             in a cgroup no identity is bound to (unfenced), and fenced with what it does allowed, in an order that \
             rotates from round to round. Per round, the ratio to the run without the agent, of the wall-clock time \
             and of the CPU time of the workload process (user + system, its children included: what the hooks add, \
             without the time spent waiting for a CPU that other work holds). The median over the rounds, ± half \
             the interquartile range in percent of it."
        ),
        &[
            "workload",
            "ops per run",
            "no agent, ns/op (wall)",
            "unfenced, wall",
            "unfenced, CPU",
            "fenced, wall",
            "fenced, CPU",
        ],
    );
    let order = [Setup::NoAgent, Setup::Unfenced, Setup::Fenced];
    for w in selected {
        step(format!("{}: calibrating, then {rounds} rounds", w.name));
        env.run(&env.unfenced, w, w.count / 10 + 1)?;
        let count = calibrate(env, &env.unfenced, w)?;
        let mut base = Vec::new();
        // Ratios per round: unfenced wall, unfenced CPU, fenced wall, fenced CPU.
        let mut r: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds as usize {
            let mut agent: Option<Agent> = None;
            let mut runs = BTreeMap::new();
            for i in 0..3 {
                let setup = order[(round + i) % 3];
                match setup {
                    Setup::NoAgent => agent = None,
                    _ if agent.is_none() => {
                        agent = Some(Agent::start(&env.art.agent, &env.agent_dir("agent"), &env.policy, false, "")?);
                    }
                    _ => {}
                }
                let cgroup = if setup == Setup::Fenced { &env.fenced } else { &env.unfenced };
                runs.insert(setup as u8, env.run(cgroup, w, count)?);
            }
            drop(agent);
            let run = |s: Setup| runs[&(s as u8)];
            let (n, u, f) = (run(Setup::NoAgent), run(Setup::Unfenced), run(Setup::Fenced));
            eprintln!(
                "    round {}: no agent {:.0} ns/op ({:.0} CPU), unfenced {:.0} ({:.0}), fenced {:.0} ({:.0}); ratios \
                 wall {:.3} {:.3}, CPU {:.3} {:.3}",
                round + 1,
                n.wall,
                n.cpu,
                u.wall,
                u.cpu,
                f.wall,
                f.cpu,
                u.wall / n.wall,
                f.wall / n.wall,
                u.cpu / n.cpu,
                f.cpu / n.cpu
            );
            base.push(n.wall);
            r[0].push(u.wall / n.wall);
            r[1].push(u.cpu / n.cpu);
            r[2].push(f.wall / n.wall);
            r[3].push(f.cpu / n.cpu);
        }
        let show = |v: &[f64]| {
            Spread::of(v).map_or("–".to_owned(), |s| format!("{:.3} ±{:.1}%", s.median, s.half_iqr_pct()))
        };
        let mut row = vec![
            w.name.to_owned(),
            count.to_string(),
            Spread::of(&base).map_or("–".to_owned(), |b| format!("{:.0} ±{:.1}%", b.median, b.half_iqr_pct())),
        ];
        row.extend(r.iter().map(|v| show(v)));
        t.row(row);
    }
    Ok(t)
}
