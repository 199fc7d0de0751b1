//! Loads fence's eBPF object and its programs, attaches and pins them. The fence units (see
//! [`crate::fences`]) choose which programs to load; this module only knows how. The policy
//! maps go to the policy service, the event maps to the event writer; the programs stay here.
//!
//! Two kinds of attachment: the LSM and tracepoint programs are global (attached once, at
//! start); the cgroup programs (sockets, packets, sysctl) are attached to *attach points*,
//! the cgroups whose subtrees hold fenced identities, so that processes elsewhere never run
//! them. The policy service moves the attach points with the policy (see [`Attacher`]).

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSysctl, Lsm, LsmCgroup, ProgramError, links::FdLink,
    },
};
use aya_obj::generated::bpf_attach_type;
use fence_common::{EventLimit, KernelOffsets, Map, globals};
use thiserror::Error;

use super::{
    AyaPolicyMaps, MapsError,
    link::CgroupLink,
    verifier::{log_lsm_loaded, refusal},
};
use crate::{cgroup::Cgroups, ebpf_object, events::summary::KernelStats};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "this fence-agent binary was built without its eBPF programs (AYA_BUILD_SKIP); \
         rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("the kernel refused program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} to {target}: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// A program and where it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub hook: &'static str,
    pub target: String,
}

/// How a loaded program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    /// A cgroup program: attached at every attach point, as this attach type.
    Cgroup(bpf_attach_type),
    Lsm,
    Tracepoint,
}

/// A kernel program that loaded, waiting to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    program: &'static str,
    hook: &'static str,
    kind: HookKind,
}

/// What attaches the cgroup programs at a set of attach points: the loader, or a fake in
/// unit tests. Points are cgroup paths relative to the cgroup2 mount (`/fence/ci`).
pub trait Attacher: Send {
    /// The points attached now.
    fn points(&self) -> Vec<String>;
    /// Attaches every cgroup program at `point` (all or none).
    fn attach(&mut self, point: &str) -> Result<(), LoadError>;
    /// Detaches every cgroup program from `point`.
    fn detach(&mut self, point: &str);
    /// The points whose cgroup is no longer the one the programs were attached to (removed
    /// and made again at the same path: a restarted unit's delegated subtree, say). Their
    /// programs went with the old cgroup.
    fn stale(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A global program's link.
enum HeldLink {
    /// Detached when dropped (with the loader).
    Held(#[expect(dead_code, reason = "kept for its Drop: dropping it detaches")] FdLink),
    /// Stays attached until its pin is removed.
    Pinned(
        #[expect(dead_code, reason = "kept for its Drop: the pin keeps it attached")] aya::programs::links::PinnedLink,
    ),
}

pub struct Loader {
    bpf: Ebpf,
    /// The kernel's BTF for LSM and tracing programs, or why there is none usable.
    btf: Result<aya::Btf, String>,
    loaded: Vec<Loaded>,
    attachments: Vec<Attachment>,
    /// The global programs' links, held for their `Drop`.
    global: Vec<HeldLink>,
    /// Attach point -> its cgroup programs' links, and the id of the cgroup they are on.
    points: BTreeMap<String, (u64, Vec<CgroupLink>)>,
    /// The cgroup2 mount, for attach points.
    cgroups: Option<Cgroups>,
    /// Where this run pins its links (persistence on).
    pins: Option<PathBuf>,
    /// The kernel's answer the first time it refused a BPF LSM program.
    lsm_refusal: Option<String>,
}

/// Who reports the events of a loaded object's programs (see `fence_common::Map::Reporter`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reporting {
    /// The run's token (`fence_common::globals::RUN`); 0: its programs never report (a probe).
    pub token: u64,
    /// The directory where the maps every run shares are pinned (persistence on,
    /// `persist::SHARED_MAPS`): reused if they are there, created and pinned there if not.
    /// `None`: the object's own maps.
    pub shared: Option<PathBuf>,
}

/// The reporter map: which run's programs report events (see `fence_common::Map::Reporter`).
pub struct Reporter {
    map: Array<MapData, u64>,
    /// This run's token.
    token: u64,
}

impl Reporter {
    /// The token of the run whose programs report now (0: none).
    pub fn current(&self) -> Result<u64, MapsError> {
        self.map.get(&0, 0).map_err(|source| MapsError::Map { map: Map::Reporter.name(), source })
    }

    /// Makes this run's programs the ones that report, and every other run's stop (one map
    /// write: a program reads the old value or the new one).
    pub fn claim(&mut self) -> Result<(), MapsError> {
        self.map.set(0, &self.token, 0).map_err(|source| MapsError::Map { map: Map::Reporter.name(), source })
    }
}

impl Loader {
    /// Loads the object (no program yet). `offsets` (from BTF) are needed by every program
    /// that reads kernel structures; without them only the cgroup programs can load.
    pub fn open(offsets: Option<KernelOffsets>, reporting: &Reporting) -> Result<Loader, LoadError> {
        let object = ebpf_object::bytes();
        if object.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock_limit();
        let global = offsets.unwrap_or_default();
        let mut ebpf = EbpfLoader::new();
        ebpf.override_global(globals::OFFSETS, &global, true).override_global(globals::RUN, &reporting.token, true);
        if let Some(dir) = &reporting.shared {
            for (map, name) in crate::persist::SHARED_MAPS {
                ebpf.map_pin_path(map.name(), crate::persist::shared_pin(dir, name));
            }
        }
        let bpf = ebpf.load(object).map_err(LoadError::Load)?;
        let btf = match offsets {
            None => Err("/sys/kernel/btf/vmlinux is missing or unreadable".to_owned()),
            Some(_) => aya::Btf::from_sys_fs().map_err(|e| e.to_string()),
        };
        Ok(Loader {
            bpf,
            btf,
            loaded: Vec::new(),
            attachments: Vec::new(),
            global: Vec::new(),
            points: BTreeMap::new(),
            cgroups: None,
            pins: None,
            lsm_refusal: None,
        })
    }

    /// Links attached from now on are pinned under `dir` (this run's `links` directory).
    pub fn pin_under(&mut self, dir: PathBuf) {
        self.pins = Some(dir);
    }

    /// Why programs that read kernel structures cannot load here, if they cannot.
    pub fn btf_missing(&self) -> Option<&str> {
        self.btf.as_ref().err().map(String::as_str)
    }

    /// The kernel's answer the first time it refused a BPF LSM program.
    pub fn lsm_refusal(&self) -> Option<&str> {
        self.lsm_refusal.as_deref()
    }

    /// Loads a cgroup socket-address program (connect4, sendmsg6...), attached as `attach`.
    pub fn load_sock_addr(
        &mut self,
        program: &'static str,
        hook: &'static str,
        attach: bpf_attach_type,
    ) -> Result<(), LoadError> {
        let started = std::time::Instant::now();
        let p: &mut CgroupSockAddr = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        self.record(Loaded { program, hook, kind: HookKind::Cgroup(attach) }, started);
        Ok(())
    }

    /// Loads the `cgroup/sock_create` program.
    pub fn load_sock(&mut self, program: &'static str, hook: &'static str) -> Result<(), LoadError> {
        let started = std::time::Instant::now();
        let p: &mut CgroupSock = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        let kind = HookKind::Cgroup(bpf_attach_type::BPF_CGROUP_INET_SOCK_CREATE);
        self.record(Loaded { program, hook, kind }, started);
        Ok(())
    }

    /// Loads a `cgroup_skb/egress` program.
    pub fn load_skb_egress(&mut self, program: &'static str, hook: &'static str) -> Result<(), LoadError> {
        let started = std::time::Instant::now();
        let p: &mut CgroupSkb = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        self.record(Loaded { program, hook, kind: HookKind::Cgroup(bpf_attach_type::BPF_CGROUP_INET_EGRESS) }, started);
        Ok(())
    }

    /// Loads a `cgroup/sysctl` program.
    pub fn load_sysctl(&mut self, program: &'static str, hook: &'static str) -> Result<(), LoadError> {
        let started = std::time::Instant::now();
        let p: &mut CgroupSysctl = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        self.record(Loaded { program, hook, kind: HookKind::Cgroup(bpf_attach_type::BPF_CGROUP_SYSCTL) }, started);
        Ok(())
    }

    /// Loads a BPF LSM program for `hook`; the error is the kernel's answer in one line.
    pub fn load_lsm(&mut self, program: &'static str, hook: &'static str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        let p: &mut Lsm = program_mut(&mut self.bpf, program).map_err(|e| e.to_string())?;
        if let Err(e) = p.load(hook, btf) {
            let why = refusal(&e);
            self.lsm_refusal.get_or_insert_with(|| why.clone());
            return Err(why);
        }
        log_lsm_loaded(program, p, started);
        self.loaded.push(Loaded { program, hook, kind: HookKind::Lsm });
        Ok(())
    }

    /// Loads several BPF LSM programs, all or none: the kernel verifies each on its own, so
    /// they are verified on parallel threads (one per CPU, at most four), which halves the
    /// agent's start-up on two CPUs. The error is the kernel's answer for the first refused
    /// program in `programs`' order (`lsm/HOOK refused (...)`); then none of them is attached.
    pub fn load_lsm_all(&mut self, programs: &[(&'static str, &'static str)]) -> Result<(), String> {
        let started = std::time::Instant::now();
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        #[allow(clippy::type_complexity)]
        let mut jobs: Vec<(usize, &'static str, &'static str, &mut Lsm)> = Vec::with_capacity(programs.len());
        for (name, program) in self.bpf.programs_mut() {
            if let Some((i, &(wanted, hook))) = programs.iter().enumerate().find(|(_, (p, _))| *p == name) {
                let lsm: &mut Lsm = program.try_into().map_err(|e: ProgramError| format!("{wanted}: {e}"))?;
                jobs.push((i, wanted, hook, lsm));
            }
        }
        if let Some(&(missing, _)) = programs.iter().find(|(p, _)| !jobs.iter().any(|j| j.1 == *p)) {
            return Err(LoadError::MissingProgram(missing).to_string());
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        // Longest first would balance better, but the names give no size; round-robin is
        // within a program's time of it.
        let mut lanes: Vec<Vec<(usize, &'static str, &'static str, &mut Lsm)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (n, job) in jobs.into_iter().enumerate() {
            lanes[n % threads].push(job);
        }
        let mut outcomes: Vec<(usize, Result<(), ProgramError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    scope.spawn(move || {
                        lane.into_iter()
                            .map(|(i, name, hook, p)| {
                                let started = std::time::Instant::now();
                                let loaded = p.load(hook, btf);
                                if loaded.is_ok() {
                                    log_lsm_loaded(name, p, started);
                                }
                                (i, loaded)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        outcomes.sort_by_key(|(i, _)| *i);
        if outcomes.len() != programs.len() {
            return Err("a thread loading BPF LSM programs panicked".to_owned());
        }
        if let Some((i, Err(e))) = outcomes.iter().find(|(_, r)| r.is_err()) {
            let why = refusal(e);
            self.lsm_refusal.get_or_insert_with(|| why.clone());
            return Err(format!("lsm/{} refused ({why})", programs[*i].1));
        }
        tracing::debug!(
            programs = programs.len(),
            threads,
            ms = started.elapsed().as_millis() as u64,
            "LSM programs loaded"
        );
        for &(program, hook) in programs {
            self.loaded.push(Loaded { program, hook, kind: HookKind::Lsm });
        }
        Ok(())
    }

    /// Loads a BPF LSM program that runs per cgroup (attached at the attach points, so only
    /// tasks in fenced subtrees run it); the error is the kernel's answer in one line.
    pub fn load_lsm_cgroup(&mut self, program: &'static str, hook: &'static str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        let p: &mut LsmCgroup = program_mut(&mut self.bpf, program).map_err(|e| e.to_string())?;
        if let Err(e) = p.load(hook, btf) {
            let why = refusal(&e);
            self.lsm_refusal.get_or_insert_with(|| why.clone());
            return Err(why);
        }
        self.record(Loaded { program, hook, kind: HookKind::Cgroup(bpf_attach_type::BPF_LSM_CGROUP) }, started);
        Ok(())
    }

    /// Loads a `tp_btf` program on `tracepoint`; the error is the kernel's answer in one line.
    pub fn load_tracepoint(&mut self, program: &'static str, tracepoint: &'static str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        let p: &mut BtfTracePoint = program_mut(&mut self.bpf, program).map_err(|e| e.to_string())?;
        p.load(tracepoint, btf).map_err(|e| refusal(&e))?;
        self.record(Loaded { program, hook: tracepoint, kind: HookKind::Tracepoint }, started);
        Ok(())
    }

    /// Keeps `loaded` for attaching, with how long the kernel took to verify it (the bulk of
    /// the agent's start-up under emulation).
    fn record(&mut self, loaded: Loaded, started: std::time::Instant) {
        tracing::debug!(program = loaded.program, ms = started.elapsed().as_millis() as u64, "program loaded");
        self.loaded.push(loaded);
    }

    /// The policy maps, for the policy service.
    pub fn take_policy_maps(&mut self) -> Result<AyaPolicyMaps, MapsError> {
        AyaPolicyMaps::take(&mut self.bpf)
    }

    /// Marks process `tgid`, in cgroup `cgroup_id`, as the agent: never fenced while in that
    /// cgroup, and protected from fenced tasks (signals, ptrace) whatever cgroup it ends up in.
    pub fn protect_agent(&mut self, tgid: u32, cgroup_id: u64) -> Result<(), MapsError> {
        let map = Map::AgentTasks;
        let err = |source| MapsError::Map { map: map.name(), source };
        let raw = self.bpf.map_mut(map.name()).ok_or(MapsError::Missing(map.name()))?;
        let mut tasks: HashMap<&mut MapData, u32, u64> = HashMap::try_from(raw).map_err(err)?;
        tasks.insert(&tgid, &cgroup_id, 0).map_err(err)
    }

    /// Hands over the maps of egress by name (resolvers, learned addresses).
    pub fn take_dns_maps(&mut self) -> Result<super::dns_maps::AyaDnsMaps, MapsError> {
        super::dns_maps::AyaDnsMaps::take(|name| self.bpf.take_map(name))
    }

    /// Hands over the reporter map (which run's programs report events), for `token`'s run.
    /// The grant table (see [`super::grant_maps`]).
    pub fn take_grant_maps(&mut self) -> Result<super::grant_maps::AyaGrantMaps, MapsError> {
        super::grant_maps::AyaGrantMaps::take(|name| self.bpf.take_map(name))
    }

    pub fn take_reporter(&mut self, token: u64) -> Result<Reporter, MapsError> {
        let name = Map::Reporter.name();
        let map = self.bpf.take_map(name).ok_or(MapsError::Missing(name))?;
        let map = Array::try_from(map).map_err(|source| MapsError::Map { map: name, source })?;
        Ok(Reporter { map, token })
    }

    /// Sets the kernel's event rate limit.
    pub fn set_event_limit(&mut self, limit: EventLimit) -> Result<(), MapsError> {
        let map = Map::EventLimit;
        let err = |source| MapsError::Map { map: map.name(), source };
        let raw = self.bpf.map_mut(map.name()).ok_or(MapsError::Missing(map.name()))?;
        let mut array: Array<&mut MapData, EventLimit> = Array::try_from(raw).map_err(err)?;
        array.set(0, &limit, 0).map_err(err)
    }

    /// Hands the event ring buffer to the event writer, pinning it at `pin` first (so that a
    /// later agent can read what the programs record after this one exits).
    pub fn take_events(&mut self, pin: Option<&Path>) -> Result<RingBuf<MapData>, MapsError> {
        let name = Map::Events.name();
        let map = self.bpf.take_map(name).ok_or(MapsError::Missing(name))?;
        if let Some(path) = pin
            && let Err(e) = map.pin(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "pinning the event buffer failed; events while no agent runs are lost");
        }
        RingBuf::try_from(map).map_err(|source| MapsError::Map { map: name, source })
    }

    /// Hands the rate limiter's state and the counters to the event writer (for summaries),
    /// pinning them at `pins` first (counters, rate), so that a later agent can report what
    /// this run's programs lost or suppressed after this agent's last summary.
    pub fn take_event_stats(&mut self, pins: Option<(&Path, &Path)>) -> Result<KernelStats, MapsError> {
        let take = |bpf: &mut Ebpf, map: Map| bpf.take_map(map.name()).ok_or(MapsError::Missing(map.name()));
        let rate = take(&mut self.bpf, Map::EventRate)?;
        let counters = take(&mut self.bpf, Map::Counters)?;
        if let Some((counters_pin, rate_pin)) = pins {
            for (map, path) in [(&counters, counters_pin), (&rate, rate_pin)] {
                if let Err(e) = map.pin(path) {
                    tracing::warn!(error = %e, path = %path.display(), "pinning an event counter map failed; what is lost while no agent runs is not reported");
                }
            }
        }
        Ok(KernelStats {
            rate: aya::maps::HashMap::try_from(rate)
                .map_err(|source| MapsError::Map { map: Map::EventRate.name(), source })?,
            counters: PerCpuArray::try_from(counters)
                .map_err(|source| MapsError::Map { map: Map::Counters.name(), source })?,
        })
    }

    /// Attaches the global programs (LSM, tracepoints), pinned when persistence is on. The
    /// cgroup programs attach at attach points (see [`Attacher`]).
    pub fn attach_global(&mut self, cgroups: &Cgroups) -> Result<(), LoadError> {
        self.cgroups = Some(cgroups.clone());
        for l in self.loaded.clone() {
            let name = l.program;
            let err = |source| LoadError::Program { name, source };
            let (link, target): (FdLink, &str) = match l.kind {
                HookKind::Cgroup(_) => continue,
                HookKind::Lsm => {
                    let p: &mut Lsm = program_mut(&mut self.bpf, name)?;
                    let id = p.attach().map_err(err)?;
                    (p.take_link(id).map_err(err)?.into(), "lsm")
                }
                HookKind::Tracepoint => {
                    let p: &mut BtfTracePoint = program_mut(&mut self.bpf, name)?;
                    let id = p.attach().map_err(err)?;
                    (p.take_link(id).map_err(err)?.into(), "tracepoint")
                }
            };
            let held = match &self.pins {
                // The pinned link holds the attachment; it outlives this process.
                Some(dir) => HeldLink::Pinned(link.pin(dir.join(name)).map_err(|e| LoadError::Attach {
                    program: name,
                    target: target.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })?),
                None => HeldLink::Held(link),
            };
            self.global.push(held);
            self.attachments.push(Attachment { program: name, hook: l.hook, target: target.to_owned() });
        }
        Ok(())
    }

    /// The global programs and where they are attached.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    fn attach_one(
        &mut self,
        name: &'static str,
        attach_type: bpf_attach_type,
        cgroup: &File,
        point: &str,
        cgroup_id: u64,
    ) -> Result<CgroupLink, LoadError> {
        let err = |source| LoadError::Attach { program: name, target: point.to_owned(), source };
        let program = self.bpf.program(name).ok_or(LoadError::MissingProgram(name))?;
        let fd = program.fd().map_err(|source| LoadError::Program { name, source })?;
        let mut link = CgroupLink::create(fd.as_fd(), cgroup.as_fd(), attach_type).map_err(err)?;
        if let Some(dir) = &self.pins
            && let Err(e) = link.pin(&dir.join(format!("{name}@{cgroup_id}")))
        {
            let _ = link.detach();
            return Err(err(e));
        }
        Ok(link)
    }
}

impl Attacher for Loader {
    fn points(&self) -> Vec<String> {
        self.points.keys().cloned().collect()
    }

    fn attach(&mut self, point: &str) -> Result<(), LoadError> {
        if self.points.contains_key(point) {
            return Ok(());
        }
        let dir = self.cgroups.as_ref().map_or_else(|| PathBuf::from(point), |c| c.dir(point));
        let cgroup = File::open(&dir).map_err(|source| LoadError::Cgroup { path: dir.clone(), source })?;
        let cgroup_id = crate::cgroup::id_of(&dir).unwrap_or(0);
        let mut links = Vec::new();
        for l in self.loaded.clone() {
            let HookKind::Cgroup(attach_type) = l.kind else { continue };
            match self.attach_one(l.program, attach_type, &cgroup, point, cgroup_id) {
                Ok(link) => links.push(link),
                Err(e) => {
                    for link in links {
                        let _ = link.detach();
                    }
                    return Err(e);
                }
            }
        }
        tracing::info!(point, programs = links.len(), "cgroup programs attached");
        self.points.insert(point.to_owned(), (cgroup_id, links));
        Ok(())
    }

    fn stale(&self) -> Vec<String> {
        let Some(cgroups) = &self.cgroups else { return Vec::new() };
        self.points
            .iter()
            .filter(|(point, (id, _))| crate::cgroup::id_of(&cgroups.dir(point)).ok() != Some(*id))
            .map(|(point, _)| point.clone())
            .collect()
    }

    fn detach(&mut self, point: &str) {
        let Some((_, links)) = self.points.remove(point) else { return };
        for link in links {
            if let Err(e) = link.detach() {
                tracing::warn!(point, error = %e, "detaching a cgroup program failed");
            }
        }
        tracing::info!(point, "cgroup programs detached");
    }
}

fn program_mut<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memory cgroup.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}
