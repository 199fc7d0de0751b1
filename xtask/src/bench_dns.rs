//! Egress by name in the bench: DNS latency through fence's resolver versus straight to the
//! same upstream (a test authority on loopback, `fence-tests dns-authority`), how long answers
//! are held until their addresses are in the kernel (the agent's own metrics), and the cost of
//! a connect to a learned address versus one a CIDR rule allows.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Env, Workload, calibrate},
    host::{Agent, helper},
    report::{Spread, Table},
};

/// Queries per latency run.
const QUERIES: &str = "2000";
/// The name the bench resolves, and the loopback address it resolves to.
const NAME: &str = "bench.test";
const LEARNED_IP: &str = "127.0.0.41";

/// The test authority, ended (stdin closed, then killed) when dropped.
struct Authority(Child);

impl Drop for Authority {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn dns(env: &Env<'_>, rounds: u32) -> Result<Table> {
    let learned = TcpListener::bind((LEARNED_IP, 0)).context("a listener on the learned address")?;
    let learned_port = learned.local_addr()?.port();
    thread::spawn(move || learned.incoming().for_each(drop));
    let mut child = Command::new(&env.art.tests)
        .args(["dns-authority", &format!("{NAME}={LEARNED_IP}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the test DNS authority")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("authority stdout")?).read_line(&mut line)?;
    let _authority = Authority(child);
    let upstream = line.trim().to_owned();
    let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let policy = format!(
        "schema: 1\nidentities:\n  - name: bench-dns\n    owner: xtask\n    purpose: benchmark\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    egress:\n      \
         - {{to: [{NAME}], ports: [{learned_port}], protocol: tcp}}\n      \
         - {{to: [127.0.0.1], ports: [{}], protocol: tcp}}\n",
        env.fenced.rel, env.tcp_port
    );
    let config = format!(
        "[dns]\nupstream = [\"{upstream}\"]\nlearn_local_addresses = true\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let _agent = Agent::start(&env.art.agent, &env.agent_dir("dns"), &policy, false, &config)?;
    let (mut p50, mut p99) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for _ in 0..rounds {
        let direct = helper(&env.art.tests, Some(&env.unfenced), &["bench-dns", &upstream, NAME, QUERIES])?;
        let fenced = helper(&env.art.tests, Some(&env.fenced), &["bench-dns", "127.0.0.99:53", NAME, QUERIES])?;
        for v in [&direct, &fenced] {
            if v["ok"] != true {
                bail!("bench-dns failed: {v}");
            }
        }
        let us = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
        p50.0.push(us(&direct, "p50_ns"));
        p50.1.push(us(&fenced, "p50_ns"));
        p99.0.push(us(&direct, "p99_ns"));
        p99.1.push(us(&fenced, "p99_ns"));
    }
    let mut t = Table::new(
        "Egress by name",
        format!(
            "{QUERIES} UDP questions one after the other, {rounds} rounds: from an unfenced process straight to the \
             upstream (a test authority on loopback), and from a fenced one to any server on port 53, steered to its \
             resolver in the agent, which forwards to the same upstream and writes the answer's address into the \
             kernel before it releases the answer. Medians of the rounds' percentiles."
        ),
        &["", "straight to the upstream", "through fence", "ratio"],
    );
    for (what, (direct, fenced)) in [("query latency p50", &p50), ("query latency p99", &p99)] {
        let (d, f) = (median(direct), median(fenced));
        t.row(vec![what.into(), format!("{d:.0} µs"), format!("{f:.0} µs"), format!("{:.2}", f / d)]);
    }
    let (mean, max) = hold(metrics_port)?;
    t.row(vec![
        "answer held until its address is in the kernel".into(),
        String::new(),
        format!("mean {mean:.0} µs, max {max:.0} µs"),
        String::new(),
    ]);
    t.row(connect_row(env, learned_port, rounds)?);
    Ok(t)
}

fn median(v: &[f64]) -> f64 {
    Spread::of(v).map_or(0.0, |s| s.median)
}

/// Mean and longest hold, µs, from the agent's `/metrics`.
fn hold(port: u16) -> Result<(f64, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("the agent's metrics")?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let held = value("fence_dns_answers_held_total");
    let total = value("fence_dns_answer_hold_seconds_total");
    let max = value("fence_dns_answer_hold_max_seconds");
    Ok((if held > 0.0 { 1e6 * total / held } else { 0.0 }, 1e6 * max))
}

/// A fenced TCP connect+close to the learned address versus to an address a CIDR rule allows,
/// alternating, as a ratio of the medians.
fn connect_row(env: &Env<'_>, learned_port: u16, rounds: u32) -> Result<Vec<String>> {
    let workload = |target: String| Workload {
        name: "TCP connect+close",
        short: "tcp",
        action: "bench-tcp",
        count: 3_000,
        quick: 300,
        target,
    };
    let cidr = workload(format!("127.0.0.1:{}", env.tcp_port));
    let learned = workload(format!("{LEARNED_IP}:{learned_port}"));
    let count = calibrate(env, &env.fenced, &cidr)?;
    let (mut c, mut l) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        c.push(env.run(&env.fenced, &cidr, count)?.cpu);
        l.push(env.run(&env.fenced, &learned, count)?.cpu);
    }
    let (c, l) = (median(&c), median(&l));
    Ok(vec![
        "fenced connect+close: learned address vs CIDR rule (CPU time)".into(),
        format!("CIDR {:.1} µs", c / 1000.0),
        format!("learned {:.1} µs", l / 1000.0),
        format!("{:.3}", l / c),
    ])
}
