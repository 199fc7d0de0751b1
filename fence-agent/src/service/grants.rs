//! Just-in-time grants in the policy service: requests from the control socket (the caller's
//! identity from the kernel), approval, and putting a grant in force (its slot opened in the
//! kernel's grant table, then its rules compiled into the identity's maps); every step one
//! line in the audit log. How grants end is in `grant_end`.

use std::{collections::BTreeSet, time::Duration};

use fence_common::GrantState;
use jiff::Timestamp;

use super::PolicyService;
use crate::{
    audit::Trigger,
    compile::Bindings,
    config::GrantsConfig,
    control::{
        Peer,
        protocol::{GrantOp, GrantReply, GrantView},
    },
    grants::{Grant, GrantBook, Phase, Requester, audit::Action, boot_ns, new_id},
    kernel::{PolicyMaps, grant_maps::GrantKernel},
    policy::{Approval, EgressRule, GrantInForce, Grantable, Identity, PolicySet},
    service::grant_end::Ended,
};

/// Longest reason kept (bytes).
const MAX_REASON: usize = 512;

/// The approver of an `auto` target.
const AUTO_APPROVER: &str = "auto (policy)";

/// A grant's end on the boot clock (0 unless active).
fn end_of(g: &Grant) -> u64 {
    match g.phase {
        Phase::Active { expires_boot_ns, .. } => expires_boot_ns,
        _ => 0,
    }
}

/// The grants of the service: the book, the kernel's grant table, the host's limits.
pub struct Grants {
    pub book: GrantBook,
    pub kernel: Option<Box<dyn GrantKernel>>,
    pub config: GrantsConfig,
    /// Slots the live compiled policy names (not free for a new grant until an apply drops
    /// them).
    pub in_policy: BTreeSet<u16>,
    /// Whether established connections can be torn down (SOCK_DESTROY), and why not.
    pub teardown: Result<(), String>,
    /// The egress rules each slot was last compiled with (identity, rules): what a grant's end
    /// tears down, even when the policy that offered it is gone.
    pub reach: std::collections::BTreeMap<u16, (String, Vec<EgressRule>)>,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            book: GrantBook::default(),
            kernel: None,
            config: GrantsConfig::default(),
            in_policy: BTreeSet::new(),
            teardown: Err("not probed".into()),
            reach: std::collections::BTreeMap::new(),
        }
    }
}

/// Who is asking, as far as grants (and secrets) care.
pub(super) enum Caller {
    /// A process of this identity.
    Fenced(String),
    /// Root on the host, not fenced.
    Root,
    /// Anyone else.
    Other,
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Grants: the book, the kernel's table, the limits. Slots the kernel holds open that no
    /// active grant of the book has (a crash between opening one and saving the book, a book
    /// that could not be read) are closed; `rebooted` (the open grants of an earlier boot) are
    /// audited as over.
    pub fn with_grants(&mut self, grants: Grants, rebooted: Vec<Grant>) {
        self.grants = grants;
        let held: BTreeSet<u16> = self.grants.book.active().map(|(_, s)| s).collect();
        if let Some(k) = self.grants.kernel.as_mut() {
            for (slot, _) in k.open_slots().unwrap_or_default().into_iter().filter(|(s, _)| !held.contains(s)) {
                tracing::warn!(slot, "closing a grant slot no grant of the book holds");
                let _ = k.close(slot);
            }
        }
        for mut g in rebooted {
            let action = if g.phase == Phase::Pending { Action::Denied } else { Action::Expired };
            g.phase = match action {
                Action::Denied => Phase::Denied { by: "reboot".into(), reason: "the host rebooted".into() },
                _ => Phase::Expired { uses: 0 },
            };
            g.ended_at = Some(Timestamp::now().to_string());
            self.grants.book.add(g.clone());
            self.audit_grant(action, &g.id);
        }
        self.save_book();
    }

    /// `set` with each identity's grants in force added (what is compiled).
    pub(super) fn effective(&self, set: &PolicySet) -> PolicySet {
        let mut out = set.clone();
        for identity in out.identities.iter_mut().filter(|i| !i.expired) {
            let mut active: Vec<(&Grant, u16)> =
                self.grants.book.active().filter(|(g, _)| g.identity == identity.name).collect();
            // The longest-lasting first: where two grants name the same program, file or
            // socket, the kernel entry carries the first one's slot.
            active.sort_by_key(|(g, _)| std::cmp::Reverse(end_of(g)));
            let in_force: Vec<GrantInForce> = active
                .into_iter()
                .filter_map(|(g, slot)| identity.grantable(&g.target).map(|t| GrantInForce { slot, target: t.clone() }))
                .collect();
            if !in_force.is_empty() {
                identity.put_in_force(in_force);
            }
        }
        self.add_secret_file_exceptions(&mut out);
        out
    }

    /// Answers a grant operation.
    pub(super) fn grant_op(&mut self, op: GrantOp, peer: &Peer) -> Result<GrantReply, String> {
        let caller = self.caller(peer);
        match op {
            GrantOp::Request { target, ttl_seconds, reason, identity } => {
                let identity = match (&caller, identity) {
                    (Caller::Fenced(own), Some(other)) if *own != other => {
                        return Err(format!(
                            "a fenced process can only request grants for its own identity (\"{own}\"), not \"{other}\""
                        ));
                    }
                    (Caller::Fenced(own), _) => own.clone(),
                    (Caller::Root, Some(named)) => named,
                    (Caller::Root, None) => {
                        return Err("the caller is not fenced: name the identity with --identity".into());
                    }
                    (Caller::Other, _) => {
                        return Err("only a fenced process (for its own identity) or root may request a grant".into());
                    }
                };
                let id = self.request(&identity, &target, ttl_seconds, &reason, peer)?;
                Ok(self.reply(|g| g.id == id))
            }
            GrantOp::Show { id } => {
                let g = self.grants.book.get(&id).ok_or_else(|| format!("no grant {id}"))?;
                if !visible(&caller, g) {
                    return Err(format!("no grant {id}"));
                }
                Ok(self.reply(|g| g.id == id))
            }
            GrantOp::List { identity } => {
                if matches!(caller, Caller::Other) {
                    return Err("only root or a fenced process (its own identity's) may list grants".into());
                }
                Ok(self.reply(|g| visible(&caller, g) && identity.as_ref().is_none_or(|i| *i == g.identity)))
            }
            GrantOp::Approve { .. } | GrantOp::Deny { .. } | GrantOp::Revoke { .. }
                if !matches!(caller, Caller::Root) =>
            {
                // A fenced process running as root (it may reach the operators' socket where
                // the unix fence is not enforced) must not approve its own request.
                Err("only root on the host, outside every fence, may approve, deny or revoke grants".into())
            }
            GrantOp::Approve { id } => {
                let by = format!("uid {} (local)", peer.uid);
                self.approve(&id, by)?;
                Ok(self.reply(|g| g.id == id))
            }
            GrantOp::Deny { id, reason } => {
                self.deny(&id, format!("uid {} (local)", peer.uid), &reason)?;
                Ok(self.reply(|g| g.id == id))
            }
            GrantOp::Revoke { id, reason } => {
                self.revoke(&id, format!("uid {} (local)", peer.uid), &reason)?;
                Ok(self.reply(|g| g.id == id))
            }
        }
    }

    /// Each active grant's slot and end (boot clock).
    pub(super) fn grant_ends(&self) -> std::collections::BTreeMap<u16, u64> {
        self.grants.book.active().map(|(g, slot)| (slot, end_of(g))).collect()
    }

    /// The grants in force for `identity`: `g-… db (540s left)`.
    pub(super) fn granted(&self, identity: &str) -> Vec<crate::control::protocol::GrantInForce> {
        let now = boot_ns();
        self.grants
            .book
            .active()
            .filter(|(g, _)| g.identity == identity)
            .map(|(g, _)| {
                let left = match g.phase {
                    Phase::Active { expires_boot_ns, .. } => expires_boot_ns.saturating_sub(now) / 1_000_000_000,
                    _ => 0,
                };
                crate::control::protocol::GrantInForce {
                    id: g.id.clone(),
                    target: g.target.clone(),
                    seconds_left: left,
                }
            })
            .collect()
    }

    pub(super) fn caller(&self, peer: &Peer) -> Caller {
        let fenced = self.live.as_ref().and_then(|live| {
            let cgroup = peer.cgroup.as_deref()?;
            let id = Bindings::of(&live.compiled).identity_of(cgroup)?;
            live.compiled.name_of(id).map(str::to_owned)
        });
        match fenced {
            Some(name) => Caller::Fenced(name),
            None if peer.uid == 0 => Caller::Root,
            None => Caller::Other,
        }
    }

    fn reply(&self, which: impl Fn(&Grant) -> bool) -> GrantReply {
        let now = boot_ns();
        let grants = self
            .grants
            .book
            .all()
            .iter()
            .filter(|g| which(g))
            .map(|g| {
                let (expires_in, uses) = match &g.phase {
                    Phase::Active { slot, expires_boot_ns, .. } => (
                        Some(expires_boot_ns.saturating_sub(now) / 1_000_000_000),
                        self.grants.kernel.as_ref().and_then(|k| k.uses(*slot).ok()),
                    ),
                    Phase::Expired { uses } | Phase::Revoked { uses, .. } => (None, Some(*uses)),
                    _ => (None, None),
                };
                GrantView { grant: g.clone(), expires_in, uses }
            })
            .collect();
        GrantReply { grants }
    }

    /// Records a request and, for an `auto` target, puts it in force; the grant's id.
    fn request(
        &mut self,
        identity: &str,
        target: &str,
        ttl_seconds: u64,
        reason: &str,
        peer: &Peer,
    ) -> Result<String, String> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON || reason.chars().any(crate::names::is_hidden_or_control) {
            return Err(format!(
                "--reason must be 1 to {MAX_REASON} bytes of text without control, bidirectional or zero-width characters"
            ));
        }
        let approval = self.check_target(identity, target, ttl_seconds)?.approval;
        if let Some(open) =
            self.grants.book.all().iter().find(|g| g.identity == identity && g.target == target && !g.phase.ended())
        {
            return Err(format!(
                "grant {} of \"{target}\" is already {} for this identity (revoke it, or wait for its end)",
                open.id,
                open.phase.name()
            ));
        }
        if self.grants.book.open_of(identity) >= self.grants.config.max_pending {
            return Err(format!(
                "identity \"{identity}\" already has {} open grants or requests ([grants] max_pending)",
                self.grants.config.max_pending
            ));
        }
        let mut id = new_id();
        while self.grants.book.get(&id).is_some() {
            id = new_id();
        }
        let grant = Grant {
            id: id.clone(),
            identity: identity.to_owned(),
            target: target.to_owned(),
            reason: reason.to_owned(),
            ttl_seconds,
            approval,
            requested_at: Timestamp::now().to_string(),
            requested_boot_ns: boot_ns(),
            requester: Requester {
                pid: peer.pid,
                uid: peer.uid,
                executable: peer.exe.clone(),
                cgroup: peer.cgroup.clone(),
            },
            phase: Phase::Pending,
            ended_at: None,
            published: false,
            decided_version: None,
            decided_serial: None,
            approved_by: None,
        };
        self.grants.book.add(grant);
        self.audit_grant(Action::Requested, &id);
        tracing::info!(grant = %id, identity, target, ttl = ttl_seconds, approval = approval.as_str(), pid = peer.pid, uid = peer.uid, "grant requested");
        match approval {
            Approval::Auto => self.activate(&id, AUTO_APPROVER.to_owned())?,
            Approval::Console => self.save_book(),
        }
        Ok(id)
    }

    /// The checks of a request, made again when it is put in force (the policy may have
    /// changed meanwhile): the identity is in force and not expired, the target is grantable,
    /// the ttl within today's limits.
    fn check_target(&self, identity: &str, target: &str, ttl_seconds: u64) -> Result<&Grantable, String> {
        let live = self.live.as_ref().ok_or("the agent has no policy applied yet")?;
        let id_doc = live.set.identities.iter().find(|i| i.name == identity);
        let id_doc = id_doc.ok_or_else(|| format!("no identity \"{identity}\" in the policy this agent enforces"))?;
        if id_doc.expired {
            return Err(format!("identity \"{identity}\" has expired"));
        }
        let t = grantable(id_doc, target)?;
        let max = self.max_ttl(t);
        if ttl_seconds > max.as_secs() {
            return Err(format!(
                "--for {} is longer than grant \"{target}\" allows ({}; policy max_ttl {}, host cap grants.max_ttl {})",
                crate::duration::show(Duration::from_secs(ttl_seconds)),
                crate::duration::show(max),
                t.max_ttl.map_or("not set".to_owned(), crate::duration::show),
                crate::duration::show(self.grants.config.max_ttl),
            ));
        }
        Ok(t)
    }

    /// The longest grant of `t` on this host.
    fn max_ttl(&self, t: &Grantable) -> Duration {
        let cap = self.grants.config.max_ttl;
        t.max_ttl.map_or(cap, |m| m.min(cap))
    }

    /// A person approves a pending request: it is put in force.
    pub(super) fn approve(&mut self, id: &str, by: String) -> Result<(), String> {
        let g = self.grants.book.get(id).ok_or_else(|| format!("no grant {id}"))?;
        if g.phase != Phase::Pending {
            return Err(format!("grant {id} is {}, not pending", g.phase.name()));
        }
        self.activate(id, by)
    }

    /// A person denies a pending request.
    pub(super) fn deny(&mut self, id: &str, by: String, reason: &str) -> Result<(), String> {
        let g = self.grants.book.get_mut(id).ok_or_else(|| format!("no grant {id}"))?;
        if g.phase != Phase::Pending {
            return Err(format!("grant {id} is {}, not pending (an active grant is revoked)", g.phase.name()));
        }
        g.phase = Phase::Denied { by, reason: reason.to_owned() };
        g.ended_at = Some(Timestamp::now().to_string());
        self.audit_grant(Action::Denied, id);
        self.save_book();
        Ok(())
    }

    /// Ends an active grant now (a pending one is denied).
    pub(super) fn revoke(&mut self, id: &str, by: String, reason: &str) -> Result<(), String> {
        let g = self.grants.book.get(id).ok_or_else(|| format!("no grant {id}"))?;
        match g.phase {
            Phase::Pending => self.deny(id, by, reason),
            Phase::Active { .. } => {
                self.end(vec![(id.to_owned(), Ended::Revoked { by, reason: reason.to_owned() })]);
                Ok(())
            }
            ref other => Err(format!("grant {id} has already ended ({})", other.name())),
        }
    }

    /// Puts a pending request in force: the request's checks made again, the approval
    /// audited, the slot's end written to the kernel, the book saved, then the rules compiled
    /// in. Any failure denies the request (audited): nothing stays half-granted.
    pub(super) fn activate(&mut self, id: &str, approver: String) -> Result<(), String> {
        let g = self.grants.book.get(id).ok_or_else(|| format!("no grant {id}"))?.clone();
        if approver != AUTO_APPROVER {
            let by = approver.clone();
            if let Some(entry) = self.grants.book.get_mut(id) {
                entry.approved_by = Some(by);
            }
            self.audit_grant(Action::Approved, id);
        }
        let opened = self.open_slot(&g, &approver);
        let result = opened.and_then(|slot| {
            self.save_book();
            self.reapply(|_| true, Trigger::new("grant")).map(|_| slot).map_err(|e| {
                if let Some(k) = self.grants.kernel.as_mut() {
                    let _ = k.close(slot);
                }
                format!("could not be put in force: {e}")
            })
        });
        match result {
            Ok(slot) => {
                self.audit_grant(Action::Active, id);
                tracing::info!(grant = %id, identity = %g.identity, target = %g.target, slot, approver, ttl = g.ttl_seconds, "grant active");
                self.save_book();
                Ok(())
            }
            Err(why) => {
                if let Some(entry) = self.grants.book.get_mut(id) {
                    entry.phase = Phase::Denied { by: "fence-agent".into(), reason: why.clone() };
                    entry.ended_at = Some(Timestamp::now().to_string());
                }
                self.audit_grant(Action::Denied, id);
                self.save_book();
                Err(format!("grant {id}: {why}"))
            }
        }
    }

    /// Checks the request again and opens a free slot for it (its end in the kernel's table,
    /// the book's entry active); the slot.
    fn open_slot(&mut self, g: &Grant, approver: &str) -> Result<u16, String> {
        self.check_target(&g.identity, &g.target, g.ttl_seconds)?;
        let live = self.live.as_ref().ok_or("the agent has no policy applied yet")?;
        let identity_id = live.compiled.identities.iter().find(|i| i.name == g.identity).map(|i| i.id);
        let identity_id = identity_id.ok_or_else(|| format!("identity \"{}\" is not in force", g.identity))?;
        let mut busy = self.grants.in_policy.clone();
        busy.extend(self.dns.as_ref().map(|d| d.grant_slots()).unwrap_or_default());
        let slot = self.grants.book.free_slot(&busy).ok_or("every grant slot of the kernel is in use")?;
        let expires_boot_ns = boot_ns().saturating_add(g.ttl_seconds.saturating_mul(1_000_000_000));
        let kernel = self.grants.kernel.as_mut().ok_or("grants are not available: the grant table is not loaded")?;
        let state = GrantState { expires_ns: expires_boot_ns, identity: identity_id, _pad: 0 };
        kernel.open(slot, state).map_err(|e| format!("opening grant slot {slot}: {e}"))?;
        let expires_at = Timestamp::now().checked_add(g.ttl()).map(|t| t.to_string()).unwrap_or_default();
        if let Some(entry) = self.grants.book.get_mut(&g.id) {
            entry.phase = Phase::Active { slot, expires_boot_ns, expires_at, approver: approver.to_owned() };
        }
        Ok(slot)
    }

    pub(super) fn audit_grant(&mut self, action: Action, id: &str) {
        let ended = match action {
            Action::Expired => Some("expired"),
            Action::Revoked => Some("revoked"),
            Action::Denied => Some("denied"),
            _ => None,
        };
        if let Some(state) = ended {
            self.views.metrics.grant_ended(state);
        }
        let pending = self.grants.book.all().iter().filter(|g| g.phase == Phase::Pending).count();
        self.views.metrics.grants_now(pending, self.grants.book.active().count());
        let Some(g) = self.grants.book.get(id) else { return };
        let record = crate::grants::audit::record(action, g, &self.deps.hostname, Timestamp::now());
        if let Err(e) = self.views.audit.line(&record) {
            tracing::error!(error = %e, "writing the grant audit line failed");
        }
        tracing::info!(grant = %id, identity = %g.identity, target = %g.target, action = action.as_str(), "grant lifecycle");
    }

    pub(super) fn save_book(&self) {
        if let Err(e) = self.grants.book.save() {
            tracing::error!(error = %e, "saving the grant book failed; a restart would forget open grants (their kernel ends still hold)");
        }
    }
}

/// Whether `caller` may see grant `g`.
fn visible(caller: &Caller, g: &Grant) -> bool {
    match caller {
        Caller::Root => true,
        Caller::Fenced(own) => *own == g.identity,
        Caller::Other => false,
    }
}

/// The grantable target `name` of `identity`, or an error listing what may be requested.
fn grantable<'a>(identity: &'a Identity, name: &str) -> Result<&'a Grantable, String> {
    identity.grantable(name).ok_or_else(|| {
        let names: Vec<&str> = identity.grantable.iter().map(|g| g.name.as_str()).collect();
        if names.is_empty() {
            format!("identity \"{}\" has no grantable targets", identity.name)
        } else {
            format!("identity \"{}\" has no grant \"{name}\" (it may request: {})", identity.name, names.join(", "))
        }
    })
}
