//! The grant book: every grant the agent knows (pending, active, and the most recent ended
//! ones), its slot in the kernel's grant table, and its lifecycle. Pure: the clock is passed
//! in (boot-clock nanoseconds for ends, wall time only for what people read), nothing here
//! touches the kernel or files except [`GrantBook::save`] / [`GrantBook::load`].

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use fence_common::GRANT_SLOTS;
use serde::{Deserialize, Serialize};

use crate::policy::Approval;

/// Ended grants kept for `grant show` and `grant list --all`.
const HISTORY: usize = 256;

/// Who asked for a grant, as the kernel said (never from the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub pid: u32,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The requester's cgroup; absent for root on the host asking with `--identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// Where a grant is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for a person.
    Pending,
    /// In force in the kernel until `expires_boot_ns` (boot clock).
    Active {
        slot: u16,
        expires_boot_ns: u64,
        expires_at: String,
        approver: String,
    },
    Denied {
        by: String,
        reason: String,
    },
    Expired {
        uses: u64,
    },
    Revoked {
        by: String,
        reason: String,
        uses: u64,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Active { .. } => "active",
            Phase::Denied { .. } => "denied",
            Phase::Expired { .. } => "expired",
            Phase::Revoked { .. } => "revoked",
        }
    }

    pub fn ended(&self) -> bool {
        !matches!(self, Phase::Pending | Phase::Active { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub identity: String,
    pub target: String,
    pub reason: String,
    pub ttl_seconds: u64,
    pub approval: Approval,
    pub requested_at: String,
    /// Boot clock at the request (pending requests time out on it).
    pub requested_boot_ns: u64,
    pub requester: Requester,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The request is in the vault for consoles (console approval with a vault).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub published: bool,
    /// The KV version of the last console decision acted on (older ones are not read again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_version: Option<u64>,
    /// The highest signed serial of a console decision acted on (a superseded decision put
    /// back in the vault is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_serial: Option<u64>,
    /// Who approved it (a person: local root or a console key), once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl Grant {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_seconds)
    }

    pub fn slot(&self) -> Option<u16> {
        match self.phase {
            Phase::Active { slot, .. } => Some(slot),
            _ => None,
        }
    }
}

/// Every grant, and the boot it was written in (boot-clock values mean nothing in another).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBook {
    boot_id: String,
    grants: Vec<Grant>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

/// What a saved book said that no longer holds after a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebooted(pub Vec<Grant>);

impl GrantBook {
    /// An empty book for this boot, saved at `path` when given.
    pub fn new(boot_id: String, path: Option<PathBuf>) -> GrantBook {
        GrantBook { boot_id, grants: Vec::new(), path }
    }

    /// The book saved at `path` by an earlier run. Saved in another boot, its pending and
    /// active grants are over (their ends were on that boot's clock): they come back ended,
    /// for the audit log, and the book starts empty.
    pub fn load(path: &Path, boot_id: &str) -> (GrantBook, Rebooted) {
        let mut book = GrantBook::new(boot_id.to_owned(), Some(path.to_owned()));
        let Ok(bytes) = std::fs::read(path) else { return (book, Rebooted(Vec::new())) };
        let saved: GrantBook = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                let aside = path.with_extension("unreadable");
                let _ = std::fs::rename(path, &aside);
                tracing::error!(path = %path.display(), moved_to = %aside.display(), "the grant book cannot be read ({e}); starting with an empty one: grants the kernel still holds are closed");
                return (book, Rebooted(Vec::new()));
            }
        };
        // Boot-clock ends mean nothing in another boot (or when the boot id is unknown).
        if !boot_id.is_empty() && saved.boot_id == boot_id {
            book.grants = saved.grants;
            return (book, Rebooted(Vec::new()));
        }
        let (open, ended): (Vec<Grant>, Vec<Grant>) = saved.grants.into_iter().partition(|g| !g.phase.ended());
        book.grants = ended;
        (book, Rebooted(open))
    }

    /// Saves the book (0600, written to a temporary file and renamed); nothing without a path.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        crate::persist::write_private(path, &serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }

    pub fn get(&self, id: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| g.id == id)
    }

    pub fn all(&self) -> &[Grant] {
        &self.grants
    }

    /// Records a new request (pending).
    pub fn add(&mut self, grant: Grant) {
        self.grants.push(grant);
        self.trim();
    }

    /// Open grants (pending or active) of `identity`.
    pub fn open_of(&self, identity: &str) -> usize {
        self.grants.iter().filter(|g| g.identity == identity && !g.phase.ended()).count()
    }

    /// The active grants, with their slots.
    pub fn active(&self) -> impl Iterator<Item = (&Grant, u16)> {
        self.grants.iter().filter_map(|g| g.slot().map(|s| (g, s)))
    }

    /// The lowest slot no active grant holds and no live policy names (`in_policy`).
    pub fn free_slot(&self, in_policy: &BTreeSet<u16>) -> Option<u16> {
        let busy: BTreeSet<u16> = self.active().map(|(_, s)| s).collect();
        (1..GRANT_SLOTS).filter_map(|s| u16::try_from(s).ok()).find(|s| !busy.contains(s) && !in_policy.contains(s))
    }

    /// Ids of active grants whose end is at or before `now_boot_ns`.
    pub fn due(&self, now_boot_ns: u64) -> Vec<String> {
        self.grants
            .iter()
            .filter(|g| matches!(g.phase, Phase::Active { expires_boot_ns, .. } if expires_boot_ns <= now_boot_ns))
            .map(|g| g.id.clone())
            .collect()
    }

    /// Ids of pending requests older than `timeout` at `now_boot_ns`.
    pub fn stale(&self, now_boot_ns: u64, timeout: Duration) -> Vec<String> {
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.grants
            .iter()
            .filter(|g| g.phase == Phase::Pending && now_boot_ns.saturating_sub(g.requested_boot_ns) >= limit)
            .map(|g| g.id.clone())
            .collect()
    }

    /// The next boot-clock moment something is due: an active grant's end or a pending
    /// request's timeout.
    pub fn next_due(&self, timeout: Duration) -> Option<u64> {
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.grants
            .iter()
            .filter_map(|g| match g.phase {
                Phase::Active { expires_boot_ns, .. } => Some(expires_boot_ns),
                Phase::Pending => Some(g.requested_boot_ns.saturating_add(limit)),
                _ => None,
            })
            .min()
    }

    /// Keeps the open grants and the most recent ended ones.
    fn trim(&mut self) {
        let ended = self.grants.iter().filter(|g| g.phase.ended()).count();
        let mut drop = ended.saturating_sub(HISTORY);
        self.grants.retain(|g| {
            if drop > 0 && g.phase.ended() {
                drop -= 1;
                return false;
            }
            true
        });
    }
}

/// A new grant id: `g-` and 16 hexadecimal digits from the kernel's random source.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    // getrandom(2) never fails for 8 bytes once the pool is ready; a zero id is still unique
    // enough with the collision check of the caller.
    // SAFETY: the buffer is valid for its length.
    let _ = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    format!("g-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The boot clock now (`CLOCK_BOOTTIME`, what `bpf_ktime_get_boot_ns` reads), in ns.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, phase: Phase, requested_boot_ns: u64) -> Grant {
        Grant {
            id: id.into(),
            identity: "ci".into(),
            target: "db".into(),
            reason: "r".into(),
            ttl_seconds: 60,
            approval: Approval::Auto,
            requested_at: String::new(),
            requested_boot_ns,
            requester: Requester { pid: 1, uid: 0, executable: None, cgroup: None },
            phase,
            ended_at: None,
            published: false,
            decided_version: None,
            decided_serial: None,
            approved_by: None,
        }
    }

    fn active(slot: u16, expires_boot_ns: u64) -> Phase {
        Phase::Active { slot, expires_boot_ns, expires_at: String::new(), approver: "auto".into() }
    }

    #[test]
    fn slots_skip_active_grants_and_what_the_live_policy_still_names() {
        let mut b = GrantBook::default();
        assert_eq!(b.free_slot(&BTreeSet::new()), Some(1), "slot 0 means standing");
        b.add(grant("a", active(1, 10), 0));
        assert_eq!(b.free_slot(&BTreeSet::from([2])), Some(3));
    }

    #[test]
    fn ends_and_pending_timeouts_come_due_on_the_boot_clock() {
        let mut b = GrantBook::default();
        b.add(grant("a", active(1, 100), 0));
        b.add(grant("p", Phase::Pending, 50));
        assert_eq!(b.next_due(Duration::from_nanos(10)), Some(60));
        assert!(b.due(99).is_empty());
        assert_eq!(b.due(100), vec!["a".to_owned()]);
        assert_eq!(b.stale(59, Duration::from_nanos(10)), Vec::<String>::new());
        assert_eq!(b.stale(60, Duration::from_nanos(10)), vec!["p".to_owned()]);
    }

    #[test]
    fn a_book_of_another_boot_comes_back_with_its_open_grants_ended() {
        let dir = std::env::temp_dir().join(format!("fence-book-{}", std::process::id()));
        let path = dir.join("grants.json");
        let mut b = GrantBook::new("boot-1".into(), Some(path.clone()));
        b.add(grant("a", active(1, 100), 0));
        b.add(grant("e", Phase::Expired { uses: 3 }, 0));
        b.save().unwrap();
        let (same, gone) = GrantBook::load(&path, "boot-1");
        assert_eq!(same.all().len(), 2);
        assert!(gone.0.is_empty());
        let (other, gone) = GrantBook::load(&path, "boot-2");
        assert_eq!(other.all().len(), 1, "the ended one stays as history");
        assert_eq!(gone.0.len(), 1);
        assert_eq!(gone.0[0].id, "a");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn history_is_bounded_and_open_grants_are_never_dropped() {
        let mut b = GrantBook::default();
        b.add(grant("open", Phase::Pending, 0));
        for i in 0..HISTORY + 10 {
            b.add(grant(&format!("e{i}"), Phase::Expired { uses: 0 }, 0));
        }
        assert_eq!(b.all().len(), HISTORY + 1);
        assert!(b.get("open").is_some());
        assert!(b.get("e0").is_none());
    }

    #[test]
    fn ids_are_distinct() {
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 18);
    }
}
