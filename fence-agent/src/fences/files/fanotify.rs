//! The credential-file fence where BPF LSM cannot load: fanotify permission events
//! (FAN_OPEN_PERM) on the protected inodes, answered by the agent.
//!
//! - Marks are on inodes: every protected file, every file and directory of protected trees
//!   (directories with FAN_EVENT_ON_CHILD, for files created later), through the descriptors
//!   the agent holds, so other names for the same file (hard links made elsewhere, bind
//!   mounts, renames, the tree's directory renamed) raise the same event.
//! - Only opens of protected files reach the agent; the answer is computed from an in-memory
//!   snapshot of the policy and /proc/<tid>/cgroup, and a fenced opener gets FAN_DENY (EPERM).
//! - A stuck decision is answered by a watchdog after [`DECISION_TIMEOUT`] (logged and
//!   counted): FAN_DENY if the opener is in a fenced cgroup, FAN_ALLOW otherwise, so an
//!   unfenced process never waits on the agent for longer than that and a fenced one gains
//!   nothing from a stall. If the agent dies, the kernel allows every pending open and drops
//!   the marks (the agent's restart marks them again).
//! - A policy change builds a new group, starts answering it, then closes the old one: during
//!   the overlap both must allow, so there is no unprotected window.

use std::{
    collections::HashMap,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use fence_common::{
    EventHeader, EventKind, IDENTITY_DENY_ALL, MODE_AUDIT, Mechanism, ObjectEvent, Operation, PROTECT_ENV_ROOT,
    PROTECT_FILE, PROTECT_TREE, Reason, Verdict,
};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::fanotify::{EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response},
};
use thiserror::Error;

use crate::{
    cgroup::Cgroups,
    compile::{Bindings, CompiledPolicy},
    events::{decode::KernelEvent, summary::AgentEvents},
    hold::Holder,
    kernel::MapEntry,
    resolve::{Mounts, ObjectId, Resolved, object_id, object_id_of_fd},
};

/// Longest an open of a protected file waits for the agent's answer.
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum FanotifyError {
    #[error("fanotify_init failed: {0} (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")]
    Init(nix::Error),
}

/// What the decision needs about one identity.
#[derive(Debug, Clone, Default)]
struct Ident {
    audit: bool,
    deny_all: bool,
    policy_version: u32,
    /// Readable exceptions: inode -> (PROTECT_FILE / PROTECT_TREE, end on the boot clock:
    /// `u64::MAX` for a standing one, the grant's end for a granted one).
    exceptions: HashMap<ObjectId, (u32, u64)>,
}

/// An immutable snapshot of the file policy, shared with the answering thread.
#[derive(Debug, Default)]
pub struct FilePolicy {
    /// Bound cgroups -> identity id.
    bindings: Bindings,
    identities: HashMap<u32, Ident>,
    /// Protected inode -> PROTECT_* flags.
    protected: HashMap<ObjectId, u32>,
}

impl FilePolicy {
    pub fn new(compiled: &CompiledPolicy) -> FilePolicy {
        let mut p = FilePolicy { bindings: Bindings::of(compiled), ..FilePolicy::default() };
        for identity in &compiled.identities {
            p.identities.insert(
                identity.id,
                Ident {
                    audit: identity.info.mode == MODE_AUDIT,
                    deny_all: identity.info.flags & IDENTITY_DENY_ALL != 0,
                    policy_version: identity.info.policy_version,
                    exceptions: HashMap::new(),
                },
            );
        }
        for e in &compiled.entries {
            match *e {
                MapEntry::Protected { object, flags } => *p.protected.entry(object).or_default() |= flags,
                // A granted exception is honoured until its grant's end, as the kernel does
                // (a slot with no known end: not at all).
                MapEntry::FileExcept { identity, object, flags, grant } => {
                    let end = if grant == 0 { u64::MAX } else { compiled.grant_ends.get(&grant).copied().unwrap_or(0) };
                    if let Some(i) = p.identities.get_mut(&identity) {
                        let e = i.exceptions.entry(object).or_insert((0, end));
                        e.0 |= flags;
                        e.1 = e.1.max(end);
                    }
                }
                _ => {}
            }
        }
        p
    }
}

/// The outcome for one open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Report; `deny` false in audit mode.
    Report {
        identity: u32,
        reason: Reason,
        rule: Option<ObjectId>,
        deny: bool,
    },
}

/// Decides an open of a marked (hence protected) `file` by identity `who`; `dirs` are the
/// file's directories, innermost first, when its path could be followed in this mount
/// namespace (used for exceptions on directories and to name the protecting rule); `now` is
/// the boot clock (granted exceptions count until their end). Pure: the caller gathers the
/// facts.
pub fn decide(policy: &FilePolicy, who: Option<u32>, file: ObjectId, dirs: &[ObjectId], now: u64) -> Decision {
    let Some(id) = who else { return Decision::Allow };
    let Some(ident) = policy.identities.get(&id) else { return Decision::Allow };
    let report = |reason, rule| Decision::Report { identity: id, reason, rule, deny: !ident.audit };
    if ident.deny_all {
        return report(Reason::IdentityDenyAll, None);
    }
    let live = |o: &ObjectId| ident.exceptions.get(o).filter(|(_, end)| now < *end).map(|(f, _)| *f);
    if live(&file).is_some() || dirs.iter().any(|d| live(d).is_some_and(|f| f & PROTECT_TREE != 0)) {
        return Decision::Allow;
    }
    let rule = if policy.protected.get(&file).is_some_and(|f| f & (PROTECT_FILE | PROTECT_TREE) != 0) {
        Some(file)
    } else {
        dirs.iter()
            .copied()
            .find(|d| policy.protected.get(d).is_some_and(|f| f & (PROTECT_TREE | PROTECT_ENV_ROOT) != 0))
    };
    // Only protected objects are marked, so an event is about a protected file even when its
    // directories cannot be followed (a path in another mount namespace).
    report(Reason::FileProtected, rule)
}

/// One fanotify group with its answering and watchdog threads; answering as soon as it is
/// made, retired when dropped.
pub struct Group {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    marks: usize,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The Fanotify fd closes with the last thread's Arc: pending events are allowed.
    }
}

/// The fanotify file fence. `update` swaps in a new group for a new policy.
pub struct FileFence {
    group: Option<Group>,
    events: AgentEvents,
    cgroups: Cgroups,
    pub timeouts: Arc<AtomicU64>,
}

impl FileFence {
    /// Checks that permission events are available (creates and drops a group).
    pub fn probe() -> Result<(), FanotifyError> {
        init().map(drop)
    }

    pub fn new(events: AgentEvents, cgroups: Cgroups) -> FileFence {
        FileFence { group: None, events, cgroups, timeouts: Arc::new(AtomicU64::new(0)) }
    }

    /// Marks the protected inodes of `resolved` under `compiled`'s rules in a new group, which
    /// answers alongside the current one until [`FileFence::commit`] retires the current one
    /// (or is dropped, if the policy is not applied after all).
    pub fn prepare(
        &self,
        compiled: &CompiledPolicy,
        resolved: &Resolved,
        held: &Holder,
    ) -> Result<Group, FanotifyError> {
        let fan = Arc::new(init()?);
        let policy = Arc::new(FilePolicy::new(compiled));
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight: Arc<Mutex<Option<InFlight>>> = Arc::new(Mutex::new(None));
        let answer = {
            let (fan, stop, in_flight, policy) = (fan.clone(), stop.clone(), in_flight.clone(), policy.clone());
            let events = self.events.clone();
            let cgroups = self.cgroups.clone();
            thread::Builder::new()
                .name("fence-fanotify".into())
                .spawn(move || answer_loop(&fan, &policy, &stop, &in_flight, &events, &cgroups))
                .expect("spawning the fanotify thread")
        };
        let watchdog = {
            let (fan, stop, in_flight, timeouts) =
                (fan.clone(), stop.clone(), in_flight.clone(), self.timeouts.clone());
            let policy = policy.clone();
            thread::Builder::new()
                .name("fence-fanotify-watchdog".into())
                .spawn(move || watchdog_loop(&fan, &policy, &stop, &in_flight, &timeouts))
                .expect("spawning the fanotify watchdog")
        };
        let marks = add_marks(&fan, resolved, held);
        drop(fan);
        Ok(Group { stop, threads: vec![answer, watchdog], marks })
    }

    /// Makes `group` the fence's group and retires the previous one.
    pub fn commit(&mut self, group: Group) {
        drop(self.group.replace(group));
    }

    pub fn marks(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.marks)
    }
}

fn init() -> Result<Fanotify, FanotifyError> {
    Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_UNLIMITED_QUEUE
            | InitFlags::FAN_UNLIMITED_MARKS
            | InitFlags::FAN_REPORT_TID,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )
    .map_err(FanotifyError::Init)
}

/// Marks every protected inode: files, and the directories of protected trees with their
/// children (a directory's marks cover its direct children, so that a file created in it later
/// is covered before the agent keys it). Marks go through the held descriptors, so they are on
/// the inodes the resolver found, wherever their paths are now. `.env*` files below env roots
/// are listed by the resolver as files. Returns the number of marks.
fn add_marks(fan: &Fanotify, resolved: &Resolved, held: &Holder) -> usize {
    let mut marks = 0;
    for e in &resolved.protected {
        let mask = if e.value & PROTECT_TREE != 0 {
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_EVENT_ON_CHILD | MaskFlags::FAN_ONDIR
        } else if e.value & PROTECT_FILE != 0 {
            MaskFlags::FAN_OPEN_PERM
        } else {
            continue;
        };
        // Through the held descriptor's magic link: the inode, wherever its path now is.
        // (fanotify_mark ignores O_PATH descriptors given as dirfd.)
        let path = match held.fd(e.id) {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => e.path.clone(),
        };
        match fan.mark(MarkFlags::FAN_MARK_ADD, mask, nix::fcntl::AT_FDCWD, Some(&path)) {
            Ok(()) => marks += 1,
            Err(err) => {
                tracing::warn!(path = %e.path.display(), error = %err, "fanotify mark failed; this path is not protected")
            }
        }
    }
    marks
}

fn answer_loop(
    fan: &Fanotify,
    policy: &FilePolicy,
    stop: &AtomicBool,
    in_flight: &Mutex<Option<InFlight>>,
    events: &AgentEvents,
    cgroups: &Cgroups,
) {
    let mut mounts = Mounts::read();
    let mut mounts_read = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(fan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "polling fanotify failed");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let batch = match fan.read_events() {
            Ok(b) => b,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading fanotify events failed");
                continue;
            }
        };
        if mounts_read.elapsed() > Duration::from_secs(5) {
            mounts = Mounts::read();
            mounts_read = Instant::now();
        }
        for event in batch {
            let Some(fd) = event.fd() else { continue };
            if !event.mask().contains(MaskFlags::FAN_OPEN_PERM) {
                continue;
            }
            let raw = fd.as_raw_fd();
            let tid = event.pid();
            *in_flight.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(InFlight { fd: raw, tid, since: Instant::now() });
            let (decision, facts) = judge(policy, tid, fd, &mounts);
            let response = match decision {
                Decision::Report { deny: true, .. } => Response::FAN_DENY,
                _ => Response::FAN_ALLOW,
            };
            // The opener waits for our answer, so its /proc entries are still there: read
            // them for the event before answering.
            let record = match decision {
                Decision::Report { identity, reason, rule, deny } => {
                    Some(event_record(policy, identity, reason, rule, deny, tid, facts, cgroups))
                }
                Decision::Allow => None,
            };
            {
                let mut slot = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                // The watchdog may have answered already (it clears the slot when it does).
                if slot.is_some_and(|f| f.fd == raw) {
                    if let Err(e) = fan.write_response(FanotifyResponse::new(fd, response)) {
                        tracing::error!(error = %e, "answering a fanotify event failed");
                    }
                    *slot = None;
                }
            }
            if let Some(record) = record {
                events.send(KernelEvent::Object(Box::new(record)));
            }
            // `event` drops here and closes its fd, after the slot was cleared.
        }
    }
}

/// The event being decided: its descriptor, the opener, since when.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    fd: i32,
    tid: i32,
    since: Instant,
}

fn watchdog_loop(
    fan: &Fanotify,
    policy: &FilePolicy,
    stop: &AtomicBool,
    in_flight: &Mutex<Option<InFlight>>,
    timeouts: &AtomicU64,
) {
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
        let mut slot = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stuck) = *slot
            && stuck.since.elapsed() > DECISION_TIMEOUT
        {
            // Only the opener's cgroup is read here (not what stalled the answering thread):
            // a fenced opener is refused, anyone else allowed.
            let fenced = Cgroups::path_of_process(&stuck.tid.to_string())
                .is_some_and(|c| policy.bindings.identity_of(&c).is_some());
            let response = if fenced { Response::FAN_DENY } else { Response::FAN_ALLOW };
            // SAFETY: the answering thread closes this fd only after clearing the slot, which
            // it cannot do while we hold the lock.
            let borrowed = unsafe { BorrowedFd::borrow_raw(stuck.fd) };
            let _ = fan.write_response(FanotifyResponse::new(borrowed, response));
            *slot = None;
            timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                fenced,
                "a fanotify decision took longer than {DECISION_TIMEOUT:?}; the open was {}",
                if fenced { "refused (the opener is fenced)" } else { "allowed (the opener is not fenced)" }
            );
        }
    }
}

/// What was learned about the opener and the file, for the event.
struct Facts {
    file: ObjectId,
    path: PathBuf,
    cgroup: Option<String>,
}

fn judge(policy: &FilePolicy, tid: i32, fd: BorrowedFd<'_>, mounts: &Mounts) -> (Decision, Facts) {
    let cgroup = Cgroups::path_of_process(&tid.to_string());
    let who = cgroup.as_deref().and_then(|c| policy.bindings.identity_of(c));
    let file = object_id_of_fd(fd, mounts).map(|(id, _)| id).unwrap_or(ObjectId { dev: 0, ino: 0 });
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
    // The path names this file here only if it leads to the same inode (an open through a
    // mount in another namespace reads as a path that means something else here).
    let path_is_ours = object_id(&path, mounts).is_ok_and(|(id, _)| id == file);
    let facts = Facts { file, path: path.clone(), cgroup };
    if who.is_none() {
        return (Decision::Allow, facts);
    }
    let dirs: Vec<ObjectId> = if path_is_ours {
        path.ancestors().skip(1).filter_map(|a| object_id(a, mounts).ok().map(|(id, _)| id)).collect()
    } else {
        Vec::new()
    };
    (decide(policy, who, file, &dirs, crate::grants::boot_ns()), facts)
}

#[allow(clippy::too_many_arguments)]
fn event_record(
    policy: &FilePolicy,
    identity: u32,
    why: Reason,
    rule: Option<ObjectId>,
    deny: bool,
    tid: i32,
    facts: Facts,
    cgroups: &Cgroups,
) -> ObjectEvent {
    let status = crate::proc_status::Status::of(tid as u32);
    let mut comm = [0u8; 16];
    let c = fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
    for (d, s) in comm.iter_mut().zip(c.trim_end().bytes().take(15)) {
        *d = s;
    }
    let cgroup_id = facts.cgroup.as_deref().and_then(|c| crate::cgroup::id_of(&cgroups.dir(c)).ok()).unwrap_or(0);
    let boot_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    let header = EventHeader {
        kind: EventKind::File as u8,
        verdict: if deny { Verdict::Denied as u8 } else { Verdict::WouldDeny as u8 },
        operation: Operation::Open as u8,
        mechanism: Mechanism::Fanotify as u8,
        identity,
        boot_ns,
        cgroup_id,
        pid: tid as u32,
        tgid: status.tgid,
        uid: status.uid,
        gid: status.gid,
        policy_version: policy.identities.get(&identity).map_or(0, |i| i.policy_version),
        reason: why as u8,
        _pad: [0; 3],
        comm,
        ppid: status.ppid,
        euid: status.euid,
        egid: status.egid,
        _pad2: 0,
    };
    let mut e = ObjectEvent {
        header,
        dev: facts.file.dev,
        rule_dev: rule.map_or(0, |r| r.dev),
        ino: facts.file.ino,
        rule_ino: rule.map_or(0, |r| r.ino),
        nlink: 1,
        name_len: 0,
        name: [0; fence_common::NAME_LEN],
        path: Default::default(),
        actor_exe: Default::default(),
    };
    crate::events::decode::path_into_components(&facts.path, &mut e.path);
    if let Ok(exe) = fs::read_link(format!("/proc/{tid}/exe")) {
        crate::events::decode::path_into_components(&exe, &mut e.actor_exe);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> ObjectId {
        ObjectId { dev: 1, ino }
    }

    fn policy() -> FilePolicy {
        let mut p = FilePolicy::default();
        let compiled = CompiledPolicy {
            identities: vec![crate::compile::CompiledIdentity {
                id: 7,
                name: "bot".into(),
                mode: crate::policy::Mode::Enforce,
                expired: false,
                info: Default::default(),
                version: crate::policy::PolicyVersion([0; 32]),
                cgroups: vec![("/fence/bot".into(), 1)],
            }],
            entries: vec![],
            grant_ends: Default::default(),
        };
        p.bindings = Bindings::of(&compiled);
        p.identities.insert(7, Ident { audit: false, deny_all: false, policy_version: 1, exceptions: HashMap::new() });
        p.protected.insert(id(10), PROTECT_FILE);
        p.protected.insert(id(20), PROTECT_TREE | PROTECT_FILE);
        p.protected.insert(id(30), PROTECT_ENV_ROOT);
        p
    }

    #[test]
    fn identity_is_the_deepest_bound_ancestor() {
        let p = policy();
        assert_eq!(p.bindings.identity_of("/fence/bot"), Some(7));
        assert_eq!(p.bindings.identity_of("/fence/bot/worker/x"), Some(7));
        assert_eq!(p.bindings.identity_of("/fence/botnet"), None);
        assert_eq!(p.bindings.identity_of("/"), None);
        assert_eq!(p.bindings.identity_of("/user.slice"), None);
    }

    #[test]
    fn marked_files_are_protected_and_the_rule_is_named() {
        let p = policy();
        let denied = |r, rule| r == Decision::Report { identity: 7, reason: Reason::FileProtected, rule, deny: true };
        assert!(denied(decide(&p, Some(7), id(10), &[id(1)], 0), Some(id(10))), "a protected file");
        assert!(denied(decide(&p, Some(7), id(11), &[id(20), id(1)], 0), Some(id(20))), "inside a protected tree");
        assert!(denied(decide(&p, Some(7), id(12), &[id(5), id(20), id(1)], 0), Some(id(20))), "deep inside a tree");
        assert!(denied(decide(&p, Some(7), id(13), &[id(5), id(30)], 0), Some(id(30))), ".env below an env root");
        assert!(denied(decide(&p, Some(7), id(14), &[], 0), None), "a path that cannot be followed here");
        assert_eq!(decide(&p, None, id(10), &[id(1)], 0), Decision::Allow, "an unfenced process");
        assert_eq!(decide(&p, Some(99), id(10), &[], 0), Decision::Allow, "an identity the policy no longer has");
    }

    #[test]
    fn exceptions_and_modes() {
        let mut p = policy();
        p.identities.get_mut(&7).unwrap().exceptions.insert(id(10), (PROTECT_FILE, u64::MAX));
        p.identities.get_mut(&7).unwrap().exceptions.insert(id(5), (PROTECT_TREE, u64::MAX));
        assert_eq!(decide(&p, Some(7), id(10), &[], 0), Decision::Allow, "a file exception");
        // A granted exception counts until its grant's end on the boot clock.
        p.identities.get_mut(&7).unwrap().exceptions.insert(id(12), (PROTECT_FILE, 100));
        assert_eq!(decide(&p, Some(7), id(12), &[], 99), Decision::Allow, "a granted exception before its end");
        assert!(matches!(decide(&p, Some(7), id(12), &[], 100), Decision::Report { .. }), "and not at or after it");
        assert_eq!(decide(&p, Some(7), id(12), &[id(5), id(20)], 0), Decision::Allow, "a tree exception");
        p.identities.get_mut(&7).unwrap().audit = true;
        assert!(matches!(decide(&p, Some(7), id(11), &[id(20)], 0), Decision::Report { deny: false, .. }));
        p.identities.get_mut(&7).unwrap().deny_all = true;
        assert!(matches!(
            decide(&p, Some(7), id(99), &[], 0),
            Decision::Report { reason: Reason::IdentityDenyAll, .. }
        ));
    }
}
