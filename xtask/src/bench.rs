//! `cargo xtask bench`: the cost of fencing. Each workload runs in interleaved rounds: without
//! the agent (the baseline), then with the agent running, once in a cgroup no identity is
//! bound to (what every other process on the host pays) and once fenced with what it does
//! allowed. The output is the time ratio to the baseline per round: median, min and max.
//! Ratios, not thresholds: nothing here passes or fails on timing.

use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    artifacts::{Artifacts, build_static},
    host::{Agent, Cgroup, helper},
    util::{require_root, step, target_dir},
};

struct Workload {
    name: &'static str,
    action: &'static str,
    count: u64,
    target: String,
    /// The identity's policy sections that allow the workload.
    allow: String,
}

pub fn bench(rounds: u32, filter: Option<&str>) -> Result<ExitCode> {
    require_root("the benchmarks")?;
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let art = build_static()?;
    let fenced = Cgroup::create("/fence-bench/fenced")?;
    let unfenced = Cgroup::create("/fence-bench-unfenced/workload")?;
    // A listener that accepts and drops, so the backlog never fills.
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let tcp_port = tcp.local_addr()?.port();
    // std listens with a backlog of 128; a connect loop outruns the accept thread at times,
    // and dropped SYNs cost a 1 s retransmit. listen(2) again raises the backlog.
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
    let plain_file = work.join("plain-file");
    std::fs::write(&plain_file, "not a secret")?;
    let program = std::fs::canonicalize("/bin/true").context("/bin/true")?;
    let egress = |port: u16, proto: &str| {
        format!("    egress:\n      - to: [127.0.0.1]\n        ports: [{port}]\n        protocol: {proto}\n")
    };
    let workloads = [
        Workload {
            name: "TCP connect+close to loopback",
            action: "bench-tcp",
            count: 3_000,
            target: format!("127.0.0.1:{tcp_port}"),
            allow: egress(tcp_port, "tcp"),
        },
        Workload {
            name: "UDP sendto to loopback",
            action: "bench-udp",
            count: 50_000,
            target: format!("127.0.0.1:{udp_port}"),
            allow: egress(udp_port, "udp"),
        },
        Workload {
            name: "open+close of a non-protected file",
            action: "bench-open",
            count: 100_000,
            target: plain_file.display().to_string(),
            allow: String::new(),
        },
        Workload {
            name: "fork+exec of an allowed program",
            action: "bench-exec",
            count: 1_000,
            target: program.display().to_string(),
            allow: format!("    exec:\n      allow: [{:?}]\n", program.display().to_string()),
        },
    ];
    let mut lines = Vec::new();
    for w in workloads.iter().filter(|w| filter.is_none_or(|f| w.name.contains(f))) {
        step(format!("{} ({} operations per run, {rounds} rounds)", w.name, w.count));
        // Warm up caches and the listener.
        run_once(&art, &fenced, w)?;
        let (mut fenced_ratios, mut unfenced_ratios) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which side goes first, so drift does not favour one.
            let (base, (u, f)) = if round % 2 == 0 {
                let b = run_once(&art, &fenced, w)?;
                (b, with_agent(&art, &fenced, &unfenced, w, &work)?)
            } else {
                let uf = with_agent(&art, &fenced, &unfenced, w, &work)?;
                (run_once(&art, &fenced, w)?, uf)
            };
            let per_op = |ns: f64| ns / w.count as f64;
            eprintln!(
                "    round {}: no agent {:.0} ns/op, unfenced {:.0} ns/op, fenced {:.0} ns/op",
                round + 1,
                per_op(base),
                per_op(u),
                per_op(f)
            );
            fenced_ratios.push(f / base);
            unfenced_ratios.push(u / base);
        }
        lines.push(format!("{}: fenced/no-agent {}", w.name, summary(&mut fenced_ratios)));
        lines.push(format!("{}: unfenced-with-agent/no-agent {}", w.name, summary(&mut unfenced_ratios)));
    }
    drop(udp);
    if filter.is_none_or(|f| "denial storm".contains(f)) {
        lines.extend(storm(&art, &work)?);
    }
    if filter.is_none_or(|f| "vault propagation".contains(f)) {
        for n in [1, 1000] {
            lines.push(crate::bench_vault::propagation(&art, &work, n)?);
        }
    }
    println!();
    for l in &lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    format!(
        "median {:.3} (min {:.3}, max {:.3}) over {} rounds",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    )
}

/// One run of the workload in `cgroup`; returns elapsed ns.
fn run_once(art: &Artifacts, cgroup: &Cgroup, w: &Workload) -> Result<f64> {
    let v = helper(&art.tests, Some(cgroup), &[w.action, &w.target, &w.count.to_string()])?;
    if v["ok"] != true {
        bail!("{} failed: {v}", w.name);
    }
    v["ns"].as_f64().context("ns")
}

/// The workload with the agent running, unfenced then fenced: (unfenced ns, fenced ns).
fn with_agent(art: &Artifacts, fenced: &Cgroup, unfenced: &Cgroup, w: &Workload, work: &Path) -> Result<(f64, f64)> {
    let policy = format!(
        "schema: 1\nidentities:\n  - name: bench\n    owner: xtask\n    purpose: benchmark\n    selectors: [{{cgroup: \"{}\"}}]\n{}",
        fenced.rel, w.allow
    );
    let _agent = Agent::start(&art.agent, &agent_dir(work), &policy, false, "")?;
    Ok((run_once(art, unfenced, w)?, run_once(art, fenced, w)?))
}

fn agent_dir(work: &Path) -> PathBuf {
    work.join("agent")
}

/// Denial storm: the highest rate of denials whose events all reach the event file (no rate
/// limit, nothing dropped), found by doubling, and the share lost at twice that rate.
fn storm(art: &Artifacts, work: &Path) -> Result<Vec<String>> {
    const SECONDS: f64 = 2.0;
    step("denial storm: events per second written to the file with zero drops (rate limit off)");
    let cg = Cgroup::create("/fence-bench/storm")?;
    let denied = TcpListener::bind("127.0.0.1:0")?;
    let to = denied.local_addr()?.to_string();
    let policy = format!(
        "schema: 1\nidentities:\n  - name: storm\n    owner: xtask\n    purpose: benchmark\n    selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
        cg.rel
    );
    let dir = work.join("storm-agent");
    let agent =
        Agent::start(&art.agent, &dir, &policy, false, "rate_limit = 0\nmax_bytes = 0\nsummary_interval = 1\n")?;
    // One step: `rate` denials per second for SECONDS; returns (achieved rate, attempts, lines,
    // events counted as dropped).
    let step_at = |rate: u64| -> Result<(f64, u64, u64, u64)> {
        std::fs::write(&agent.events, "")?;
        // One generator process tops out near 100k connects/s here; above 50k/s, two share it.
        let generators: u64 = if rate > 50_000 { 2 } else { 1 };
        let reports: Vec<Result<serde_json::Value>> = thread::scope(|s| {
            let handles: Vec<_> = (0..generators)
                .map(|_| {
                    s.spawn(|| {
                        let per = (rate / generators).to_string();
                        helper(&art.tests, Some(&cg), &["connect-paced", &to, &per, &SECONDS.to_string()])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("generator panicked"))).collect()
        });
        let (mut attempts, mut achieved) = (0, 0.0);
        for r in reports {
            let v = r?;
            attempts += v["denied"].as_u64().context("denied")?;
            achieved += v["rate"].as_f64().unwrap_or(0.0);
        }
        // Let the writer finish (it stops growing), then count.
        let mut last = (u64::MAX, 0);
        loop {
            thread::sleep(std::time::Duration::from_millis(1500));
            let n = connect_lines(&agent.events)?;
            if n == last {
                break;
            }
            last = n;
        }
        Ok((achieved, attempts, last.0, last.1))
    };
    let mut rate = 5_000u64;
    let mut best: Option<f64> = None;
    let mut limited_by_generator = false;
    for _ in 0..8 {
        let (achieved, attempts, written, _) = step_at(rate)?;
        eprintln!("    {rate}/s asked, {achieved:.0}/s achieved: {attempts} denied, {written} written");
        if written < attempts {
            break;
        }
        best = Some(achieved);
        if achieved < rate as f64 * 0.9 {
            limited_by_generator = true;
            break;
        }
        rate *= 2;
    }
    let Some(best) = best else {
        return Ok(vec![format!("denial storm: events were dropped even at {rate}/s")]);
    };
    let mut out = vec![format!(
        "denial storm: {best:.0} events/s written to the file with zero drops{}",
        if limited_by_generator { " (the load generator's limit on this machine, not the agent's)" } else { "" }
    )];
    if !limited_by_generator {
        let twice = (best * 2.0) as u64;
        let (achieved, attempts, written, counted) = step_at(twice)?;
        let lost = attempts.saturating_sub(written);
        out.push(format!(
            "denial storm: at {achieved:.0}/s (twice that), {:.1}% of events dropped ({lost} of {attempts}; \
             the events-dropped summaries count {counted})",
            100.0 * lost as f64 / attempts.max(1) as f64
        ));
    }
    drop(denied);
    Ok(out)
}

/// Enforcement lines in the event file, and the events its `events-dropped` summaries count.
fn connect_lines(path: &Path) -> Result<(u64, u64)> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(path)?;
    let (mut n, mut dropped) = (0, 0);
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.contains("\"action\":\"connect\"") {
            n += 1;
        } else if line.contains("\"action\":\"events-dropped\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        {
            dropped += v["fence"]["dropped"]["count"].as_u64().unwrap_or(0);
        }
    }
    Ok((n, dropped))
}
