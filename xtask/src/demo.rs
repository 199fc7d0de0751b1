//! `cargo xtask demo`: fence on an embedded policy, denying a fenced workload's connection to
//! an "SSH" port while its allowed API call goes through.

use std::{fs, net::TcpListener, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    artifacts::build_static,
    host::{Agent, Cgroup, helper},
    test::target_dir,
    util::{require_root, step},
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
    let cgroup = Cgroup::create("/fence-demo/assistant")?;
    let policy = POLICY.replace("{API_PORT}", &api_port.to_string());
    step("starting fence-agent with the demo policy:");
    for l in policy.lines().filter(|l| !l.trim_start().starts_with('#')) {
        eprintln!("    {l}");
    }
    let work = target_dir()?.join("fence-demo");
    let agent = Agent::start(&art.agent, &work, &policy, false)?;
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
    step("the fenced assistant (cgroup /fence-demo/assistant) tries:");
    report(
        &format!("internal API  127.0.0.1:{api_port}"),
        &helper(&art.tests, Some(&cgroup), &["tcp-connect", &format!("127.0.0.1:{api_port}")])?,
    );
    let denied = helper(&art.tests, Some(&cgroup), &["tcp-connect", &format!("127.0.0.1:{ssh_port}")])?;
    report(&format!("SSH-like port 127.0.0.1:{ssh_port}"), &denied);
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
    drop(cgroup);
    Ok(if denied["errno"] == libc::EPERM { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
