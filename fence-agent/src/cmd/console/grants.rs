//! `fence-agent grant approve|deny|revoke ID -c console.toml --key KEY` and `grant list -c`:
//! console decisions on grant requests through the vault (see `vault::layout::grants`). The
//! request is read from the vault, shown, and answered with a decision signed for its exact
//! path, bound to its identity, target and ttl, valid until `--valid-for` from now.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use jiff::Timestamp;

use super::{VaultArgs, printable, runtime, vault_config};
use crate::vault::{
    client::VaultClient,
    layout::grants::{Decision, REQUESTS_DIR, RequestDoc, Verdict, check_grant_id, decision_path, request_path},
    sign::SigningKey,
};

/// A console decision to sign and write.
pub struct DecideArgs<'a> {
    pub vault: &'a VaultArgs,
    pub key: &'a PathBuf,
    pub id: &'a str,
    /// The request's host; found by searching every host's requests when absent.
    pub host: Option<&'a str>,
    pub verdict: Verdict,
    pub reason: &'a str,
    pub valid_for: Duration,
}

/// Signs and writes the decision; prints what was decided.
pub fn decide(a: DecideArgs<'_>) -> anyhow::Result<ExitCode> {
    check_grant_id(a.id)?;
    let cfg = vault_config(a.vault)?;
    let key = SigningKey::load(a.key)?;
    let client = VaultClient::new(&cfg)?;
    runtime()?.block_on(async {
        client.login().await?;
        let request = find(&client, a.id, a.host).await?;
        let not_after = Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(a.valid_for).context("--valid-for")?)
            .context("--valid-for")?;
        let decision = Decision {
            id: request.id.clone(),
            host: request.host.clone(),
            identity: request.identity.clone(),
            target: request.target.clone(),
            ttl_seconds: request.ttl_seconds,
            verdict: a.verdict,
            reason: a.reason.to_owned(),
            not_after: not_after.to_string(),
        };
        let path = decision_path(&request.host, &request.id)?;
        let serial = client.kv_metadata(&path).await?.map_or(1, |m| m.current_version + 1);
        let signed = key.sign(&path, serial, &serde_json::to_string(&decision)?);
        client.kv_write(&path, &signed.to_kv(), None).await?;
        println!(
            "{} {} on {}: identity {} target {} for {}s (requested for: {}); signed by key {}, valid until {not_after}",
            a.verdict.as_str(),
            request.id,
            printable(&request.host),
            printable(&request.identity),
            printable(&request.target),
            request.ttl_seconds,
            printable(&request.reason),
            signed.key_id
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The request `id`, on `host` or on whichever host has it.
async fn find(client: &VaultClient, id: &str, host: Option<&str>) -> anyhow::Result<RequestDoc> {
    let hosts = match host {
        Some(h) => vec![h.to_owned()],
        None => client.kv_list(REQUESTS_DIR).await?.into_iter().map(|h| h.trim_end_matches('/').to_owned()).collect(),
    };
    let mut found = Vec::new();
    for h in hosts {
        let Ok(path) = request_path(&h, id) else { continue };
        if let Some(secret) = client.kv_read(&path, None).await? {
            let request: RequestDoc = serde_json::from_value(secret.data).with_context(|| path.clone())?;
            if request.id != id || request.host != h {
                bail!("{path} holds a request for {}/{}: refusing to decide on it", request.host, request.id);
            }
            found.push(request);
        }
    }
    match found.len() {
        0 => bail!("no request {id} in the vault{}", host.map(|h| format!(" for host {h}")).unwrap_or_default()),
        1 => Ok(found.remove(0)),
        _ => {
            let hosts: Vec<String> = found.iter().map(|r| printable(&r.host)).collect();
            bail!("request {id} is in the vault for several hosts ({}): name the one with --host", hosts.join(", "))
        }
    }
}

/// `grant list -c`: every request in the vault.
pub fn list(vault: &VaultArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(vault)?;
    let client = VaultClient::new(&cfg)?;
    runtime()?.block_on(async {
        client.login().await?;
        let mut all = Vec::new();
        for host in client.kv_list(REQUESTS_DIR).await? {
            let host = host.trim_end_matches('/');
            for id in client.kv_list(&format!("{REQUESTS_DIR}/{host}")).await? {
                if let Ok(path) = request_path(host, &id)
                    && let Some(s) = client.kv_read(&path, None).await?
                    && let Ok(r) = serde_json::from_value::<RequestDoc>(s.data)
                {
                    all.push(r);
                }
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            for r in &all {
                println!(
                    "{}  {}  {}  {}  {}s  {}",
                    r.id,
                    printable(&r.host),
                    printable(&r.identity),
                    printable(&r.target),
                    r.ttl_seconds,
                    printable(&r.reason)
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
