//! The single owner of the loaded eBPF object: loads the programs, picks the best mechanism
//! each fence can have on this kernel (see [`crate::mechanisms`]), and applies compiled
//! policy atomically (write the inactive generation, flip, clear the old one). Nothing else in
//! the agent touches the kernel maps that decide.

use std::{fs::File, io, path::PathBuf, thread, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, ProgramError},
};
use fence_common::{
    ABI_VERSION, AbstractKey, ActiveState, CgroupKey, EventLimit, IdentityInfo, IdentityKey, InodeKey, KernelOffsets,
    NET_KEY_PREFIX_BITS, Net4Key, Net6Key, NetRules, UnitKey, globals, maps, programs,
};
use thiserror::Error;

use crate::{
    cgroup::Cgroups,
    compile::CompiledPolicy,
    ebpf_object,
    events::summary::KernelStats,
    mechanisms::{Availability, KernelPlan},
    resolve::ObjectId,
};

/// A program whose link could not be pinned.
#[derive(Debug, Error)]
#[error("pinning the link of {program} failed: {why}")]
pub struct PinFailure {
    pub program: &'static str,
    pub why: String,
}

#[derive(Debug, Error)]
pub enum EnforcerError {
    #[error(
        "this fence-agent binary was built without its eBPF programs (AYA_BUILD_SKIP); \
         rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("the kernel refused program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open the cgroup2 root {path}: {source}")]
    CgroupRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// A program and where it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub hook: &'static str,
    pub target: String,
}

/// What one apply wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub generation: u32,
    pub sequence: u64,
    pub entries: usize,
}

pub struct Enforcer {
    bpf: Ebpf,
    generation: u32,
    sequence: u64,
    loaded: Vec<Loaded>,
    attachments: Vec<Attachment>,
    links: Vec<(&'static str, LinkHandle)>,
    plan: KernelPlan,
}

/// aya attaches with BPF_LINK_CREATE (kernel >= 5.7), which takes no flags for cgroups and
/// always gives multi-program semantics: our programs run alongside other tools' programs and
/// cannot be overridden by programs attached lower in the tree.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

const SOCK_ADDR_PROGRAMS: [(&str, &str); 4] = [
    (programs::CONNECT4, "cgroup/connect4"),
    (programs::CONNECT6, "cgroup/connect6"),
    (programs::SENDMSG4, "cgroup/sendmsg4"),
    (programs::SENDMSG6, "cgroup/sendmsg6"),
];

impl Enforcer {
    /// Loads the programs (nothing is attached yet): the network programs, then for exec,
    /// files, unix sockets and the rest the best mechanism this kernel accepts. `offsets` (from
    /// BTF) are needed for all but the network programs. Apply a policy, then [`attach`].
    ///
    /// [`attach`]: Enforcer::attach
    pub fn load(offsets: Option<KernelOffsets>) -> Result<Enforcer, EnforcerError> {
        let object = ebpf_object::bytes();
        if object.is_empty() {
            return Err(EnforcerError::NoObject);
        }
        raise_memlock_limit();
        let global = offsets.unwrap_or_default();
        let mut bpf = EbpfLoader::new()
            .override_global(globals::OFFSETS, &global, true)
            .load(object)
            .map_err(EnforcerError::Load)?;
        let mut loaded = Vec::new();
        load_network(&mut bpf, &mut loaded)?;
        let plan = match offsets {
            Some(_) => load_kernel_fences(&mut bpf, &mut loaded),
            None => KernelPlan::without_btf(),
        };
        let active = read_active(&bpf)?;
        Ok(Enforcer {
            bpf,
            generation: active.generation & 1,
            sequence: active.sequence,
            loaded,
            attachments: Vec::new(),
            links: Vec::new(),
            plan,
        })
    }

    /// Attaches the loaded programs: the network programs at the root of the cgroup2
    /// hierarchy (every cgroup, including ones created later, is covered; unfenced tasks are
    /// let through at the first lookup), the LSM and tracepoint programs globally.
    pub fn attach(&mut self, cgroups: &Cgroups) -> Result<(), EnforcerError> {
        let root = cgroups.root().to_owned();
        let root_fd = File::open(&root).map_err(|source| EnforcerError::CgroupRoot { path: root.clone(), source })?;
        for l in self.loaded.clone() {
            let name = l.program;
            let err = |source| EnforcerError::Program { name, source };
            let (handle, target) = match l.kind {
                HookKind::SockAddr => {
                    let p: &mut CgroupSockAddr = program(&mut self.bpf, name)?;
                    (LinkHandle::SockAddr(p.attach(&root_fd, LINK_MODE).map_err(err)?), root.display().to_string())
                }
                HookKind::Sock => {
                    let p: &mut CgroupSock = program(&mut self.bpf, name)?;
                    (LinkHandle::Sock(p.attach(&root_fd, LINK_MODE).map_err(err)?), root.display().to_string())
                }
                HookKind::Lsm => {
                    let p: &mut Lsm = program(&mut self.bpf, name)?;
                    (LinkHandle::Lsm(p.attach().map_err(err)?), "lsm".to_owned())
                }
                HookKind::Tracepoint => {
                    let p: &mut BtfTracePoint = program(&mut self.bpf, name)?;
                    (LinkHandle::Tracepoint(p.attach().map_err(err)?), "tracepoint".to_owned())
                }
            };
            self.links.push((name, handle));
            self.attachments.push(Attachment { program: name, hook: l.hook, target });
        }
        Ok(())
    }

    /// Pins every attached program's link under `dir`: the kernel keeps enforcing with them
    /// when this process exits, whatever the reason.
    pub fn pin_links(&mut self, dir: &std::path::Path) -> Result<(), PinFailure> {
        use aya::programs::links::FdLink;
        for (name, handle) in self.links.drain(..) {
            let failure = |why: String| PinFailure { program: name, why };
            let fd_link: FdLink = match handle {
                LinkHandle::SockAddr(id) => {
                    let p: &mut CgroupSockAddr = program(&mut self.bpf, name).map_err(|e| failure(e.to_string()))?;
                    p.take_link(id)
                        .map_err(|e| failure(e.to_string()))?
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| failure(e.to_string()))?
                }
                LinkHandle::Sock(id) => {
                    let p: &mut CgroupSock = program(&mut self.bpf, name).map_err(|e| failure(e.to_string()))?;
                    p.take_link(id)
                        .map_err(|e| failure(e.to_string()))?
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| failure(e.to_string()))?
                }
                LinkHandle::Lsm(id) => {
                    let p: &mut Lsm = program(&mut self.bpf, name).map_err(|e| failure(e.to_string()))?;
                    p.take_link(id).map_err(|e| failure(e.to_string()))?.into()
                }
                LinkHandle::Tracepoint(id) => {
                    let p: &mut BtfTracePoint = program(&mut self.bpf, name).map_err(|e| failure(e.to_string()))?;
                    p.take_link(id).map_err(|e| failure(e.to_string()))?.into()
                }
            };
            // The pinned link holds the attachment; our FdLink may drop.
            fd_link.pin(dir.join(name)).map_err(|e| failure(e.to_string()))?;
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// What the kernel programs cover on this host.
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// Hands the event ring buffer to the event reader.
    /// Hands the event ring buffer to the event reader, pinning it at `pin` first (so that a
    /// later agent can read what the programs record after this one exits).
    pub fn take_events(&mut self, pin: Option<&std::path::Path>) -> Result<RingBuf<MapData>, EnforcerError> {
        let map = self.bpf.take_map(maps::EVENTS).ok_or(EnforcerError::Missing { kind: "map", name: maps::EVENTS })?;
        if let Some(path) = pin
            && let Err(e) = map.pin(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "pinning the event buffer failed; events while no agent runs are lost");
        }
        RingBuf::try_from(map).map_err(|source| EnforcerError::Map { map: maps::EVENTS, source })
    }

    /// Makes `policy` the live policy. On error the previous policy stays live and untouched.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<ApplyReport, EnforcerError> {
        let next = 1 - self.generation;
        // Leftovers of an interrupted apply, or of the generation before last.
        self.clear_generation(next)?;
        let entries = match self.write_generation(next, policy) {
            Ok(n) => n,
            Err(e) => {
                if let Err(clear) = self.clear_generation(next) {
                    tracing::warn!(error = %clear, "clearing a half-written policy generation failed; it is not live");
                }
                return Err(e);
            }
        };
        let sequence = self.sequence + 1;
        let state = ActiveState { generation: next, abi: ABI_VERSION, sequence };
        let mut active: Array<&mut MapData, ActiveState> = self.map(maps::ACTIVE)?;
        active.set(0, &state, 0).map_err(|source| EnforcerError::Map { map: maps::ACTIVE, source })?;
        let old = self.generation;
        self.generation = next;
        self.sequence = sequence;
        // Hooks that read the old generation number just before the flip may still be looking
        // up its entries; let them finish before the entries go.
        rcu_grace_period();
        if let Err(e) = self.clear_generation(old) {
            tracing::warn!(error = %e, generation = old, "clearing the previous policy generation failed; it is no longer live");
        }
        Ok(ApplyReport { generation: next, sequence, entries })
    }

    /// Sets the kernel's event rate limit (see `events::summary`).
    pub fn set_event_limit(&mut self, limit: EventLimit) -> Result<(), EnforcerError> {
        let map = self
            .bpf
            .map_mut(maps::EVENT_LIMIT)
            .ok_or(EnforcerError::Missing { kind: "map", name: maps::EVENT_LIMIT })?;
        let mut array: Array<&mut MapData, EventLimit> =
            Array::try_from(map).map_err(|source| EnforcerError::Map { map: maps::EVENT_LIMIT, source })?;
        array.set(0, &limit, 0).map_err(|source| EnforcerError::Map { map: maps::EVENT_LIMIT, source })
    }

    /// Hands the rate limiter's state and the counters to the event reader (for summaries).
    pub fn take_event_stats(&mut self) -> Result<KernelStats, EnforcerError> {
        let rate = self
            .bpf
            .take_map(maps::EVENT_RATE)
            .ok_or(EnforcerError::Missing { kind: "map", name: maps::EVENT_RATE })?;
        let counters =
            self.bpf.take_map(maps::COUNTERS).ok_or(EnforcerError::Missing { kind: "map", name: maps::COUNTERS })?;
        Ok(KernelStats {
            rate: aya::maps::HashMap::try_from(rate)
                .map_err(|source| EnforcerError::Map { map: maps::EVENT_RATE, source })?,
            counters: PerCpuArray::try_from(counters)
                .map_err(|source| EnforcerError::Map { map: maps::COUNTERS, source })?,
        })
    }

    fn write_generation(&mut self, g: u32, p: &CompiledPolicy) -> Result<usize, EnforcerError> {
        let inode =
            |identity: u32, id: &ObjectId| InodeKey { generation: g, identity, ino: id.ino, dev: id.dev, _pad: 0 };
        let mut n = 0;
        n += self.insert_all(
            maps::IDENTITIES,
            p.identities.iter().map(|i| (IdentityKey { generation: g, identity: i.id }, i.info)),
        )?;
        n += self.insert_lpm(
            maps::NET4,
            p.net4.iter().map(|e| {
                let key = Net4Key { generation: g, identity: e.identity, addr: e.addr };
                (Key::new(NET_KEY_PREFIX_BITS + u32::from(e.prefix_len), key), e.rules)
            }),
        )?;
        n += self.insert_lpm(
            maps::NET6,
            p.net6.iter().map(|e| {
                let key = Net6Key { generation: g, identity: e.identity, addr: e.addr };
                (Key::new(NET_KEY_PREFIX_BITS + u32::from(e.prefix_len), key), e.rules)
            }),
        )?;
        n += self.insert_all(maps::EXEC, p.exec.iter().map(|(i, id, rule)| (inode(*i, id), *rule)))?;
        n += self.insert_all(maps::PROTECTED, p.protected.iter().map(|(id, flags)| (inode(0, id), *flags)))?;
        n += self.insert_all(maps::FILE_EXCEPT, p.file_exceptions.iter().map(|(i, id, f)| (inode(*i, id), *f)))?;
        n += self.insert_all(maps::UNIX, p.unix.iter().map(|(i, id)| (inode(*i, id), 1u32)))?;
        n += self.insert_all(
            maps::UNIX_ABSTRACT,
            p.unix_abstract.iter().map(|(i, name)| {
                let mut key =
                    AbstractKey { generation: g, identity: *i, len: name.len() as u32, ..AbstractKey::default() };
                key.name[..name.len()].copy_from_slice(name);
                (key, 1u32)
            }),
        )?;
        n += self.insert_all(
            maps::UNITS,
            p.units.iter().map(|(path, identity)| {
                let mut key = UnitKey { generation: g, ..UnitKey::default() };
                let bytes = path.as_bytes();
                key.path[..bytes.len()].copy_from_slice(bytes);
                (key, *identity)
            }),
        )?;
        // Cgroup bindings last: an identity is only reachable once its rules are in place.
        n += self.insert_all(
            maps::CGROUPS,
            p.cgroups.iter().map(|&(cgroup_id, identity)| (CgroupKey { cgroup_id, generation: g, _pad: 0 }, identity)),
        )?;
        Ok(n)
    }

    fn insert_all<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: impl Iterator<Item = (K, V)>,
    ) -> Result<usize, EnforcerError> {
        let mut map: HashMap<&mut MapData, K, V> = self.map(name)?;
        let mut n = 0;
        for (k, v) in entries {
            map.insert(&k, &v, 0).map_err(|source| EnforcerError::Map { map: name, source })?;
            n += 1;
        }
        Ok(n)
    }

    fn insert_lpm<K: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: impl Iterator<Item = (Key<K>, NetRules)>,
    ) -> Result<usize, EnforcerError> {
        let mut map: LpmTrie<&mut MapData, K, NetRules> = self.map(name)?;
        let mut n = 0;
        for (k, v) in entries {
            map.insert(&k, &v, 0).map_err(|source| EnforcerError::Map { map: name, source })?;
            n += 1;
        }
        Ok(n)
    }

    fn clear_generation(&mut self, g: u32) -> Result<(), EnforcerError> {
        self.clear_hash::<CgroupKey, u32>(maps::CGROUPS, g)?;
        self.clear_hash::<IdentityKey, IdentityInfo>(maps::IDENTITIES, g)?;
        self.clear_hash::<InodeKey, u32>(maps::EXEC, g)?;
        self.clear_hash::<InodeKey, u32>(maps::PROTECTED, g)?;
        self.clear_hash::<InodeKey, u32>(maps::FILE_EXCEPT, g)?;
        self.clear_hash::<InodeKey, u32>(maps::UNIX, g)?;
        self.clear_hash::<AbstractKey, u32>(maps::UNIX_ABSTRACT, g)?;
        self.clear_hash::<UnitKey, u32>(maps::UNITS, g)?;
        self.clear_lpm::<Net4Key>(maps::NET4, g)?;
        self.clear_lpm::<Net6Key>(maps::NET6, g)
    }

    fn clear_hash<K: aya::Pod + Generational, V: aya::Pod>(
        &mut self,
        name: &'static str,
        g: u32,
    ) -> Result<(), EnforcerError> {
        let mut map: HashMap<&mut MapData, K, V> = self.map(name)?;
        let keys: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| k.generation() == g).collect();
        for k in keys {
            remove_ok_if_gone(map.remove(&k)).map_err(|source| EnforcerError::Map { map: name, source })?;
        }
        Ok(())
    }

    fn clear_lpm<K: aya::Pod + Generational>(&mut self, name: &'static str, g: u32) -> Result<(), EnforcerError> {
        let mut map: LpmTrie<&mut MapData, K, NetRules> = self.map(name)?;
        let keys: Vec<Key<K>> = map.keys().filter_map(Result::ok).filter(|k| k.data().generation() == g).collect();
        for k in keys {
            remove_ok_if_gone(map.remove(&k)).map_err(|source| EnforcerError::Map { map: name, source })?;
        }
        Ok(())
    }

    fn map<'a, M>(&'a mut self, name: &'static str) -> Result<M, EnforcerError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self.bpf.map_mut(name).ok_or(EnforcerError::Missing { kind: "map", name })?;
        M::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })
    }
}

/// Keys that carry a policy generation.
trait Generational {
    fn generation(&self) -> u32;
}

macro_rules! generational {
    ($($t:ty),*) => {$(
        impl Generational for $t {
            fn generation(&self) -> u32 {
                self.generation
            }
        }
    )*};
}
generational!(CgroupKey, IdentityKey, InodeKey, AbstractKey, UnitKey, Net4Key, Net6Key);

/// A kernel program that loaded, waiting to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    program: &'static str,
    hook: &'static str,
    kind: HookKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    SockAddr,
    Sock,
    Lsm,
    Tracepoint,
}

/// An attached program's link, kept to be pinned.
enum LinkHandle {
    SockAddr(aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId),
    Sock(aya::programs::cgroup_sock::CgroupSockLinkId),
    Lsm(aya::programs::lsm::LsmLinkId),
    Tracepoint(aya::programs::tp_btf::BtfTracePointLinkId),
}

fn load_network(bpf: &mut Ebpf, loaded: &mut Vec<Loaded>) -> Result<(), EnforcerError> {
    for (name, hook) in SOCK_ADDR_PROGRAMS {
        let program: &mut CgroupSockAddr = program(bpf, name)?;
        program.load().map_err(|source| EnforcerError::Program { name, source })?;
        loaded.push(Loaded { program: name, hook, kind: HookKind::SockAddr });
    }
    let name = programs::SOCK_CREATE;
    let program: &mut CgroupSock = program(bpf, name)?;
    program.load().map_err(|source| EnforcerError::Program { name, source })?;
    loaded.push(Loaded { program: name, hook: "cgroup/sock_create", kind: HookKind::Sock });
    Ok(())
}

fn program<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EnforcerError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(EnforcerError::Missing { kind: "program", name })?
        .try_into()
        .map_err(|source| EnforcerError::Program { name, source })
}

/// Loads an LSM program (the kernel's verdict on BPF LSM); the error says why it refused.
fn load_lsm(bpf: &mut Ebpf, btf: &aya::Btf, name: &'static str, hook: &'static str) -> Result<Loaded, String> {
    let p: &mut Lsm = program(bpf, name).map_err(|e| e.to_string())?;
    p.load(hook, btf).map_err(|e| refusal(&e))?;
    Ok(Loaded { program: name, hook, kind: HookKind::Lsm })
}

fn load_tracepoint(
    bpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<Loaded, String> {
    let p: &mut BtfTracePoint = program(bpf, name).map_err(|e| e.to_string())?;
    p.load(tracepoint, btf).map_err(|e| refusal(&e))?;
    Ok(Loaded { program: name, hook: tracepoint, kind: HookKind::Tracepoint })
}

/// The kernel's answer, in one line: the verifier's complaint (the lines before its closing
/// statistics), not the whole log, which goes to the debug log.
fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "BPF_PROG_LOAD refused");
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time"))
                .collect();
            match lines.len() {
                0 => format!("BPF_PROG_LOAD: {io_error} (empty verifier log)"),
                n => format!("BPF_PROG_LOAD: {io_error}; verifier: {}", lines[n.saturating_sub(2)..].join(" | ")),
            }
        }
        other => other.to_string(),
    }
}

/// Loads the exec, file, unix, no-way-out and unit programs this kernel accepts: BPF LSM
/// where it loads, the tracepoint kill for exec where it does not.
fn load_kernel_fences(bpf: &mut Ebpf, loaded: &mut Vec<Loaded>) -> KernelPlan {
    let btf = match aya::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => return KernelPlan::no_kernel_btf(&e.to_string()),
    };
    let mut plan = KernelPlan::default();
    let mut take = |r: Result<Loaded, String>| r.map(|l| loaded.push(l));
    match take(load_lsm(bpf, &btf, programs::LSM_EXEC, "bprm_check_security")) {
        Ok(()) => plan.exec = Availability::Lsm,
        Err(lsm_error) => {
            plan.lsm_refusal = Some(lsm_error.clone());
            plan.exec = match take(load_tracepoint(bpf, &btf, programs::TP_EXEC, "sched_process_exec")) {
                Ok(()) => Availability::TracepointKill,
                Err(tp_error) => {
                    Availability::Unavailable(format!("BPF LSM refused ({lsm_error}); tp_btf refused ({tp_error})"))
                }
            };
        }
    }
    plan.files = match take(load_lsm(bpf, &btf, programs::LSM_FILE_OPEN, "file_open")) {
        Ok(()) => Availability::Lsm,
        Err(e) => Availability::Unavailable(format!("BPF LSM refused ({e})")),
    };
    plan.unix = match take(load_lsm(bpf, &btf, programs::LSM_UNIX_STREAM, "unix_stream_connect"))
        .and_then(|()| take(load_lsm(bpf, &btf, programs::LSM_UNIX_DGRAM, "unix_may_send")))
    {
        Ok(()) => Availability::Lsm,
        Err(e) => Availability::Unavailable(format!("BPF LSM refused ({e})")),
    };
    // No way out: cgroup.procs writes are checked by the file_open program; the rest here.
    plan.self_protection = if plan.files != Availability::Lsm {
        Availability::Unavailable("needs BPF LSM (the file_open program checks cgroup.procs writes)".into())
    } else {
        [
            (programs::LSM_TASK_ALLOC, "task_alloc"),
            (programs::LSM_PTRACE, "ptrace_access_check"),
            (programs::LSM_TASK_KILL, "task_kill"),
            (programs::LSM_BPF, "bpf"),
        ]
        .into_iter()
        .try_for_each(|(name, hook)| {
            take(load_lsm(bpf, &btf, name, hook)).map_err(|e| format!("lsm/{hook} refused ({e})"))
        })
        .map_or_else(Availability::Unavailable, |()| Availability::Lsm)
    };
    plan.unit_follow = match take(load_tracepoint(bpf, &btf, programs::TP_CGROUP_MKDIR, "cgroup_mkdir")) {
        Ok(()) => Availability::Tracepoint,
        Err(e) => Availability::Unavailable(format!("tp_btf/cgroup_mkdir refused ({e})")),
    };
    plan
}

fn read_active(bpf: &Ebpf) -> Result<ActiveState, EnforcerError> {
    let name = maps::ACTIVE;
    let map = bpf.map(name).ok_or(EnforcerError::Missing { kind: "map", name })?;
    let array: Array<&MapData, ActiveState> =
        Array::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })?;
    array.get(&0, 0).map_err(|source| EnforcerError::Map { map: name, source })
}

/// A key that is already gone is fine when clearing.
fn remove_ok_if_gone(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Waits until every BPF program that started before the call has finished: membarrier's
/// global command runs synchronize_rcu() in the kernel (non-sleepable BPF programs run inside
/// RCU read-side sections). A short sleep covers kernels where the command is unavailable.
fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; an error only means we rely on the sleep.
    let _ = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    thread::sleep(Duration::from_millis(5));
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memory cgroup.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}
