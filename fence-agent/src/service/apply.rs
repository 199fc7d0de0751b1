//! The apply pipeline: resolve on this host, compile, apply to the kernel and the user-space
//! views together or not at all, audit, log, count.

use std::{collections::BTreeSet, path::PathBuf};

use jiff::Timestamp;
use thiserror::Error;

use super::{Change, Outcome, PolicyService};
use crate::{
    audit::{Actor, Trigger, changes},
    compile::{CompiledPolicy, compile},
    control::protocol::Source,
    fences::bindings::{attach_points, scope},
    fences::files::fanotify::FanotifyError,
    kernel::{ApplyReport, MapEntry, MapsError, PolicyMaps, loader::LoadError},
    policy::{PolicyErrors, PolicySet, glob::PathGlob, load_paths, validate},
    protect::HostProtection,
    resolve::Resolved,
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    #[error("applying the policy to the kernel failed (the previous policy stays in force): {0}")]
    Kernel(#[from] MapsError),
    #[error("updating the fanotify file fence failed (the previous policy stays in force): {0}")]
    Files(#[from] FanotifyError),
    #[error("attaching fence's cgroup programs failed (the previous policy stays in force): {0}")]
    Attach(#[from] LoadError),
    #[error("{0}")]
    Vault(String),
}

/// Protected files and `.env` roots added to the configured ones (by the vault's host
/// assignment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub files: Vec<PathGlob>,
    pub env_roots: Vec<PathBuf>,
}

/// A policy ready to be applied.
pub(super) struct Candidate {
    pub set: PolicySet,
    pub extra: Extra,
    pub source: Source,
    /// Resolve every path afresh (a new policy or a reload), not only what changed on disk.
    pub fresh: bool,
}

/// The policy in force.
pub(super) struct Live {
    pub set: PolicySet,
    pub extra: Extra,
    pub resolved: Resolved,
    pub compiled: CompiledPolicy,
    pub report: ApplyReport,
    pub source: Source,
}

/// Reads, parses and validates the policy files at `paths` for this host.
pub fn load_policy(paths: &[PathBuf], cgroups: &dyn crate::policy::CgroupResolver) -> Result<PolicySet, PolicyErrors> {
    let docs = load_paths(paths)?;
    validate(&docs, Some(cgroups), Timestamp::now())
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// Start-up: the vault's verified last-known-good cache if there is one and it applies,
    /// else the local policy files. An error here stops the agent (exit 2 for policy errors).
    pub fn start(
        &mut self,
        local: Result<PolicySet, PolicyErrors>,
        cache: Option<crate::vault::sync::Cache>,
    ) -> Result<(), ApplyError> {
        if let Some(cache) = cache {
            let applied = self
                .vault_candidate(&cache.set, Source::Cache)
                .and_then(|(candidate, rules)| self.apply(candidate, Trigger::new("startup")).map(|_| rules));
            match applied {
                Ok(rules) => {
                    tracing::info!(documents = cache.set.versions().len(), saved = %cache.saved_at, "enforcing the last-known-good policy from the vault cache until the vault answers");
                    self.adopt_cache(cache, rules);
                    return Ok(());
                }
                Err(e) => tracing::error!("the cached vault policy cannot be applied; enforcing the local policy: {e}"),
            }
        }
        let set = local?;
        let candidate = Candidate { set, extra: Extra::default(), source: Source::Local, fresh: true };
        self.apply(candidate, Trigger::new("startup")).map(|_| ())
    }

    /// Handles a change: applied, unchanged or refused (the previous policy stays).
    pub(super) fn change(&mut self, change: Change) -> Outcome {
        let kind = change.kind();
        let result = match change {
            Change::Reload { by } => self.reload(by),
            Change::Vault(set) => self.vault_set(*set),
            Change::Files(dirs) => self.files_changed(dirs),
            Change::Expiry => self.expire_due(Timestamp::now()),
        };
        match result {
            Ok(Some(report)) => {
                self.handled.applied += 1;
                if kind == "file-change" {
                    tracing::info!(
                        sequence = report.sequence,
                        "files named by the policy changed on disk; applied the new resolution"
                    );
                }
                Outcome::Applied { sequence: report.sequence }
            }
            Ok(None) => {
                self.handled.unchanged += 1;
                Outcome::Unchanged
            }
            Err(e) => {
                self.handled.refused += 1;
                self.views.metrics.policy_rejected();
                let live = self.live.as_ref().map(|l| l.report.sequence).unwrap_or_default();
                match kind {
                    "reload" => {
                        tracing::error!(live_sequence = live, "reload refused; the previous policy stays in force: {e}")
                    }
                    "vault" => tracing::error!("the vault's policy is refused; the previous one stays in force: {e}"),
                    _ => tracing::error!(
                        trigger = kind,
                        "applying a policy change failed; the previous policy stays in force: {e}"
                    ),
                }
                Outcome::Refused(e.to_string())
            }
        }
    }

    /// SIGHUP: the vault's set in force resolved again, or the local files.
    fn reload(&mut self, by: Option<Actor>) -> Result<Option<ApplyReport>, ApplyError> {
        let trigger = Trigger { kind: "reload", by };
        if let Some(set) = self.vault_set_in_force() {
            tracing::info!(by = %by_text(&trigger), "SIGHUP: applying the vault's policy again (the local policy files are not used while it is in force)");
            let source = self.live.as_ref().map_or(Source::Vault, |l| l.source);
            let (candidate, _) = self.vault_candidate(&set, source)?;
            return self.apply(candidate, trigger).map(Some);
        }
        tracing::info!(by = %by_text(&trigger), "SIGHUP: reloading policy");
        let set = load_policy(&self.deps.policy_paths, &self.deps.cgroups)?;
        let candidate = Candidate { set, extra: Extra::default(), source: Source::Local, fresh: true };
        self.apply(candidate, trigger).map(Some)
    }

    /// Resolves the live policy again where files changed; `None` when nothing changed, so
    /// the kernel is not touched.
    fn files_changed(&mut self, dirs: Option<BTreeSet<PathBuf>>) -> Result<Option<ApplyReport>, ApplyError> {
        match &dirs {
            Some(d) => self.resolver.invalidate(d),
            None => self.resolver.clear(),
        }
        self.reapply(|_| false, Trigger::new("file-change"))
    }

    /// Marks identities whose expiry has passed as expired (deny-all) and applies; `None`
    /// when none did.
    pub(super) fn expire_due(&mut self, now: Timestamp) -> Result<Option<ApplyReport>, ApplyError> {
        self.reapply(|set| mark_expired(set, now), Trigger::new("expiry"))
    }

    /// The live policy changed by `edit` (which says whether it changed anything), resolved
    /// with what the resolver knows; applied if anything differs.
    pub(super) fn reapply(
        &mut self,
        edit: impl FnOnce(&mut PolicySet) -> bool,
        trigger: Trigger,
    ) -> Result<Option<ApplyReport>, ApplyError> {
        let Some(live) = &self.live else { return Ok(None) };
        let mut set = live.set.clone();
        let edited = edit(&mut set);
        let candidate = Candidate { set, extra: live.extra.clone(), source: live.source, fresh: false };
        let host = self.host_with(&candidate.extra);
        let effective = self.effective(&candidate.set);
        let mut resolved = self.resolve_watched(&effective, &host);
        self.held.update(&mut resolved);
        if !edited && self.live.as_ref().is_some_and(|l| l.resolved == resolved) {
            return Ok(None);
        }
        self.apply_resolved(candidate, effective, resolved, trigger).map(Some)
    }

    /// The next moment an identity of the live policy expires.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        let live = self.live.as_ref()?;
        live.set.identities.iter().filter(|i| !i.expired).filter_map(|i| i.expires).min()
    }

    /// Resolves `effective` on this host, with every directory it read watched before the
    /// result is used. A directory watched for the first time is read again once its watch is
    /// in place: a file created in it between the first read and the watch would otherwise
    /// go unseen until something else changed there. Directories that only the new read
    /// finds are watched and read in turn, a few rounds; past that, each was created under a
    /// directory already watched, whose event brings another resolution.
    fn resolve_watched(&mut self, effective: &PolicySet, host: &HostProtection) -> Resolved {
        let mut resolved = self.resolver.resolve(effective, host, self.deps.cgroups.root());
        let Some(w) = &mut self.views.watcher else { return resolved };
        for _ in 0..4 {
            let new = w.add(&resolved.watch, &resolved.watch_files);
            if new.is_empty() {
                break;
            }
            self.resolver.invalidate(&new);
            resolved = self.resolver.resolve(effective, host, self.deps.cgroups.root());
        }
        resolved
    }

    /// The configured protected set plus `extra`.
    fn host_with(&self, extra: &Extra) -> HostProtection {
        let mut host = self.deps.host.clone();
        host.files.extend(extra.files.iter().cloned());
        host.env_roots.extend(extra.env_roots.iter().cloned());
        host
    }

    /// Resolves `candidate` on this host and applies it.
    pub(super) fn apply(&mut self, candidate: Candidate, trigger: Trigger) -> Result<ApplyReport, ApplyError> {
        if candidate.fresh {
            self.resolver.clear();
        }
        let host = self.host_with(&candidate.extra);
        let effective = self.effective(&candidate.set);
        let mut resolved = self.resolve_watched(&effective, &host);
        let checkpoint = self.held.checkpoint();
        self.held.update(&mut resolved);
        let result = self.apply_resolved(candidate, effective, resolved, trigger);
        if result.is_err() {
            self.held.rollback(checkpoint);
        }
        result
    }

    /// Compiles and applies: the kernel and the user-space views change together, or nothing
    /// changes.
    /// `effective` is the candidate's set with the grants in force (what was resolved and is
    /// compiled).
    fn apply_resolved(
        &mut self,
        candidate: Candidate,
        effective: PolicySet,
        resolved: Resolved,
        trigger: Trigger,
    ) -> Result<ApplyReport, ApplyError> {
        let ids_before = self.ids.clone();
        let mut compiled = match compile(&effective, &resolved, &mut self.ids) {
            Ok(mut c) => {
                c.grant_ends = self.grant_ends();
                c
            }
            Err(e) => {
                self.ids = ids_before;
                return Err(e.into());
            }
        };
        // The directory learns new identities and paths before the kernel can report on them;
        // it goes back if the apply fails.
        let directory_before = {
            let mut dir = self.views.directory.write().unwrap_or_else(|p| p.into_inner());
            let before = dir.clone();
            dir.update(&compiled);
            dir.set_objects(resolved.names());
            before
        };
        let undo = |s: &mut Self, added: &[String]| {
            s.ids = ids_before.clone();
            *s.views.directory.write().unwrap_or_else(|p| p.into_inner()) = directory_before.clone();
            if let Some(a) = &mut s.attacher {
                for p in added {
                    a.detach(p);
                }
            }
        };
        // Each identity's resolver listens before the identity is fenced.
        if let Some(dns) = &mut self.dns {
            for problem in dns.prepare(&compiled) {
                tracing::error!("{problem}");
            }
        }
        // The programs go on the new subtrees before the policy says they are fenced.
        let wanted = attach_points(&candidate.set, |p| self.deps.cgroups.dir(p).is_dir());
        let added = match self.attach(&wanted) {
            Ok(added) => added,
            Err((added, e)) => {
                undo(self, &added);
                return Err(e.into());
            }
        };
        // Tasks outside these subtrees are unfenced in this generation without a lookup.
        let cgroups = &self.deps.cgroups;
        compiled.entries.push(MapEntry::Scope(scope(&wanted, |p| crate::cgroup::id_of(&cgroups.dir(p)).ok())));
        let prepared = match self.views.files.as_ref().map(|f| f.prepare(&compiled, &resolved, &self.held)) {
            Some(Err(e)) => {
                undo(self, &added);
                return Err(e.into());
            }
            Some(Ok(group)) => Some(group),
            None => None,
        };
        let cgroups = self.deps.cgroups.clone();
        let current = move |path: &str| crate::cgroup::id_of(&cgroups.dir(path)).ok();
        let report = match self.kernel.apply_following(&compiled.entries, &current) {
            Ok(r) => r,
            Err(e) => {
                drop(prepared);
                undo(self, &added);
                return Err(e.into());
            }
        };
        // Subtrees no longer fenced lose the programs once the new policy is live.
        if let Some(a) = &mut self.attacher {
            for p in a.points().into_iter().filter(|p| !wanted.contains(p)) {
                a.detach(&p);
            }
        }
        // Committed: from here on nothing fails the apply.
        if let (Some(files), Some(group)) = (&mut self.views.files, prepared) {
            files.commit(group);
        }
        if let Some(path) = &self.deps.ids_path
            && let Err(e) = self.ids.save(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "saving identity ids failed; events recorded before a restart may name the wrong identity");
        }
        for w in &resolved.warnings {
            tracing::warn!("{w}");
        }
        if let Some(w) = &mut self.views.watcher {
            w.set(&resolved.watch, &resolved.watch_files);
        }
        let old = self.live.take();
        let records =
            changes(old.as_ref().map(|l| &l.set), &candidate.set, &trigger, &self.deps.hostname, Timestamp::now());
        if let Err(e) = self.views.audit.write(&records) {
            tracing::error!(error = %e, "writing the identity audit log failed");
        }
        let live =
            Live { set: candidate.set, extra: candidate.extra, resolved, compiled, report, source: candidate.source };
        if let Some(dns) = &mut self.dns {
            let cgroups = &self.deps.cgroups;
            dns.commit(&effective, &live.compiled, &|p| cgroups.dir(p));
        }
        self.grants.in_policy =
            effective.identities.iter().flat_map(|i| i.grants_in_force.iter().map(|g| g.slot)).collect();
        // What each slot reaches, kept until its grant ends (even if the policy drops it first).
        for i in &effective.identities {
            for g in &i.grants_in_force {
                self.grants.reach.insert(g.slot, (i.name.clone(), g.target.egress.clone()));
            }
        }
        self.log_applied(&live);
        self.live = Some(live);
        Ok(report)
    }

    /// Attaches the cgroup programs at the points of `wanted` not attached yet, or whose
    /// cgroup was made again since (the old links went with the old cgroup); the points it
    /// attached, or those and the error (the caller detaches them).
    fn attach(&mut self, wanted: &std::collections::BTreeSet<String>) -> Result<Vec<String>, (Vec<String>, LoadError)> {
        let Some(a) = &mut self.attacher else { return Ok(Vec::new()) };
        for p in a.stale() {
            tracing::info!(point = %p, "the cgroup of an attach point was made again: attaching to the new one");
            a.detach(&p);
        }
        let have = a.points();
        let mut added = Vec::new();
        for p in wanted.iter().filter(|p| !have.contains(p)) {
            if let Err(e) = a.attach(p) {
                return Err((added, e));
            }
            added.push(p.clone());
        }
        Ok(added)
    }

    /// The log lines and metrics of an applied policy.
    fn log_applied(&self, live: &Live) {
        let c = &live.compiled;
        let identities: Vec<(String, String, String)> =
            c.identities.iter().map(|i| (i.name.clone(), i.version.to_string(), i.mode.to_string())).collect();
        self.views.metrics.policy_applied_now(&identities);
        for (map, entries) in c.counts() {
            // One generation is live; an apply briefly holds two (each map has room for both).
            self.views.metrics.map_occupancy(map.name(), entries as u64, u64::from(map.capacity()));
        }
        let protected = c.counts().iter().find(|(m, _)| *m == fence_common::Map::Protected).map_or(0, |(_, n)| *n);
        tracing::info!(
            sequence = live.report.sequence,
            generation = live.report.generation,
            entries = live.report.entries,
            identities = c.identities.len(),
            protected_files = protected,
            "policy applied"
        );
        for identity in &live.set.identities {
            let cgroups: Vec<&str> = identity.cgroups.iter().map(|cg| cg.path.as_str()).collect();
            if identity.expired {
                tracing::warn!(identity = %identity.name, ?cgroups, "identity has EXPIRED: enforcing deny-all");
                continue;
            }
            let programs = live.resolved.identities.get(&identity.name).map_or(0, |r| r.exec.len());
            tracing::info!(
                identity = %identity.name,
                mode = %identity.mode,
                version = %identity.version,
                ?cgroups,
                egress_rules = identity.egress.len(),
                exec = %identity.exec.as_ref().map_or("unrestricted".to_owned(), |_| format!("allow-list of {programs} programs")),
                unix = if identity.unix.is_some() { "allow-list" } else { "host default-deny" },
                file_exceptions = identity.file_exceptions.len(),
                "identity fenced"
            );
        }
    }
}

/// Marks the identities of `set` whose expiry is at or before `now`; whether any was.
pub fn mark_expired(set: &mut PolicySet, now: Timestamp) -> bool {
    let mut changed = false;
    for i in &mut set.identities {
        if !i.expired && i.expires.is_some_and(|e| e <= now) {
            i.expired = true;
            changed = true;
        }
    }
    changed
}

/// Who asked for a reload, for a log line.
fn by_text(trigger: &Trigger) -> String {
    trigger.by.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string)
}
