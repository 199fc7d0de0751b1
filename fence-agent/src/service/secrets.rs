//! The broker's questions to the policy service: who is asking (the kernel's answer, mapped
//! to an identity by the policy in force), may that identity have this secret now (its policy,
//! the grant it depends on), and the broker's lines in the audit log (the service owns it).
//! After every message the service publishes what the broker must follow ([`BrokerView`]):
//! which secrets each identity may have and which grants are in force.

use std::time::Duration;

use super::{PolicyService, grants::Caller};
use crate::{
    broker::{BrokerView, Ticket, audit::SecretRecord},
    control::Peer,
    grants::{Phase, boot_ns},
    kernel::PolicyMaps,
    policy::{PolicySet, glob::PathGlob},
};

/// Why a request is refused, for the caller, the audit line and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The caller's identity, when it is fenced.
    pub identity: Option<String>,
    /// `kv` or `dynamic`, when the identity has a secret of that name.
    pub kind: &'static str,
    pub why: String,
    /// The secret depends on a grant that is not in force.
    pub needs_grant: bool,
    /// The identity's number and policy version (for the event); 0 when not fenced.
    pub identity_id: u32,
    pub policy_version: u32,
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Whether `peer` (attested) may have secret `name`, and what to fetch.
    pub(super) fn secret_ticket(&self, name: &str, peer: &Peer) -> Result<Ticket, Refusal> {
        let live = self.live.as_ref();
        let (identity_id, policy_version) = live
            .and_then(|l| {
                let id = crate::compile::Bindings::of(&l.compiled).identity_of(peer.cgroup.as_deref()?)?;
                let name = l.compiled.name_of(id)?;
                let version = l.set.identities.iter().find(|i| i.name == name).map(|i| i.version.short_id());
                Some((id, version.unwrap_or_default()))
            })
            .unwrap_or_default();
        let refuse = |identity: Option<&str>, kind, why: String, needs_grant| Refusal {
            identity: identity.map(str::to_owned),
            kind,
            why,
            needs_grant,
            identity_id,
            policy_version,
        };
        let identity = match self.caller(peer) {
            Caller::Fenced(name) => name,
            _ => {
                let why = "only a fenced process may ask for a secret, and only for its own identity's".to_owned();
                return Err(refuse(None, "", why, false));
            }
        };
        let live = live.ok_or_else(|| refuse(Some(&identity), "", "no policy applied yet".into(), false))?;
        let doc = live.set.identities.iter().find(|i| i.name == identity);
        let doc = doc.ok_or_else(|| refuse(Some(&identity), "", "the identity is not in the policy".into(), false))?;
        if doc.expired {
            return Err(refuse(Some(&identity), "", format!("identity \"{identity}\" has expired"), false));
        }
        let Some(spec) = doc.secret(name) else {
            let why = format!("identity \"{identity}\" has no secret named \"{name}\" in its policy");
            return Err(refuse(Some(&identity), "", why, false));
        };
        let grant = match &spec.grant {
            None => None,
            Some(target) => {
                let now = boot_ns();
                let active = self.grants.book.active().find_map(|(g, _)| match g.phase {
                    Phase::Active { expires_boot_ns, .. }
                        if g.identity == identity && &g.target == target && expires_boot_ns > now =>
                    {
                        Some((g.id.clone(), Duration::from_nanos(expires_boot_ns - now)))
                    }
                    _ => None,
                });
                match active {
                    Some(a) => Some(a),
                    None => {
                        let why = format!(
                            "secret \"{name}\" is given only while a grant of \"{target}\" is in force \
                             (fence-agent grant request {target} --for ... --reason ...)"
                        );
                        return Err(refuse(Some(&identity), spec.source.kind(), why, true));
                    }
                }
            }
        };
        Ok(Ticket { identity, spec: spec.clone(), grant })
    }

    /// Each identity with secrets may read its own directory of the broker's files (the whole
    /// directory is in the host's protected set). The directory is made here, before it is
    /// resolved, so that the exception is in the kernel before the first file.
    pub(super) fn add_secret_file_exceptions(&self, set: &mut PolicySet) {
        let Some(dir) = &self.deps.secret_files else { return };
        for identity in set.identities.iter_mut().filter(|i| !i.secrets.is_empty() && !i.expired) {
            let own = dir.join(&identity.name);
            if let Err(e) = crate::broker::files::make_dir(&own) {
                tracing::warn!(dir = %own.display(), error = %e, "cannot make an identity's secret file directory");
            }
            match PathGlob::parse(&format!("{}/**", own.display())) {
                Ok(g) => identity.file_exceptions.push(g),
                Err(e) => tracing::warn!(dir = %own.display(), error = %e, "secret file directory"),
            }
        }
    }

    /// One broker line in the audit log.
    pub(super) fn audit_secret(&mut self, record: &SecretRecord) {
        if let Err(e) = self.views.audit.line(record) {
            tracing::error!(error = %e, "writing the secret audit line failed");
        }
    }

    /// What the broker follows, now.
    pub(super) fn broker_view(&self) -> BrokerView {
        let mut view = BrokerView::default();
        if let Some(live) = &self.live {
            for i in live.set.identities.iter().filter(|i| !i.expired) {
                view.secrets.extend(i.secrets.iter().map(|s| ((i.name.clone(), s.name.clone()), s.clone())));
            }
        }
        view.grants = self.grants.book.active().map(|(g, _)| g.id.clone()).collect();
        // The latest ends only: enough for the broker, which looks as soon as a grant ends.
        let expired = self.grants.book.all().iter().rev().filter(|g| matches!(g.phase, Phase::Expired { .. }));
        view.ended_on_time = expired.take(64).map(|g| g.id.clone()).collect();
        view
    }

    /// Publishes the broker's view when it changed.
    pub(super) fn publish_broker_view(&self) {
        if let Some(tx) = &self.broker_view {
            let view = self.broker_view();
            tx.send_if_modified(|old| {
                if *old == view {
                    false
                } else {
                    *old = view;
                    true
                }
            });
        }
    }
}
