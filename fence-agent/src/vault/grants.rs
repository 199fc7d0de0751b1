//! The vault task's part of console approval (see `layout::grants`): after each poll it
//! writes the requests the policy service hands it, reads the decisions on the grants it
//! watches, checks each decision's signature against the agent's signing keys (a decision
//! that is unsigned, or signed by a key the agent does not know, or for another path, is
//! refused), and hands the result to the policy service, which binds it to the grant.

use crate::{
    service::{ServiceHandle, grant_vault::Signed},
    vault::{
        layout::{
            SignedDocument,
            grants::{Decision, decision_path, request_path},
        },
        sync::Syncer,
    },
};

/// One round: publish, then read decisions. Best effort: a failure is logged and retried at
/// the next poll.
pub async fn round(syncer: &Syncer, service: &ServiceHandle) {
    let Some(work) = service.grant_work().await else { return };
    if work.publish.is_empty() && work.watch.is_empty() {
        return;
    }
    let client = syncer.client();
    let mut published = Vec::new();
    for request in &work.publish {
        let Ok(path) = request_path(&work.host, &request.id) else { continue };
        let Ok(data) = serde_json::to_value(request) else { continue };
        match client.kv_write(&path, &data, None).await {
            Ok(_) => published.push(request.id.clone()),
            Err(e) => {
                tracing::warn!(grant = %request.id, error = %e, "publishing the grant request to the vault failed (retried at the next poll)")
            }
        }
    }
    if !published.is_empty() {
        service.grants_published(published);
    }
    for (id, seen) in &work.watch {
        let Ok(path) = decision_path(&work.host, id) else { continue };
        let secret = match client.kv_read(&path, None).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(grant = %id, error = %e, "reading the console's decision failed (retried at the next poll)");
                continue;
            }
        };
        if seen.is_some_and(|v| v >= secret.version) {
            continue;
        }
        let decision = checked(syncer, &path, &secret.data);
        service.grant_decided(id.clone(), secret.version, decision);
    }
}

/// The decision at `path`, its signature checked: the decision and the signing key's id.
fn checked(syncer: &Syncer, path: &str, data: &serde_json::Value) -> Result<Signed, String> {
    if !syncer.verifier().is_enforcing() {
        return Err("console decisions need signing_keys in [vault] (none are configured)".into());
    }
    let doc = SignedDocument::from_kv(data).map_err(|e| e.to_string())?;
    syncer.verifier().verify(path, &doc).map_err(|e| e.to_string())?;
    let decision: Decision = serde_json::from_str(&doc.document).map_err(|e| format!("{path}: not a decision: {e}"))?;
    Ok(Signed { decision, key_id: doc.key_id, serial: doc.serial })
}
