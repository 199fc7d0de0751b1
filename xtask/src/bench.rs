//! `cargo xtask bench`: the cost of fencing. Each workload runs in interleaved rounds without
//! the agent and with it (the process fenced, its destination allowed); the output is the
//! ratio fenced/unfenced per round: median, min and max. Ratios, not thresholds.

use std::{
    net::{TcpListener, UdpSocket},
    process::ExitCode,
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    artifacts::{Artifacts, build_static},
    host::{Agent, Cgroup, helper},
    test::target_dir,
    util::{require_root, step},
};

struct Workload {
    name: &'static str,
    action: &'static str,
    count: u64,
    target: String,
    protocol: &'static str,
    port: u16,
}

pub fn bench(rounds: u32) -> Result<ExitCode> {
    require_root("the benchmarks")?;
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let art = build_static()?;
    let cgroup = Cgroup::create("/fence-bench/workload")?;
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
    let workloads = [
        Workload {
            name: "TCP connect+close to loopback",
            action: "bench-tcp",
            count: 3_000,
            target: format!("127.0.0.1:{tcp_port}"),
            protocol: "tcp",
            port: tcp_port,
        },
        Workload {
            name: "UDP sendto to loopback",
            action: "bench-udp",
            count: 50_000,
            target: format!("127.0.0.1:{udp_port}"),
            protocol: "udp",
            port: udp_port,
        },
    ];
    let work = target_dir()?.join("fence-bench");
    let mut lines = Vec::new();
    for w in &workloads {
        step(format!("{} ({} operations per run, {rounds} rounds)", w.name, w.count));
        // Warm up caches and the listener.
        run_once(&art, &cgroup, w)?;
        let mut ratios = Vec::new();
        for round in 0..rounds {
            // Alternate which side goes first, so drift does not favour one.
            let (base, fenced) = if round % 2 == 0 {
                let b = run_once(&art, &cgroup, w)?;
                (b, fenced_run(&art, &cgroup, w, &work)?)
            } else {
                let f = fenced_run(&art, &cgroup, w, &work)?;
                (run_once(&art, &cgroup, w)?, f)
            };
            let ratio = fenced / base;
            eprintln!(
                "    round {}: unfenced {:.0} ns/op, fenced {:.0} ns/op, ratio {ratio:.3}",
                round + 1,
                base / w.count as f64,
                fenced / w.count as f64
            );
            ratios.push(ratio);
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        lines.push(format!(
            "{}: fenced/unfenced median {median:.3} (min {:.3}, max {:.3}) over {rounds} rounds",
            w.name,
            ratios[0],
            ratios[ratios.len() - 1]
        ));
    }
    drop(udp);
    println!();
    for l in &lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One run of the workload in the bench cgroup; returns elapsed ns.
fn run_once(art: &Artifacts, cgroup: &Cgroup, w: &Workload) -> Result<f64> {
    let v = helper(&art.tests, Some(cgroup), &[w.action, &w.target, &w.count.to_string()])?;
    if v["ok"] != true {
        bail!("{} failed: {v}", w.name);
    }
    v["ns"].as_f64().context("ns")
}

/// The same run with the agent enforcing a policy that allows the destination.
fn fenced_run(art: &Artifacts, cgroup: &Cgroup, w: &Workload, work: &std::path::Path) -> Result<f64> {
    let policy = format!(
        "schema: 1\nidentities:\n  - name: bench\n    owner: xtask\n    purpose: benchmark\n    selectors: [{{cgroup: \"{}\"}}]\n    \
         egress:\n      - to: [127.0.0.1]\n        ports: [{}]\n        protocol: {}\n",
        cgroup.rel, w.port, w.protocol
    );
    let _agent = Agent::start(&art.agent, work, &policy, false)?;
    run_once(art, cgroup, w)
}
