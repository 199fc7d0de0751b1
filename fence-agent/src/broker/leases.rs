//! Dynamic leases: each leased to a token of its own (see the module above), made one at a
//! time per (identity, secret), served again while more than half a period is left, renewed
//! in the second half of a period while in use, ended (the token revoked) on time, with its
//! grant, when the policy changes it, on `secret revoke` and at shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Broker, BrokerError, DEFAULT_LEASE, Delivery, Ended, MAX_LEASES, Ticket, Value};
use crate::{
    policy::SecretSource,
    vault::client::{Secret, TokenLife, VaultClient},
};

/// A dynamic credential the broker holds a lease of.
#[derive(Debug)]
pub struct Lease {
    pub identity: String,
    pub name: String,
    /// Where it came from: a lease whose secret the policy changed is not served again.
    pub source: SecretSource,
    pub lease_id: String,
    pub fields: BTreeMap<String, Secret>,
    pub grant: Option<String>,
    /// Revoking it revokes the lease.
    token: Secret,
    /// One period: the lease's ttl, what a renewal adds.
    period: Duration,
    /// The latest it may last (max_ttl, its grant's end).
    hard_end: Instant,
    ends: std::sync::Mutex<Instant>,
}

impl Lease {
    pub(super) fn ends(&self) -> Instant {
        *self.ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn extend_to(&self, at: Instant) {
        *self.ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }

    /// Time left.
    pub fn left(&self) -> Duration {
        self.ends().saturating_duration_since(Instant::now())
    }
}

impl Broker {
    /// A dynamic credential for `ticket`: a lease held when still good (renewed in the
    /// second half of its period), else a new one.
    pub(super) async fn fetch_dynamic(
        &self,
        vault: &VaultClient,
        ticket: &Ticket,
        key: (String, String),
        path: &str,
        ttl: Option<Duration>,
    ) -> Result<Delivery, BrokerError> {
        // One period of the lease (its ttl), and the latest it may be renewed to: the
        // broker's max_ttl and the end of the grant it depends on.
        let mut hard = self.config.max_ttl;
        if let Some((_, left)) = &ticket.grant {
            hard = hard.min(*left);
        }
        let period = ttl.unwrap_or(DEFAULT_LEASE).min(hard);
        if period < Duration::from_secs(1) {
            return Err(BrokerError::GrantEnding(ticket.spec.name.clone()));
        }
        let grant = ticket.grant.as_ref().map(|(id, _)| id.clone());
        let lock = self.making_lock(&key);
        let _making = lock.lock().await;
        let (held, count) = {
            let state = self.state.lock().await;
            let held = state
                .leases
                .iter()
                .rev()
                .find(|l| l.identity == key.0 && l.name == key.1 && l.grant == grant && l.source == ticket.spec.source)
                .cloned();
            (held, state.leases.iter().filter(|l| l.identity == key.0).count())
        };
        if let Some(l) = held {
            let left = l.left();
            // More than half a period left: served again.
            if left > l.period / 2 {
                return Ok(Delivery { value: Value::Dynamic(l), cached: true, renewed: false });
            }
            // In use in its second half: renewed by a period, up to its hard end.
            let now = Instant::now();
            if !left.is_zero() && l.hard_end > now + left {
                match vault.renew_lease(&l.token, &l.lease_id, l.period).await {
                    Ok(d) => {
                        l.extend_to(now + d.min(l.hard_end.saturating_duration_since(now)));
                        return Ok(Delivery { value: Value::Dynamic(l), cached: true, renewed: true });
                    }
                    Err(e) => {
                        tracing::warn!(identity = %l.identity, secret = %l.name, lease_id = %l.lease_id, error = %e, "renewing a lease failed; a new one is made");
                    }
                }
            }
        }
        if count >= MAX_LEASES {
            return Err(BrokerError::TooManyLeases(ticket.identity.clone()));
        }
        let display = format!("fence-{}-{}", ticket.identity, ticket.spec.name);
        let made = Instant::now();
        let life = TokenLife { ttl: period, max: hard };
        let token = vault
            .identity_token(&self.config.token_role, &self.config.policy_of(&ticket.identity), life, &display)
            .await?;
        let credential = match vault.dynamic_with(&token.token, path).await {
            Ok(c) => c,
            Err(e) => {
                let _ = vault.revoke_token(&token.token).await;
                return Err(e.into());
            }
        };
        let first =
            period.min(token.ttl).min(if credential.lease_ttl.is_zero() { period } else { credential.lease_ttl });
        let lease = Arc::new(Lease {
            identity: ticket.identity.clone(),
            name: ticket.spec.name.clone(),
            source: ticket.spec.source.clone(),
            lease_id: credential.lease_id,
            fields: credential.fields,
            grant,
            token: token.token,
            period,
            hard_end: made + hard,
            ends: std::sync::Mutex::new(made + first),
        });
        self.state.lock().await.leases.push(lease.clone());
        // The grant may have ended while the lease was made: it goes at once.
        if !self.grant_in_force(lease.grant.as_deref()) {
            let id = lease.lease_id.clone();
            self.end_leases(|l| (l.lease_id == id).then(|| "its grant ended while it was made".into())).await;
            return Err(BrokerError::GrantEnding(ticket.spec.name.clone()));
        }
        Ok(Delivery { value: Value::Dynamic(lease), cached: false, renewed: false })
    }

    /// Ends the leases `which` selects (revoked in the vault), and forgets cached values of
    /// identities no longer in `identities` when given.
    pub async fn end_leases(&self, which: impl Fn(&Lease) -> Option<String>) -> Vec<Ended> {
        self.end_leases_timed(|l| which(l).map(|why| (why, false))).await
    }

    /// As [`Broker::end_leases`]; `which` also says whether the lease's time was up.
    pub(super) async fn end_leases_timed(&self, which: impl Fn(&Lease) -> Option<(String, bool)>) -> Vec<Ended> {
        let ending: Vec<(Arc<Lease>, (String, bool))> = {
            let mut state = self.state.lock().await;
            let mut out = Vec::new();
            state.leases.retain(|l| match which(l) {
                Some(why) => {
                    out.push((l.clone(), why));
                    false
                }
                None => true,
            });
            out
        };
        let mut ended = Vec::with_capacity(ending.len());
        for (lease, (why, on_time)) in ending {
            let revoked = match &self.vault {
                Some(v) => match v.revoke_token(&lease.token).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(identity = %lease.identity, secret = %lease.name, lease_id = %lease.lease_id, error = %e, "revoking a lease failed; the vault ends it when its token expires");
                        false
                    }
                },
                None => false,
            };
            ended.push(Ended {
                identity: lease.identity.clone(),
                name: lease.name.clone(),
                lease_id: lease.lease_id.clone(),
                grant: lease.grant.clone(),
                why,
                on_time,
                revoked,
            });
        }
        if !ended.is_empty() {
            let ids: BTreeSet<&str> = ended.iter().map(|e| e.lease_id.as_str()).collect();
            self.remove_files(|w| w.lease_id.as_deref().is_some_and(|l| ids.contains(l))).await;
        }
        ended
    }
}
