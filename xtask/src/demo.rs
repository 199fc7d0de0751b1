//! `cargo xtask demo`: fence on an embedded policy. A stand-in "AI assistant" started with
//! `fence-agent exec --identity demo-assistant` calls its internal API (allowed), then tries an
//! SSH-like port (denied, logged) and to run a shell (denied); the same attempts from an
//! unfenced process go through.

use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    artifacts::build_static,
    host::{Agent, helper},
    util::{require_root, step, target_dir},
};

const POLICY: &str = include_str!("../assets/demo-policy.yaml");

pub fn demo() -> Result<ExitCode> {
    require_root("the demo")?;
    let art = build_static()?;
    let api = TcpListener::bind("127.0.0.1:0")?;
    let ssh = TcpListener::bind("127.0.0.1:0")?;
    let api_port = api.local_addr()?.port();
    let ssh_port = ssh.local_addr()?.port();
    step(format!(
        "two local services: 127.0.0.1:{api_port} (internal API) and 127.0.0.1:{ssh_port} (stands in for SSH)"
    ));
    let work = target_dir()?.join("fence-demo");
    fs::create_dir_all(&work)?;
    // The workload: a copy of the test helper, named for what it stands for.
    let assistant = work.join("ai-assistant");
    fs::copy(&art.tests, &assistant)?;
    let policy =
        POLICY.replace("{API_PORT}", &api_port.to_string()).replace("{ASSISTANT}", &assistant.display().to_string());
    step("starting fence-agent with the demo policy:");
    for l in policy.lines().filter(|l| !l.trim_start().starts_with('#')) {
        eprintln!("    {l}");
    }
    let agent = Agent::start(&art.agent, &work.join("agent"), &policy, false, "")?;
    for l in fs::read_to_string(&agent.stderr).unwrap_or_default().lines() {
        eprintln!("    agent| {l}");
    }
    let report = |what: &str, v: &serde_json::Value| {
        let verdict = if v["ok"] == true {
            "connected".to_owned()
        } else {
            format!("REFUSED: {}", v["error"].as_str().unwrap_or("?"))
        };
        println!("  {what:<62} {verdict}");
    };
    let socket = work.join("agent").join("agent.sock");
    let fenced = |action: &[&str]| fence_exec(&art.agent, &socket, &assistant, action);
    step("the assistant, started with `fence-agent exec --identity demo-assistant`, tries:");
    report(
        &format!("internal API  127.0.0.1:{api_port}"),
        &fenced(&["tcp-connect", &format!("127.0.0.1:{api_port}")])?,
    );
    let denied = fenced(&["tcp-connect", &format!("127.0.0.1:{ssh_port}")])?;
    report(&format!("SSH-like port 127.0.0.1:{ssh_port}"), &denied);
    let shell = fenced(&["exec", "/bin/sh", "-c", "echo '{\"ok\":true}'"])?;
    report("to run /bin/sh", &shell);
    step("an unfenced process tries the same port:");
    report(
        &format!("SSH-like port 127.0.0.1:{ssh_port}"),
        &helper(&art.tests, None, &["tcp-connect", &format!("127.0.0.1:{ssh_port}")])?,
    );
    step(format!("the denial as fence logged it ({}):", agent.events.display()));
    let event = crate::util::poll(Duration::from_secs(10), || {
        fs::read_to_string(&agent.events)
            .ok()?
            .lines()
            .find(|l| l.contains(&format!("\"port\":{ssh_port}")))
            .map(str::to_owned)
    })
    .context("the denial event did not arrive")?;
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&event)?)?;
    println!("{pretty}");
    drop(agent);
    step("agent stopped; the fence is lifted with it (pinned enforcement comes with the systemd install)");
    Ok(if denied["errno"] == libc::EPERM { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `fence-agent exec --identity demo-assistant -- ASSISTANT helper ACTION...`: the helper's
/// JSON report, or a note that it was killed (the exec fence's fallback).
fn fence_exec(agent: &Path, socket: &Path, assistant: &Path, action: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(agent)
        .arg("exec")
        .arg("--socket")
        .arg(socket)
        .args(["--identity", "demo-assistant", "--"])
        .arg(assistant)
        .arg("helper")
        .args(action)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last() {
        Some(line) => Ok(serde_json::from_str(line)?),
        None => Ok(
            serde_json::json!({"ok": false, "error": format!("{} {}", out.status, String::from_utf8_lossy(&out.stderr).trim())}),
        ),
    }
}
