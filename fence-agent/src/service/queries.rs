//! The control socket's requests, answered from the policy in force.

use thiserror::Error;

use super::PolicyService;
use crate::{
    cgroup::{id_of, process_count},
    compile::Bindings,
    control::{
        Peer, Request,
        protocol::{
            self, DnsReply, DumpReply, Entered, IdentitiesReply, IdentityStatus, LearnedAddress, PolicyStatus,
            SelectorStatus, Source, StatusReply,
        },
    },
    kernel::PolicyMaps,
    policy::SelectorKind,
};

/// Why `fence-agent exec` was refused.
#[derive(Debug, Error)]
pub enum EnterError {
    #[error("no identity \"{0}\" in the policy this agent enforces")]
    Unknown(String),
    #[error("identity \"{0}\" has no `managed: true` selector, so processes cannot be started in it")]
    NotManaged(String),
    #[error("identity \"{0}\" has expired")]
    Expired(String),
    #[error("the caller is already fenced as identity \"{0}\"; a fenced process cannot change identity")]
    AlreadyFenced(String),
    #[error("moving pid {pid} into {path}: {source}")]
    Move { pid: u32, path: String, source: std::io::Error },
    #[error("the agent has no policy applied yet")]
    NoPolicy,
    #[error(
        "the cgroup {0} of the identity is not bound to it in the kernel (it was made again and the policy \
         could not be applied to it); nothing was run"
    )]
    NotBound(String),
    #[error(
        "identity \"{0}\" has secrets or grantable targets: entering it gives abilities, so only root may start \
         processes in it"
    )]
    Privileged(String),
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Answers a control-socket request (the peer's right to ask is checked by the server).
    pub(super) fn control(&mut self, request: Request, peer: Peer) -> Vec<u8> {
        match request {
            Request::Enter { identity } => {
                let answer = self.enter(&identity, peer.pid, peer.uid);
                match &answer {
                    Ok(e) => {
                        tracing::info!(identity = %identity, pid = peer.pid, uid = peer.uid, cgroup = %e.cgroup, "process entered identity")
                    }
                    Err(e) => tracing::warn!(identity = %identity, pid = peer.pid, uid = peer.uid, "exec refused: {e}"),
                }
                protocol::encode(&answer.map_err(|e| e.to_string()))
            }
            Request::Identities => protocol::encode(&Ok(IdentitiesReply { identities: self.identities() })),
            Request::Status => protocol::encode(&Ok(self.status())),
            Request::Dns => protocol::encode(&Ok(self.dns_reply())),
            Request::Grant(op) => protocol::encode(&self.grant_op(op, &peer)),
            Request::Reload => {
                let by = crate::audit::Trigger::by("reload", peer.pid, peer.uid).by;
                let outcome = self.change(super::Change::Reload { by });
                self.grants_due();
                protocol::encode(&match outcome {
                    super::Outcome::Applied { sequence } => {
                        Ok(protocol::Reloaded { outcome: "applied".into(), sequence: Some(sequence) })
                    }
                    super::Outcome::Unchanged => Ok(protocol::Reloaded { outcome: "unchanged".into(), sequence: None }),
                    super::Outcome::Refused(why) => Err(why),
                })
            }
            // The control server hands these to the broker.
            Request::Secret(_) => protocol::encode::<()>(&Err("secrets are answered by the broker".into())),
            Request::Dump => protocol::encode(
                &self
                    .kernel
                    .dump_live()
                    .map(|entries| DumpReply {
                        sequence: self.kernel.sequence(),
                        entries: entries.iter().map(|e| e.view()).collect(),
                    })
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// Egress by name: what each identity learned.
    fn dns_reply(&self) -> DnsReply {
        let Some(dns) = &self.dns else { return DnsReply { enabled: false, learned: Vec::new(), evictions: 0 } };
        let now = super::learned::boot_ns();
        let name_of = |id: u32| {
            self.live.as_ref().and_then(|l| l.compiled.name_of(id)).map_or_else(|| format!("#{id}"), str::to_owned)
        };
        let learned = dns
            .rows()
            .into_iter()
            .map(|r| LearnedAddress {
                identity: name_of(r.identity),
                name: r.name,
                address: r.addr.to_string(),
                expires_in: r.expires_ns.saturating_sub(now) / 1_000_000_000,
            })
            .collect();
        DnsReply { enabled: true, learned, evictions: dns.evictions() }
    }

    /// Where the policy came from, its versions, and the vault's sync state.
    pub fn status(&self) -> StatusReply {
        let live = self.live.as_ref();
        StatusReply {
            source: self.vault.as_ref().map_or(Source::Local, |v| v.status.source),
            sequence: live.map(|l| l.report.sequence),
            handled: self.handled,
            policy: live
                .map(|l| {
                    l.compiled
                        .identities
                        .iter()
                        .map(|i| PolicyStatus {
                            identity: i.name.clone(),
                            version: i.version.to_string(),
                            mode: i.mode,
                            expired: i.expired,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            vault: self.vault.as_ref().map(|v| v.status.clone()),
            fences: self.deps.fences.clone(),
        }
    }

    /// The one line `systemctl status` shows (sd_notify STATUS=): what is enforced, from where,
    /// and what went wrong since start.
    pub fn status_line(&self) -> String {
        let r = self.status();
        let live = r.policy.iter().filter(|p| !p.expired).count();
        let expired = r.policy.len() - live;
        let mut line = format!("enforcing {live} identities");
        if expired > 0 {
            line.push_str(&format!(" and {expired} expired (deny-all)"));
        }
        match r.sequence {
            Some(seq) => line.push_str(&format!(", {} policy, sequence {seq}", r.source.as_str())),
            None => line.push_str(", no policy applied yet"),
        }
        if let Some(v) = &r.vault
            && v.consecutive_failures > 0
        {
            line.push_str(&format!("; vault sync FAILING ({} polls)", v.consecutive_failures));
        }
        if r.handled.refused > 0 {
            line.push_str(&format!(
                "; {} policy change(s) refused since start (journalctl -u fence-agent -p err)",
                r.handled.refused
            ));
        }
        line
    }

    /// Moves process `pid` into identity `name`'s managed cgroup; returns the cgroup path.
    pub fn enter(&mut self, name: &str, pid: u32, uid: u32) -> Result<Entered, EnterError> {
        let live = self.live.as_ref().ok_or(EnterError::NoPolicy)?;
        let identity =
            live.set.identities.iter().find(|i| i.name == name).ok_or_else(|| EnterError::Unknown(name.to_owned()))?;
        let managed = identity
            .cgroups
            .iter()
            .find(|c| c.kind == SelectorKind::Managed)
            .ok_or_else(|| EnterError::NotManaged(name.to_owned()))?;
        if identity.expired {
            return Err(EnterError::Expired(name.to_owned()));
        }
        // Entering a fence only takes abilities away, unless the identity has some to give: its
        // secrets (the broker hands them to its processes) or grants (its processes may ask).
        if uid != 0 && (!identity.secrets.is_empty() || !identity.grantable.is_empty()) {
            return Err(EnterError::Privileged(name.to_owned()));
        }
        let bindings = Bindings::of(&live.compiled);
        if let Some(current) = crate::cgroup::Cgroups::path_of_process(&pid.to_string())
            && let Some(other) = bindings.identity_of(&current).and_then(|id| live.compiled.name_of(id))
            && other != name
        {
            return Err(EnterError::AlreadyFenced(other.to_owned()));
        }
        let path = managed.path.clone();
        let dir = self.deps.cgroups.dir(&path);
        let made = crate::cgroup::make_managed(&dir);
        made.map_err(|source| EnterError::Move { pid, path: path.clone(), source })?;
        // The cgroup may have been made again since the last apply (its parent unit restarted,
        // taking the delegated subtree with it): the kernel must know the new one, and its
        // programs be attached to it, before anything is moved in.
        let bound = |s: &Self| {
            let id = crate::cgroup::id_of(&dir).ok();
            id.is_some() && s.live.as_ref().and_then(|l| l.resolved.cgroup_ids.get(&path)).copied() == id
        };
        if !bound(self) {
            if let Err(e) = self.reapply(|_| false, crate::audit::Trigger::new("managed-cgroup")) {
                tracing::error!(error = %e, cgroup = %path, "binding a managed cgroup made again failed");
            }
            if !bound(self) {
                return Err(EnterError::NotBound(path));
            }
        }
        match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => Ok(Entered { cgroup: path, move_self: false }),
            // Refused by the kernel for the agent but not for root itself (see
            // `Entered::move_self`): the caller moves itself, then checks where it is.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) && uid == 0 => {
                Ok(Entered { cgroup: path, move_self: true })
            }
            Err(source) => Err(EnterError::Move { pid, path, source }),
        }
    }

    /// Every identity of the live policy and its state on this host.
    pub fn identities(&self) -> Vec<IdentityStatus> {
        let Some(live) = self.live.as_ref() else { return Vec::new() };
        live.set
            .identities
            .iter()
            .map(|i| {
                let selectors: Vec<SelectorStatus> = i
                    .cgroups
                    .iter()
                    .map(|cg| {
                        let dir = self.deps.cgroups.dir(&cg.path);
                        let (kind, unit) = match &cg.kind {
                            SelectorKind::Cgroup => ("cgroup", None),
                            SelectorKind::Unit(u) => ("unit", Some(u.clone())),
                            SelectorKind::Managed => ("managed", None),
                        };
                        SelectorStatus {
                            kind: kind.to_owned(),
                            unit,
                            cgroup: cg.path.clone(),
                            cgroup_id: id_of(&dir).ok(),
                            processes: process_count(&dir),
                        }
                    })
                    .collect();
                let programs = live.resolved.identities.get(&i.name).map_or(0, |r| r.exec.len());
                IdentityStatus {
                    name: i.name.clone(),
                    owner: i.owner.clone(),
                    purpose: i.purpose.clone(),
                    mode: i.mode,
                    policy_version: i.version.to_string(),
                    created: i.created.map(|t| t.to_string()),
                    expires: i.expires.map(|t| t.to_string()),
                    expired: i.expired,
                    processes: selectors.iter().map(|s| s.processes).sum(),
                    selectors,
                    egress_rules: i.egress.len(),
                    standing: crate::grants::reach::Standing::of(i),
                    grantable: i.grantable.iter().map(crate::grants::reach::GrantableTarget::of).collect(),
                    granted: self.granted(&i.name),
                    exec_programs: i.exec.as_ref().map(|_| programs),
                }
            })
            .collect()
    }
}
