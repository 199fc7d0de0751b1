//! Just-in-time grants in the bench: how long a workload waits from asking for a grant to
//! its first allowed connect (an `auto` target, and a `console` target approved by root on
//! the host), and how late the kernel is in ending one: from the grant's end on the boot
//! clock to the first refused connect of a workload connecting without pause.

use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench::Env,
    host::{Agent, helper},
    report::{Table, latency_row},
};

/// The granted target's address.
const TARGET_IP: &str = "127.0.0.45";

pub fn grants(env: &Env<'_>, rounds: u32) -> Result<Table> {
    let target = TcpListener::bind((TARGET_IP, 0)).context("a listener on the grant's target")?;
    let port = target.local_addr()?.port();
    thread::spawn(move || target.incoming().for_each(drop));
    let to = format!("{TARGET_IP}:{port}");
    let policy = format!(
        "schema: 1\nidentities:\n  - name: bench-grants\n    owner: xtask\n    purpose: benchmark\n    \
         selectors: [{{cgroup: \"{}\"}}]\n    grants:\n      \
         - {{name: auto, egress: [{{to: [{TARGET_IP}], ports: [{port}], protocol: tcp}}], approval: auto}}\n      \
         - {{name: person, egress: [{{to: [{TARGET_IP}], ports: [{port}], protocol: tcp}}], approval: console}}\n      \
         - {{name: short, egress: [{{to: [{TARGET_IP}], ports: [{port}], protocol: udp}}], approval: auto}}\n",
        env.fenced.rel
    );
    let dir = env.agent_dir("grants");
    let _agent = Agent::start(&env.art.agent, &dir, &policy, false, "")?;
    let samples = (rounds * 5).max(10);
    let (mut auto, mut person, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        auto.push(request_to_connect(env, &dir, &to, "auto")?);
        person.push(request_to_connect(env, &dir, &to, "person")?);
        lag.push(end_to_denied(env, &dir, &to)?);
    }
    let mut t = Table::new(
        "Just-in-time grants",
        format!(
            "{samples} grants of each kind, one after the other. Request to first allowed connect: a fenced workload \
             runs `fence-agent grant request` and then connects (the CLI's round trip and a process start included); \
             for a console target root runs `grant approve` after the request, timed from the approval. End to first \
             denied connect: a grant of 1 s, a fenced workload connecting UDP sockets without pause (the verdict \
             without a handshake), from the grant's end on the boot clock to its first EPERM."
        ),
        &["", "p50", "p99", "max"],
    );
    for (what, v) in [
        ("request (auto) to first allowed connect", &auto),
        ("approval (local root) to first allowed connect", &person),
        ("grant's end to first denied connect", &lag),
    ] {
        t.row(latency_row(what, v).context("no samples")?);
    }
    Ok(t)
}

/// `fence-agent grant ARGS` on `socket` (in the fenced cgroup when `fenced`); its JSON.
fn grant(env: &Env<'_>, dir: &Path, fenced: bool, args: &[&str]) -> Result<Value> {
    let admin = matches!(args.first(), Some(&("approve" | "revoke")));
    let socket = dir.join(if admin { "agent.sock" } else { "workload.sock" });
    let mut cmd = if fenced {
        let mut c = Command::new(&env.art.tests);
        c.arg("helper").arg("--cgroup").arg(&env.fenced.dir).arg("exec").arg(&env.art.agent);
        c
    } else {
        Command::new(&env.art.agent)
    };
    let out = cmd.arg("grant").args(args).arg("--json").arg("--socket").arg(&socket).output()?;
    if !out.status.success() {
        bail!("grant {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("grant JSON")?;
    v.as_array().and_then(|a| a.last().cloned()).context("no grant in the answer")
}

/// Milliseconds from the request (or, for a console target, the approval) to the first
/// allowed connect; the grant is revoked afterwards.
fn request_to_connect(env: &Env<'_>, dir: &Path, to: &str, target: &str) -> Result<f64> {
    let mut started = Instant::now();
    let g = grant(env, dir, true, &["request", target, "--for", "1h", "--reason", "bench"])?;
    let id = g["id"].as_str().context("grant id")?.to_owned();
    if target == "person" {
        started = Instant::now();
        grant(env, dir, false, &["approve", &id])?;
    }
    loop {
        let v = helper(&env.art.tests, Some(&env.fenced), &["tcp-connect", to])?;
        if v["ok"] == true {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the grant {id} never allowed a connect: {v}");
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    grant(env, dir, false, &["revoke", &id])?;
    Ok(ms)
}

/// Milliseconds from a 1 s grant's end (boot clock) to the first refused connect.
fn end_to_denied(env: &Env<'_>, dir: &Path, to: &str) -> Result<f64> {
    let g = grant(env, dir, true, &["request", "short", "--for", "1s", "--reason", "bench"])?;
    let end = g["phase"]["expires_boot_ns"].as_u64().context("the grant's end")?;
    let v = helper(&env.art.tests, Some(&env.fenced), &["connect-until-denied", to, "10", "udp"])?;
    let denied = v["denied_boot_ns"].as_u64().with_context(|| format!("no denial: {v}"))?;
    // The next request of the same target waits until the agent has recorded this end.
    let id = g["id"].as_str().context("grant id")?;
    let until = Instant::now() + Duration::from_secs(10);
    while grant(env, dir, false, &["show", id])?["phase"]["state"] == "active" && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    Ok(denied.saturating_sub(end) as f64 / 1e6)
}
