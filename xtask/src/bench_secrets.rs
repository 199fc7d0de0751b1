//! The credential broker in the bench: how long a fenced workload waits for a secret on the
//! workload socket, for a KV value from the broker's cache and for a new dynamic PostgreSQL
//! credential (a vault token made, the database engine creating a login role). Measured by
//! `fence-tests bench-secrets`, on the same real OpenBao and PostgreSQL as the tests.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    bench::Env,
    report::{Table, latency_row},
};

pub fn secrets(env: &Env<'_>, rounds: u32) -> Result<Table> {
    let samples = (rounds * 3).max(10);
    let out = Command::new(&env.art.tests)
        .args(["bench-secrets", &samples.to_string()])
        .output()
        .context("running fence-tests bench-secrets")?;
    if !out.status.success() {
        bail!("fence-tests bench-secrets: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or_default()).context("bench-secrets JSON")?;
    let series = |k: &str| -> Vec<f64> {
        v[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let mut t = Table::new(
        "Credential broker",
        format!(
            "{samples} requests of each kind by a fenced process on the workload socket (the documented protocol, \
             one connection each; no process start timed): the caller attested by the kernel, its identity's policy \
             checked, the value fetched. KV: from the broker's cache. Dynamic: a new PostgreSQL credential each time \
             (the previous lease revoked first, untimed): a token made for the identity through the token role, \
             the database engine creating a login role."
        ),
        &["", "p50", "p99", "max"],
    );
    for (what, v) in [
        ("secret get, KV (cached)", series("kv_cached_ms")),
        ("secret get, dynamic (new lease)", series("dynamic_new_ms")),
    ] {
        t.row(latency_row(what, &v).context("no samples")?);
    }
    Ok(t)
}
