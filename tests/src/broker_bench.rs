//! `fence-tests bench-secrets COUNT`: the broker's latency for `cargo xtask bench`, on the same
//! real OpenBao and PostgreSQL as its tests. A fenced process asks on the workload socket
//! directly (the documented protocol; no process start timed): a KV secret from the broker's
//! cache, and a dynamic PostgreSQL credential with a new lease each time (the previous one
//! revoked, untimed, before each). Prints one JSON line: `{"kv_cached_ms":[..],"dynamic_new_ms":[..]}`.

use std::{process::ExitCode, time::Duration};

use serde_json::json;

use crate::{
    agent::{Agent, agent_binary},
    bao::random_hex,
    broker::{broker_vault, database_engine, identity, push},
    env::TestCgroup,
    helper,
    postgres::Postgres,
    vault_sync::Setup,
};

pub fn main(args: &[String]) -> ExitCode {
    let count: usize = args.first().and_then(|c| c.parse().ok()).unwrap_or(20).max(1);
    let pg = Postgres::start();
    let setup = Setup::new("bench-secrets");
    database_engine(&setup.bao, &pg);
    setup.bao.kv_put("bench/key", &json!({ "api_key": random_hex(16) }));
    broker_vault(
        &setup,
        &[(
            "bench-bot",
            r#"path "secret/data/bench/key" { capabilities = ["read"] }
path "database/creds/ai-readonly" { capabilities = ["read"] }"#,
        )],
    );
    let cg = TestCgroup::new("bench-secrets");
    let config = format!("{}[broker]\ncache_ttl = \"1h\"\n", setup.agent_config);
    let agent = Agent::start_with("bench-secrets", "schema: 1\nidentities: []\n", &config);
    let sections = "    secrets:\n      - {name: key, kv: {path: bench/key, key: api_key}}\n      - \
                    {name: db, dynamic: {role: database/creds/ai-readonly, ttl: 10m}}\n";
    push(&setup, &agent, &identity("bench-bot", &cg, sections), &["bench-bot"]);
    let workload = agent.workload.display().to_string();
    let rtt = |name: &str, n: usize| -> Vec<f64> {
        let o = helper::run(Some(&cg), &["secret-rtt", &workload, name, &n.to_string()]);
        o.assert_ok("secret-rtt");
        o.raw["ms"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    rtt("key", 1); // fills the cache
    let kv = rtt("key", count);
    let mut dynamic = Vec::with_capacity(count);
    for _ in 0..count {
        let out = std::process::Command::new(agent_binary())
            .args(["secret", "revoke", "db", "--identity", "bench-bot", "--socket"])
            .arg(&agent.socket)
            .output()
            .expect("secret revoke");
        assert!(out.status.success(), "secret revoke: {}", String::from_utf8_lossy(&out.stderr));
        dynamic.extend(rtt("db", 1));
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{}", json!({ "kv_cached_ms": kv, "dynamic_new_ms": dynamic }));
    ExitCode::SUCCESS
}
