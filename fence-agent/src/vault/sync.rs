//! The agent's side of the central vault: what applies to this host, fetched only when it
//! changed, verified, and kept as the last-known-good set on disk.
//!
//! Every poll reads the metadata of the `index` document (one cheap request). When its version
//! moved (or a full resync is due), the agent reads the index and verifies it first: signed by
//! a configured key, its serial not older than any index already seen (no rollback), not
//! older than `max_index_age` when set. The index names the exact document current at every
//! path (KV version, serial, SHA-256). The agent then reads the assignments and the identities
//! assigned to this host, and verifies each as it arrives, before reading the next: its own
//! signature (over its path and serial), that it is the document the index names, and that
//! an identity document defines that identity. A writer without the signing key can therefore
//! not change, replay, or mix documents, nor make the agent hold more than one unverified
//! response. The verified set goes to the policy manager, which validates and applies it
//! whole or not at all.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    client::{VaultClient, VaultError},
    layout::{
        self, ASSIGNMENTS, HostAssignment, HostFacts, INDEX, Index, IndexEntry, LayoutError, SignedDocument,
        check_identity_document, identity_path, parse_assignments,
    },
    sign::{SignError, Verifier, check_serial},
};
use crate::{
    policy::{
        PolicyErrors,
        load::{Format, SourceDocument, parse_document},
    },
    service::VaultInForce,
};

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("{source}")]
    Signature { path: String, source: SignError },
    #[error("{path}: {source}")]
    Layout { path: String, source: LayoutError },
    #[error("identity {name} is assigned to this host but the index names no document for it (at {path})")]
    Missing { name: String, path: String },
    #[error("{path}: version {version} is gone from the vault (deleted or destroyed)")]
    VersionGone { path: String, version: u64 },
    #[error(
        "{path}: not the document the signed index names (serial {serial}, or its text, differs); refusing a replayed or altered document"
    )]
    NotInIndex { path: String, serial: u64 },
    #[error("the policy set has no index; refusing it")]
    NoIndexInSet,
    #[error(
        "the vault has no index document any more; keeping the policy in force (a restored backup, or a wrong mount or prefix?)"
    )]
    IndexGone,
    #[error(
        "index: issued at {issued_at}, more than vault.max_index_age ({max_age} s) ago; refusing a stale index (the console must push again)"
    )]
    Stale { issued_at: String, max_age: u64 },
    #[error("the policy from the vault does not validate: {0}")]
    Invalid(String),
    #[error(
        "the vault has no assignments document any more; keeping the policy in force (push an assignments document that assigns nothing to remove every identity)"
    )]
    NoAssignments,
    #[error("{0} (unchanged since; the previous policy stays in force)")]
    StillRefused(String),
    #[error("last-known-good cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
}

impl SyncError {
    /// Whether the vault could not be asked (network, server, token): worth backing off for.
    /// Anything else is a refusal of what the vault holds, repeated until it changes.
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Vault(_))
    }
}

/// One document as fetched: where, which KV version, and the signed content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fetched {
    pub path: String,
    pub version: u64,
    pub doc: SignedDocument,
}

/// The documents that make this host's policy, with the index that names them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VaultSet {
    pub index: Option<Fetched>,
    pub assignments: Option<Fetched>,
    /// Sorted by path.
    pub identities: Vec<Fetched>,
}

/// A set ready for validation: policy documents, and the protected files the assignments add.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub docs: Vec<SourceDocument>,
    pub assignment: HostAssignment,
}

/// Verifies one fetched document: its signature (when keys are configured), its serial
/// against the floor for its path (no rollback), that it is the document the index names
/// (`entry`; the index itself has none), and that an identity document defines the identity
/// its path names.
fn check_fetched(
    verifier: &Verifier,
    floor: Option<u64>,
    f: &Fetched,
    entry: Option<&IndexEntry>,
) -> Result<(), SyncError> {
    let sig = |source| SyncError::Signature { path: f.path.clone(), source };
    verifier.verify(&f.path, &f.doc).map_err(sig)?;
    check_serial(&f.path, f.doc.serial, floor).map_err(sig)?;
    if f.path != INDEX && !entry.is_some_and(|e| e.names(&f.doc)) {
        return Err(SyncError::NotInIndex { path: f.path.clone(), serial: f.doc.serial });
    }
    if let Some(name) = f.path.strip_prefix(layout::IDENTITIES_DIR).and_then(|r| r.strip_prefix('/')) {
        check_identity_document(name, &f.doc.document)
            .map_err(|source| SyncError::Layout { path: f.path.clone(), source })?;
    }
    Ok(())
}

fn parse_index(f: &Fetched) -> Result<Index, SyncError> {
    Index::parse(&f.doc.document).map_err(|source| SyncError::Layout { path: INDEX.to_owned(), source })
}

impl VaultSet {
    /// `path -> KV version` of every document.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.all().map(|f| (f.path.clone(), f.version)).collect()
    }

    fn all(&self) -> impl Iterator<Item = &Fetched> {
        self.index.iter().chain(&self.assignments).chain(&self.identities)
    }

    /// Checks every document as [`Syncer::poll`] does (a cache read back from disk): the
    /// index's signature and serial, and each document against it.
    pub fn verify(&self, verifier: &Verifier, highest: &BTreeMap<String, u64>) -> Result<(), SyncError> {
        let Some(index_doc) = &self.index else {
            return if self.assignments.is_none() && self.identities.is_empty() {
                Ok(())
            } else {
                Err(SyncError::NoIndexInSet)
            };
        };
        check_fetched(verifier, highest.get(INDEX).copied(), index_doc, None)?;
        let index = parse_index(index_doc)?;
        for f in self.assignments.iter().chain(&self.identities) {
            check_fetched(verifier, highest.get(&f.path).copied(), f, index.entry(&f.path))?;
        }
        Ok(())
    }

    /// The policy documents and this host's assignment. The caller validates the documents
    /// as one policy set.
    pub fn prepare(&self, host: &HostFacts) -> Result<Prepared, SyncError> {
        let assignment = match &self.assignments {
            Some(a) => parse_assignments(&a.doc.document)
                .map_err(|source| SyncError::Layout { path: a.path.clone(), source })?
                .for_host(host),
            None => HostAssignment::default(),
        };
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for f in &self.identities {
            let origin = PathBuf::from(format!("vault:{}@v{}", f.path, f.version));
            match parse_document(&f.doc.document, Format::Yaml) {
                Ok(document) => docs.push(SourceDocument { path: origin, document }),
                Err(kind) => {
                    errors.push(crate::policy::PolicyError { file: origin, identity: None, field: String::new(), kind })
                }
            }
        }
        if !errors.is_empty() {
            return Err(SyncError::Invalid(PolicyErrors(errors).to_string()));
        }
        Ok(Prepared { docs, assignment })
    }

    /// The highest serial of each document, merged into `highest`.
    pub fn raise(&self, highest: &mut BTreeMap<String, u64>) {
        for f in self.all() {
            let h = highest.entry(f.path.clone()).or_insert(0);
            *h = (*h).max(f.doc.serial);
        }
    }
}

/// A refused index version and why: reported at every poll until the index moves.
#[derive(Debug, Clone)]
struct Refusal {
    index_version: Option<u64>,
    reason: String,
    /// Refused by validation or the kernel on this host, not by verification.
    host_dependent: bool,
}

/// Polls the vault and produces the sets to apply.
pub struct Syncer {
    client: std::sync::Arc<VaultClient>,
    verifier: Verifier,
    host: HostFacts,
    full_resync: Duration,
    max_index_age: Option<u64>,
    /// The index version of the last complete poll.
    index_version: Option<u64>,
    last_full: Option<Instant>,
    /// The highest index serial verified, applied or not: an older index is not accepted after
    /// a newer one was seen.
    index_seen: u64,
    refused: Option<Refusal>,
    /// The last poll found the vault holding exactly the set in force.
    in_sync: bool,
}

impl Syncer {
    pub fn new(
        client: std::sync::Arc<VaultClient>,
        verifier: Verifier,
        host: HostFacts,
        full_resync: Duration,
        max_index_age: Option<u64>,
    ) -> Syncer {
        Syncer {
            client,
            verifier,
            host,
            full_resync,
            max_index_age,
            index_version: None,
            last_full: None,
            index_seen: 0,
            refused: None,
            in_sync: false,
        }
    }

    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    /// The client, shared (the credential broker uses the same login).
    pub fn shared_client(&self) -> std::sync::Arc<VaultClient> {
        self.client.clone()
    }

    /// The signing keys documents are checked against.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The index version seen by the last complete poll.
    pub fn index_version(&self) -> Option<u64> {
        self.index_version
    }

    /// Whether the last poll found the set in force to be what the vault holds.
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// One poll: `Some(set)` when the vault holds a set for this host that differs from
    /// `in_force` (the set the policy service applied, and its rollback floors) and passed
    /// verification; `None` when nothing changed. A refused index is reported as an error at
    /// every poll until it moves.
    pub async fn poll(&mut self, in_force: &VaultInForce) -> Result<Option<VaultSet>, SyncError> {
        self.client.ensure_token().await?;
        let index_version = self.client.kv_metadata(INDEX).await?.map(|m| m.current_version);
        let full = self.last_full.is_none_or(|t| t.elapsed() >= self.full_resync);
        if !full && index_version.is_some() && index_version == self.index_version {
            return match &self.refused {
                Some(r) if r.index_version == index_version => Err(SyncError::StillRefused(r.reason.clone())),
                _ => Ok(None),
            };
        }
        let result = match index_version {
            Some(v) => self.fetch(v, in_force).await,
            // Nothing pushed yet: the cache or the local policy stays. A vault that has lost the
            // index it had must not empty this host's policy.
            None if in_force.set.index.is_some() => Err(SyncError::IndexGone),
            None => Ok(VaultSet::default()),
        };
        if matches!(&result, Err(e) if e.is_transient()) {
            return result.map(|_| None);
        }
        self.index_version = index_version;
        if full {
            self.last_full = Some(Instant::now());
        }
        let candidate = match result {
            Ok(c) => c,
            Err(e) => {
                self.in_sync = false;
                let reason = e.to_string();
                let same =
                    self.refused.as_ref().is_some_and(|r| r.index_version == index_version && r.reason == reason);
                self.refused = Some(Refusal { index_version, reason, host_dependent: false });
                // Found again by a full resync: reported, not logged and counted anew.
                return Err(if same { SyncError::StillRefused(e.to_string()) } else { e });
            }
        };
        self.in_sync = candidate == in_force.set;
        if self.in_sync {
            self.refused = None;
            return Ok(None);
        }
        if let Some(r) = &self.refused
            && r.index_version == index_version
            // A set refused for this host's sake (a cgroup not there yet, a kernel error) is
            // offered again at every full resync; one the vault's content decides is not.
            && !(full && r.host_dependent)
        {
            return Err(SyncError::StillRefused(r.reason.clone()));
        }
        Ok(Some(candidate))
    }

    /// Reads `path` at `version` (reusing the applied copy when it is that version) and
    /// verifies it before anything else is read.
    async fn read(
        &mut self,
        in_force: &VaultInForce,
        path: &str,
        version: u64,
        entry: Option<&IndexEntry>,
    ) -> Result<Fetched, SyncError> {
        // The applied copy is reused only when it is exactly the document the index names (KV
        // versions restart on a re-created path or a new mount); the index is always read.
        let reusable = |f: &&Fetched| f.path == path && f.version == version && entry.is_some_and(|e| e.names(&f.doc));
        let fetched = match in_force.set.all().find(reusable) {
            Some(f) => f.clone(),
            None => {
                let secret = self
                    .client
                    .kv_read(path, Some(version))
                    .await?
                    .ok_or_else(|| SyncError::VersionGone { path: path.to_owned(), version })?;
                let doc = SignedDocument::from_kv(&secret.data)
                    .map_err(|source| SyncError::Layout { path: path.to_owned(), source })?;
                Fetched { path: path.to_owned(), version: secret.version, doc }
            }
        };
        let mut floor = in_force.highest.get(path).copied();
        if path == INDEX {
            floor = floor.max(Some(self.index_seen));
        }
        check_fetched(&self.verifier, floor, &fetched, entry)?;
        Ok(fetched)
    }

    async fn fetch(&mut self, index_version: u64, in_force: &VaultInForce) -> Result<VaultSet, SyncError> {
        let index_doc = self.read(in_force, INDEX, index_version, None).await?;
        let index = parse_index(&index_doc)?;
        self.index_seen = self.index_seen.max(index_doc.doc.serial);
        if let Some(max_age) = self.max_index_age {
            let issued = index.issued_at.parse::<jiff::Timestamp>().map_err(|e| SyncError::Layout {
                path: INDEX.to_owned(),
                source: LayoutError::Kv { document: INDEX, field: "issued_at".into(), why: e.to_string() },
            })?;
            let age = jiff::Timestamp::now().duration_since(issued);
            if age.as_secs() > i64::try_from(max_age).unwrap_or(i64::MAX) {
                return Err(SyncError::Stale { issued_at: index.issued_at.clone(), max_age });
            }
        }
        let assignments = match index.assignments.clone() {
            Some(e) => Some(self.read(in_force, ASSIGNMENTS, e.version, Some(&e)).await?),
            // An index without assignments after one with them: that takes an assignments
            // document that assigns nothing, not its absence.
            None if in_force.set.assignments.is_some() => return Err(SyncError::NoAssignments),
            None => None,
        };
        let assigned = match &assignments {
            Some(a) => parse_assignments(&a.doc.document)
                .map_err(|source| SyncError::Layout { path: a.path.clone(), source })?
                .for_host(&self.host),
            None => HostAssignment::default(),
        };
        let mut identities = Vec::new();
        for name in &assigned.identities {
            let path = identity_path(name).map_err(|source| SyncError::Layout { path: name.clone(), source })?;
            let entry = index
                .entry(&path)
                .cloned()
                .ok_or_else(|| SyncError::Missing { name: name.clone(), path: path.clone() })?;
            identities.push(self.read(in_force, &path, entry.version, Some(&entry)).await?);
        }
        identities.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(VaultSet { index: Some(index_doc), assignments, identities })
    }

    /// The policy service applied the set the last poll offered.
    pub fn accepted(&mut self) {
        self.refused = None;
        self.in_sync = true;
    }

    /// The set was refused by validation or the kernel: reported at every poll until the index
    /// moves, and offered again at each full resync (what this host has may have changed).
    pub fn refused(&mut self, reason: String) {
        self.refused = Some(Refusal { index_version: self.index_version, reason, host_dependent: true });
    }
}

/// The next wait: the poll interval with ±20% jitter, or after failures an exponential
/// backoff (doubling, capped at `cap`), also jittered. `jitter` is in [0, 1).
pub fn next_wait(interval: Duration, failures: u32, cap: Duration, jitter: f64) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        let factor = 2u32.saturating_pow(failures.min(16));
        interval.saturating_mul(factor).min(cap).max(interval)
    };
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// A jitter value from the clock (no RNG needed for spreading polls).
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

/// Layout paths are relative to the configured prefix; `layout` re-exported for callers.
pub use layout::STATUS_DIR;

pub use super::cache::Cache;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_jitter_and_back_off() {
        let i = Duration::from_secs(5);
        let cap = Duration::from_secs(60);
        assert_eq!(next_wait(i, 0, cap, 0.5), i);
        assert_eq!(next_wait(i, 0, cap, 0.0), Duration::from_secs(4));
        assert_eq!(next_wait(i, 1, cap, 0.5), Duration::from_secs(10));
        assert_eq!(next_wait(i, 3, cap, 0.5), Duration::from_secs(40));
        assert_eq!(next_wait(i, 30, cap, 0.5), cap);
        assert!(next_wait(i, 30, cap, 0.999) <= cap.mul_f64(1.2));
    }

    fn identity(name: &str, purpose: &str) -> String {
        format!(
            "schema: 1\nidentities:\n  - name: {name}\n    owner: t\n    purpose: {purpose}\n    selectors: [{{cgroup: /x}}]\n"
        )
    }

    /// A signed set: the index names an assignments document and identity `a` at serial 10.
    fn signed_set(key: &crate::vault::sign::SigningKey) -> VaultSet {
        let fetched = |path: &str, version, doc| Fetched { path: path.to_owned(), version, doc };
        let a = fetched("identities/a", 3, key.sign("identities/a", 10, &identity("a", "now")));
        let asg = fetched(ASSIGNMENTS, 1, key.sign(ASSIGNMENTS, 10, "schema: 1\nassignments: []\n"));
        let mut index = Index { schema: 1, issued_at: "2026-11-25T00:00:00Z".into(), ..Index::default() };
        index.set(&a.path, IndexEntry::of(&a.doc, a.version));
        index.set(&asg.path, IndexEntry::of(&asg.doc, asg.version));
        let index = fetched(INDEX, 7, key.sign(INDEX, 100, &index.to_text()));
        VaultSet { index: Some(index), assignments: Some(asg), identities: vec![a] }
    }

    #[test]
    fn documents_are_bound_to_the_signed_index() {
        let key = crate::vault::sign::SigningKey::generate().unwrap();
        let verifier = Verifier::new(vec![key.public()]);
        let none = BTreeMap::new();
        let set = signed_set(&key);
        set.verify(&verifier, &none).unwrap();

        // A validly signed, older document of the same identity (a replay): not the one named.
        let mut replay = set.clone();
        replay.identities[0].doc = key.sign("identities/a", 5, &identity("a", "old and looser"));
        let e = replay.verify(&verifier, &none).unwrap_err();
        assert!(matches!(e, SyncError::NotInIndex { serial: 5, .. }), "{e}");
        // The same serial with other text (signed by the key for another push): refused too.
        let mut other = set.clone();
        other.identities[0].doc = key.sign("identities/a", 10, &identity("a", "other"));
        assert!(matches!(other.verify(&verifier, &none), Err(SyncError::NotInIndex { .. })));

        // An index rewritten without the key: unsigned, or signed by another key.
        let mut unsigned = set.clone();
        if let Some(i) = &mut unsigned.index {
            i.doc.key_id.clear();
            i.doc.signature.clear();
        }
        let e = unsigned.verify(&verifier, &none).unwrap_err().to_string();
        assert!(e.contains("index: the document is not signed"), "{e}");
        let intruder = crate::vault::sign::SigningKey::generate().unwrap();
        assert!(matches!(
            signed_set(&intruder).verify(&verifier, &none),
            Err(SyncError::Signature { source: SignError::UnknownKey { .. }, .. })
        ));

        // An older index than one already applied: a rollback.
        let floor = BTreeMap::from([(INDEX.to_owned(), 101)]);
        let e = set.verify(&verifier, &floor).unwrap_err().to_string();
        assert!(e.contains("index: serial 100 is older than serial 101"), "{e}");

        // Documents without an index; an identity document at another identity's path.
        let bare = VaultSet { index: None, ..set.clone() };
        assert!(matches!(bare.verify(&verifier, &none), Err(SyncError::NoIndexInSet)));
        VaultSet::default().verify(&verifier, &none).unwrap();
        let mut moved = set.clone();
        moved.identities[0].doc = key.sign("identities/a", 10, &identity("b", "now"));
        let mut index = parse_index(moved.index.as_ref().unwrap()).unwrap();
        index.set("identities/a", IndexEntry::of(&moved.identities[0].doc, 3));
        moved.index.as_mut().unwrap().doc = key.sign(INDEX, 100, &index.to_text());
        let e = moved.verify(&verifier, &none).unwrap_err().to_string();
        assert!(e.contains("defines identity \"b\""), "{e}");
    }
}
