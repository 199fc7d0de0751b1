//! Console approval through the vault: the policy service tells the vault task which grant
//! requests to publish and which decisions to look for, and acts on the decisions the task
//! found (their signatures already checked against the agent's signing keys). Here each
//! decision is bound to this host, the request's identity, target and ttl, its `not_after`,
//! and the grant's state: anything else is refused, logged and audited, and changes nothing.

use jiff::Timestamp;

use super::PolicyService;
use crate::{
    grants::{Phase, audit::Action},
    kernel::PolicyMaps,
    policy::Approval,
    vault::layout::grants::{Decision, RequestDoc, Verdict},
};

/// A console decision whose signature the vault task checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub decision: Decision,
    /// The id of the key that signed it.
    pub key_id: String,
    /// The document's signed serial.
    pub serial: u64,
}

/// What the vault task should do for grants at its next poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantWork {
    /// This host's name in the vault.
    pub host: String,
    /// Requests to write for consoles.
    pub publish: Vec<RequestDoc>,
    /// Grants whose decision to read, with the KV version already acted on.
    pub watch: Vec<(String, Option<u64>)>,
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Pending console requests not yet published, and every pending console request or
    /// active grant (a console may revoke it).
    pub(super) fn grant_work(&self) -> GrantWork {
        let Some(vault) = &self.vault else { return GrantWork::default() };
        let host = vault.host.hostname.clone();
        let mut work = GrantWork { host: host.clone(), ..GrantWork::default() };
        for g in self.grants.book.all() {
            let pending_console = g.phase == Phase::Pending && g.approval == Approval::Console;
            if pending_console && !g.published {
                work.publish.push(RequestDoc {
                    id: g.id.clone(),
                    host: host.clone(),
                    identity: g.identity.clone(),
                    target: g.target.clone(),
                    ttl_seconds: g.ttl_seconds,
                    reason: g.reason.clone(),
                    requested_at: g.requested_at.clone(),
                    requester_pid: g.requester.pid,
                    requester_uid: g.requester.uid,
                    requester_executable: g.requester.executable.clone(),
                });
            }
            if pending_console || matches!(g.phase, Phase::Active { .. }) {
                work.watch.push((g.id.clone(), g.decided_version));
            }
        }
        work
    }

    pub(super) fn grants_published(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(g) = self.grants.book.get_mut(id) {
                g.published = true;
            }
        }
        self.save_book();
    }

    /// Acts on a console's decision on grant `id`.
    pub(super) fn grant_decided(&mut self, id: &str, version: u64, decision: Result<Signed, String>) {
        let Some(g) = self.grants.book.get_mut(id) else { return };
        if g.decided_version.is_some_and(|v| v >= version) {
            return;
        }
        g.decided_version = Some(version);
        let highest = g.decided_serial;
        let checked = decision.and_then(|s| match highest {
            Some(h) if s.serial <= h => {
                Err(format!("its serial {} is not above {h}, already acted on (superseded or replayed)", s.serial))
            }
            _ => self.bound(id, &s.decision).map(|()| s),
        });
        if let (Ok(s), Some(g)) = (&checked, self.grants.book.get_mut(id)) {
            g.decided_serial = Some(s.serial);
        }
        let result = match checked {
            Err(why) => Err(why),
            Ok(Signed { decision: d, key_id, .. }) => {
                let by = format!("console key {key_id}");
                match d.verdict {
                    Verdict::Approve => self.approve(id, by),
                    Verdict::Deny => self.deny(id, by, &d.reason),
                    Verdict::Revoke => self.revoke(id, by, &d.reason),
                }
            }
        };
        match result {
            Ok(()) => tracing::info!(grant = %id, version, "acted on the console's decision"),
            Err(why) => {
                tracing::error!(grant = %id, version, "refused a console decision (nothing changed): {why}");
                self.audit_refused_decision(id, &why);
            }
        }
        self.save_book();
    }

    /// Whether decision `d` is for this grant, on this host, still valid, and fits its state.
    fn bound(&self, id: &str, d: &Decision) -> Result<(), String> {
        let g = self.grants.book.get(id).ok_or_else(|| format!("no grant {id}"))?;
        let host = self.vault.as_ref().map(|v| v.host.hostname.as_str()).unwrap_or_default();
        let mismatch = |what: &str, want: &str, got: &str| format!("it is for {what} {got:?}, not {want:?}");
        if d.id != id {
            return Err(mismatch("grant", id, &d.id));
        }
        if d.host != host {
            return Err(mismatch("host", host, &d.host));
        }
        if d.identity != g.identity || d.target != g.target {
            return Err(mismatch(
                "identity/target",
                &format!("{}/{}", g.identity, g.target),
                &format!("{}/{}", d.identity, d.target),
            ));
        }
        if d.ttl_seconds != g.ttl_seconds {
            return Err(format!("its ttl {}s is not the requested {}s", d.ttl_seconds, g.ttl_seconds));
        }
        let not_after: Timestamp = d.not_after.parse().map_err(|e| format!("not_after {:?}: {e}", d.not_after))?;
        if not_after < Timestamp::now() {
            return Err(format!("it was valid until {not_after} (stale or replayed)"));
        }
        match (d.verdict, &g.phase) {
            (Verdict::Approve | Verdict::Deny, Phase::Pending)
            | (Verdict::Revoke, Phase::Active { .. } | Phase::Pending) => Ok(()),
            (v, p) => Err(format!("a decision to {} a grant that is {} (replayed?)", v.as_str(), p.name())),
        }
    }

    fn audit_refused_decision(&mut self, id: &str, why: &str) {
        let Some(g) = self.grants.book.get(id) else { return };
        let mut record =
            crate::grants::audit::record(Action::DecisionRefused, g, &self.deps.hostname, Timestamp::now());
        record.head.message = format!("{}: {why}", record.head.message);
        record.fence.grant.why = Some(why.to_owned());
        if let Err(e) = self.views.audit.line(&record) {
            tracing::error!(error = %e, "writing the grant audit line failed");
        }
    }
}
