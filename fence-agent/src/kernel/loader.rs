//! Loads fence's eBPF object and its programs, attaches and pins them. The fence units (see
//! [`crate::fences`]) choose which programs to load; this module only knows how. It keeps the
//! programs and their links; the policy maps go to the policy service, the event maps to the
//! event writer.

use std::{fs::File, path::Path, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, ProgramError, links::FdLink},
};
use fence_common::{EventLimit, KernelOffsets, Map, globals};
use thiserror::Error;

use super::{AyaPolicyMaps, MapsError};
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
    #[error("cannot open the cgroup2 root {path}: {source}")]
    CgroupRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// A program whose link could not be pinned.
#[derive(Debug, Error)]
#[error("pinning the link of {program} failed: {why}")]
pub struct PinFailure {
    pub program: &'static str,
    pub why: String,
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
    SockAddr,
    Sock,
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

/// An attached program's link, kept to be pinned.
enum LinkHandle {
    SockAddr(aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId),
    Sock(aya::programs::cgroup_sock::CgroupSockLinkId),
    Lsm(aya::programs::lsm::LsmLinkId),
    Tracepoint(aya::programs::tp_btf::BtfTracePointLinkId),
}

/// aya attaches with BPF_LINK_CREATE (kernel >= 5.7), which takes no flags for cgroups and
/// always gives multi-program semantics: our programs run alongside other tools' programs and
/// cannot be overridden by programs attached lower in the tree.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

pub struct Loader {
    bpf: Ebpf,
    /// The kernel's BTF for LSM and tracing programs, or why there is none usable.
    btf: Result<aya::Btf, String>,
    loaded: Vec<Loaded>,
    attachments: Vec<Attachment>,
    links: Vec<(&'static str, LinkHandle)>,
    /// The kernel's answer the first time it refused a BPF LSM program.
    lsm_refusal: Option<String>,
}

impl Loader {
    /// Loads the object (no program yet). `offsets` (from BTF) are needed by every program
    /// that reads kernel structures; without them only the network programs can load.
    pub fn open(offsets: Option<KernelOffsets>) -> Result<Loader, LoadError> {
        let object = ebpf_object::bytes();
        if object.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock_limit();
        let global = offsets.unwrap_or_default();
        let bpf =
            EbpfLoader::new().override_global(globals::OFFSETS, &global, true).load(object).map_err(LoadError::Load)?;
        let btf = match offsets {
            None => Err("/sys/kernel/btf/vmlinux is missing or unreadable".to_owned()),
            Some(_) => aya::Btf::from_sys_fs().map_err(|e| e.to_string()),
        };
        Ok(Loader { bpf, btf, loaded: Vec::new(), attachments: Vec::new(), links: Vec::new(), lsm_refusal: None })
    }

    /// Why programs that read kernel structures cannot load here, if they cannot.
    pub fn btf_missing(&self) -> Option<&str> {
        self.btf.as_ref().err().map(String::as_str)
    }

    /// The kernel's answer the first time it refused a BPF LSM program.
    pub fn lsm_refusal(&self) -> Option<&str> {
        self.lsm_refusal.as_deref()
    }

    /// Loads a `cgroup/<hook>` socket-address program (connect4, sendmsg6...).
    pub fn load_sock_addr(&mut self, program: &'static str, hook: &'static str) -> Result<(), LoadError> {
        let p: &mut CgroupSockAddr = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        self.loaded.push(Loaded { program, hook, kind: HookKind::SockAddr });
        Ok(())
    }

    /// Loads a `cgroup/sock_create`-style socket program.
    pub fn load_sock(&mut self, program: &'static str, hook: &'static str) -> Result<(), LoadError> {
        let p: &mut CgroupSock = program_mut(&mut self.bpf, program)?;
        p.load().map_err(|source| LoadError::Program { name: program, source })?;
        self.loaded.push(Loaded { program, hook, kind: HookKind::Sock });
        Ok(())
    }

    /// Loads a BPF LSM program for `hook`; the error is the kernel's answer in one line.
    pub fn load_lsm(&mut self, program: &'static str, hook: &'static str) -> Result<(), String> {
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        let p: &mut Lsm = program_mut(&mut self.bpf, program).map_err(|e| e.to_string())?;
        if let Err(e) = p.load(hook, btf) {
            let why = refusal(&e);
            self.lsm_refusal.get_or_insert_with(|| why.clone());
            return Err(why);
        }
        self.loaded.push(Loaded { program, hook, kind: HookKind::Lsm });
        Ok(())
    }

    /// Loads a `tp_btf` program on `tracepoint`; the error is the kernel's answer in one line.
    pub fn load_tracepoint(&mut self, program: &'static str, tracepoint: &'static str) -> Result<(), String> {
        let btf = self.btf.as_ref().map_err(|why| format!("needs the kernel's BTF ({why})"))?;
        let p: &mut BtfTracePoint = program_mut(&mut self.bpf, program).map_err(|e| e.to_string())?;
        p.load(tracepoint, btf).map_err(|e| refusal(&e))?;
        self.loaded.push(Loaded { program, hook: tracepoint, kind: HookKind::Tracepoint });
        Ok(())
    }

    /// The policy maps, for the policy service.
    pub fn take_policy_maps(&mut self) -> Result<AyaPolicyMaps, MapsError> {
        AyaPolicyMaps::take(&mut self.bpf)
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

    /// Hands the rate limiter's state and the counters to the event writer (for summaries).
    pub fn take_event_stats(&mut self) -> Result<KernelStats, MapsError> {
        let take = |bpf: &mut Ebpf, map: Map| bpf.take_map(map.name()).ok_or(MapsError::Missing(map.name()));
        let rate = take(&mut self.bpf, Map::EventRate)?;
        let counters = take(&mut self.bpf, Map::Counters)?;
        Ok(KernelStats {
            rate: aya::maps::HashMap::try_from(rate)
                .map_err(|source| MapsError::Map { map: Map::EventRate.name(), source })?,
            counters: PerCpuArray::try_from(counters)
                .map_err(|source| MapsError::Map { map: Map::Counters.name(), source })?,
        })
    }

    /// Attaches the loaded programs: the socket programs at the root of the cgroup2 hierarchy
    /// (every cgroup, including ones created later, is covered; unfenced tasks are let through
    /// at the first lookup), the LSM and tracepoint programs globally.
    pub fn attach(&mut self, cgroups: &Cgroups) -> Result<(), LoadError> {
        let root = cgroups.root().to_owned();
        let root_fd = File::open(&root).map_err(|source| LoadError::CgroupRoot { path: root.clone(), source })?;
        for l in self.loaded.clone() {
            let name = l.program;
            let err = |source| LoadError::Program { name, source };
            let (handle, target) = match l.kind {
                HookKind::SockAddr => {
                    let p: &mut CgroupSockAddr = program_mut(&mut self.bpf, name)?;
                    (LinkHandle::SockAddr(p.attach(&root_fd, LINK_MODE).map_err(err)?), root.display().to_string())
                }
                HookKind::Sock => {
                    let p: &mut CgroupSock = program_mut(&mut self.bpf, name)?;
                    (LinkHandle::Sock(p.attach(&root_fd, LINK_MODE).map_err(err)?), root.display().to_string())
                }
                HookKind::Lsm => {
                    let p: &mut Lsm = program_mut(&mut self.bpf, name)?;
                    (LinkHandle::Lsm(p.attach().map_err(err)?), "lsm".to_owned())
                }
                HookKind::Tracepoint => {
                    let p: &mut BtfTracePoint = program_mut(&mut self.bpf, name)?;
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
    pub fn pin_links(&mut self, dir: &Path) -> Result<(), PinFailure> {
        for (name, handle) in std::mem::take(&mut self.links) {
            let failure = |why: String| PinFailure { program: name, why };
            let fd_link = self.fd_link(name, handle).map_err(failure)?;
            // The pinned link holds the attachment; our FdLink may drop.
            fd_link.pin(dir.join(name)).map_err(|e| failure(e.to_string()))?;
        }
        Ok(())
    }

    fn fd_link(&mut self, name: &'static str, handle: LinkHandle) -> Result<FdLink, String> {
        let link_err = |e: aya::programs::links::LinkError| e.to_string();
        Ok(match handle {
            LinkHandle::SockAddr(id) => {
                let p: &mut CgroupSockAddr = program_mut(&mut self.bpf, name).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(link_err)?
            }
            LinkHandle::Sock(id) => {
                let p: &mut CgroupSock = program_mut(&mut self.bpf, name).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(link_err)?
            }
            LinkHandle::Lsm(id) => {
                let p: &mut Lsm = program_mut(&mut self.bpf, name).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.into()
            }
            LinkHandle::Tracepoint(id) => {
                let p: &mut BtfTracePoint = program_mut(&mut self.bpf, name).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.into()
            }
        })
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
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

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memory cgroup.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}
