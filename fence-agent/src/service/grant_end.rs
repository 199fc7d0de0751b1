//! The end of grants in the policy service: what is due (an end on the boot clock, a pending
//! request's timeout, a target or identity gone from the policy), and how a grant ends: its
//! slot closed first (the kernel refuses from that write on), its uses read, the policy
//! without it applied, the TCP connections only it allowed torn down, the lines audited.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use fence_common::PROTO_TCP;
use jiff::Timestamp;

use super::PolicyService;
use crate::{
    audit::Trigger,
    grants::{Phase, audit::Action, boot_ns, teardown},
    kernel::PolicyMaps,
    policy::EgressRule,
    service::learned::Range,
};

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Ends what is due: active grants past their end (the kernel already refuses through
    /// them), pending requests past the timeout, and grants whose target left the policy.
    pub fn grants_due(&mut self) {
        let now = boot_ns();
        let mut ended: Vec<(String, Ended)> =
            self.grants.book.due(now).into_iter().map(|id| (id, Ended::Expired)).collect();
        if let Some(live) = &self.live {
            for (g, _) in self.grants.book.active() {
                let still = live.set.identities.iter().find(|i| i.name == g.identity);
                if !ended.iter().any(|(id, _)| *id == g.id)
                    && still.is_none_or(|i| i.expired || i.grantable(&g.target).is_none())
                {
                    let reason = "the identity or the grant's target is no longer in the policy".to_owned();
                    ended.push((g.id.clone(), Ended::Revoked { by: "policy".into(), reason }));
                }
            }
        }
        if !ended.is_empty() {
            self.end(ended);
        }
        let timeout = self.grants.config.pending_timeout;
        for id in self.grants.book.stale(now, timeout) {
            let why = format!("no approval within {}", crate::duration::show(timeout));
            let _ = self.deny(&id, "timeout".into(), &why);
        }
    }

    /// Time until the next grant end or request timeout.
    pub(super) fn until_next_grant(&self) -> Option<Duration> {
        let at = self.grants.book.next_due(self.grants.config.pending_timeout)?;
        Some(Duration::from_nanos(at.saturating_sub(boot_ns())))
    }

    /// Ends grants: slots closed first (the kernel refuses from that write on), uses read,
    /// then the policy without them applied, connections torn down, lines audited.
    pub(super) fn end(&mut self, ended: Vec<(String, Ended)>) {
        let mut reaches: Vec<Reach> = Vec::new();
        for (id, how) in &ended {
            let Some(g) = self.grants.book.get(id).cloned() else { continue };
            let Some(slot) = g.slot() else { continue };
            let uses = self.grants.kernel.as_ref().and_then(|k| k.uses(slot).ok()).unwrap_or(0);
            if let Some(k) = self.grants.kernel.as_mut()
                && let Err(e) = k.close(slot)
            {
                tracing::error!(grant = %id, slot, "closing the grant slot failed (its end on the kernel clock still holds): {e}");
            }
            let rules = self.grants.reach.remove(&slot).map(|(_, r)| r).unwrap_or_default();
            let learned = self.learned_reach(&g.identity, |s| s == slot);
            reaches.push(Reach { identity: g.identity.clone(), rules, learned });
            if let Some(entry) = self.grants.book.get_mut(id) {
                entry.phase = match how {
                    Ended::Expired => Phase::Expired { uses },
                    Ended::Revoked { by, reason } => Phase::Revoked { by: by.clone(), reason: reason.clone(), uses },
                };
                entry.ended_at = Some(Timestamp::now().to_string());
            }
        }
        self.save_book();
        if let Err(e) = self.reapply(|_| true, Trigger::new("grant-end")) {
            tracing::error!(
                "removing ended grants from the policy failed (the kernel refuses through them already): {e}"
            );
        }
        for reach in reaches {
            self.tear_down(&reach);
        }
        for (id, how) in &ended {
            let action = match how {
                Ended::Expired => Action::Expired,
                Ended::Revoked { .. } => Action::Revoked,
            };
            self.audit_grant(action, id);
        }
    }

    /// The addresses identity `name` learned through names, with the ranges whose slot `keep`
    /// accepts.
    fn learned_reach(&self, name: &str, keep: impl Fn(u16) -> bool) -> Vec<(IpAddr, Vec<Range>)> {
        let id = self.live.as_ref().and_then(|l| l.compiled.identities.iter().find(|i| i.name == name)).map(|i| i.id);
        match (&self.dns, id) {
            (Some(d), Some(id)) => d.learned_reach(id, keep),
            _ => Vec::new(),
        }
    }

    /// Closes the identity's TCP connections that only the ended grant allowed: to its
    /// networks, or to addresses learned through its names, and allowed by nothing still in
    /// force (a standing or granted network, or an address learned under a live rule).
    fn tear_down(&mut self, reach: &Reach) {
        if reach.rules.is_empty() && reach.learned.is_empty() {
            return;
        }
        if let Err(why) = &self.grants.teardown {
            tracing::warn!(identity = %reach.identity, "connections opened under the ended grant stay open: {why}");
            return;
        }
        let Some(live) = &self.live else { return };
        let effective = self.effective(&live.set);
        let Some(now) = effective.identities.iter().find(|i| i.name == reach.identity) else { return };
        let live_slots: BTreeSet<u16> = now.grants_in_force.iter().map(|g| g.slot).collect();
        let still = self.learned_reach(&reach.identity, |s| s == 0 || live_slots.contains(&s));
        let dirs: Vec<_> = now.cgroups.iter().map(|c| self.deps.cgroups.dir(&c.path)).collect();
        let ended =
            |ip: IpAddr, port: u16| nets_reach(&reach.rules, ip, port) || learned_reach(&reach.learned, ip, port);
        let allowed = |ip: IpAddr, port: u16| nets_reach(&now.egress, ip, port) || learned_reach(&still, ip, port);
        let closed = teardown::close(&dirs, ended, allowed);
        if closed.closed > 0 {
            tracing::info!(identity = %reach.identity, closed = closed.closed, "closed connections opened under the ended grant");
        }
        for f in &closed.failed {
            tracing::error!(identity = %reach.identity, "could not close a connection opened under the ended grant: {f}");
        }
    }
}

/// What an ended grant reached: its rules' networks and the addresses learned through its
/// names.
struct Reach {
    identity: String,
    rules: Vec<EgressRule>,
    learned: Vec<(IpAddr, Vec<Range>)>,
}

/// Whether a TCP connection to `ip:port` is within `rules`' networks and ports.
fn nets_reach(rules: &[EgressRule], ip: IpAddr, port: u16) -> bool {
    rules.iter().any(|r| {
        r.protocols & PROTO_TCP != 0
            && r.ports.iter().any(|p| p.lo <= port && port <= p.hi)
            && r.nets.iter().any(|n| n.contains_addr(ip))
    })
}

/// Whether a TCP connection to `ip:port` is within `learned` addresses and their ranges.
fn learned_reach(learned: &[(IpAddr, Vec<Range>)], ip: IpAddr, port: u16) -> bool {
    learned
        .iter()
        .any(|(a, ranges)| *a == ip && ranges.iter().any(|r| r.2 & PROTO_TCP != 0 && r.0 <= port && port <= r.1))
}

/// How a grant ended.
pub(super) enum Ended {
    Expired,
    Revoked { by: String, reason: String },
}
