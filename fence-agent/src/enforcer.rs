//! The single owner of the loaded eBPF object: loads and attaches the programs, and applies
//! compiled policy atomically (write the inactive generation, flip, clear the old one).
//! Nothing else in the agent touches the kernel maps that decide.

use std::{fs::File, io, path::PathBuf, thread, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError},
};
use fence_common::{
    ABI_VERSION, ActiveState, CgroupKey, IdentityKey, NET_KEY_PREFIX_BITS, Net4Key, Net6Key,
    NetRules, counter, maps, programs,
};
use thiserror::Error;

use crate::{cgroup::Cgroups, compile::CompiledPolicy, ebpf_object};

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
    Missing {
        kind: &'static str,
        name: &'static str,
    },
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

/// A network hook and where it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub hook: &'static str,
    pub cgroup: PathBuf,
}

/// What one apply wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub generation: u32,
    pub sequence: u64,
    pub entries: usize,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub events_sent: u64,
    pub ringbuf_full: u64,
}

pub struct Enforcer {
    bpf: Ebpf,
    generation: u32,
    sequence: u64,
    attachments: Vec<Attachment>,
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
    /// Loads the programs and attaches them at the root of the cgroup2 hierarchy (so that every
    /// cgroup, including ones created later, is covered; unfenced tasks are let through at the
    /// first lookup). Attachments are multi-program links: other tools' programs keep running.
    pub fn load(cgroups: &Cgroups) -> Result<Enforcer, EnforcerError> {
        let object = ebpf_object::bytes();
        if object.is_empty() {
            return Err(EnforcerError::NoObject);
        }
        raise_memlock_limit();
        let mut bpf = EbpfLoader::new()
            .load(object)
            .map_err(EnforcerError::Load)?;
        let root = cgroups.root().to_owned();
        let root_fd = File::open(&root).map_err(|source| EnforcerError::CgroupRoot {
            path: root.clone(),
            source,
        })?;
        let mut attachments = Vec::new();
        for (name, hook) in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or(EnforcerError::Missing {
                    kind: "program",
                    name,
                })?
                .try_into()
                .map_err(|source| EnforcerError::Program { name, source })?;
            program
                .load()
                .map_err(|source| EnforcerError::Program { name, source })?;
            program
                .attach(&root_fd, LINK_MODE)
                .map_err(|source| EnforcerError::Program { name, source })?;
            attachments.push(Attachment {
                program: name,
                hook,
                cgroup: root.clone(),
            });
        }
        let name = programs::SOCK_CREATE;
        let program: &mut CgroupSock = bpf
            .program_mut(name)
            .ok_or(EnforcerError::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|source| EnforcerError::Program { name, source })?;
        program
            .load()
            .map_err(|source| EnforcerError::Program { name, source })?;
        program
            .attach(&root_fd, LINK_MODE)
            .map_err(|source| EnforcerError::Program { name, source })?;
        attachments.push(Attachment {
            program: name,
            hook: "cgroup/sock_create",
            cgroup: root,
        });
        let active = read_active(&bpf)?;
        Ok(Enforcer {
            bpf,
            generation: active.generation & 1,
            sequence: active.sequence,
            attachments,
        })
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Hands the event ring buffer to the event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EnforcerError> {
        let map = self
            .bpf
            .take_map(maps::EVENTS)
            .ok_or(EnforcerError::Missing {
                kind: "map",
                name: maps::EVENTS,
            })?;
        RingBuf::try_from(map).map_err(|source| EnforcerError::Map {
            map: maps::EVENTS,
            source,
        })
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
        let state = ActiveState {
            generation: next,
            abi: ABI_VERSION,
            sequence,
        };
        self.map_array::<ActiveState>(maps::ACTIVE)?
            .set(0, &state, 0)
            .map_err(|source| EnforcerError::Map {
                map: maps::ACTIVE,
                source,
            })?;
        let old = self.generation;
        self.generation = next;
        self.sequence = sequence;
        // Hooks that read the old generation number just before the flip may still be looking
        // up its entries; let them finish before the entries go.
        rcu_grace_period();
        if let Err(e) = self.clear_generation(old) {
            tracing::warn!(error = %e, generation = old, "clearing the previous policy generation failed; it is no longer live");
        }
        Ok(ApplyReport {
            generation: next,
            sequence,
            entries,
        })
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, EnforcerError> {
        let map = self.bpf.map(maps::COUNTERS).ok_or(EnforcerError::Missing {
            kind: "map",
            name: maps::COUNTERS,
        })?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| EnforcerError::Map {
                map: maps::COUNTERS,
                source,
            })?;
        let sum = |index: u32| -> Result<u64, EnforcerError> {
            let values = array.get(&index, 0).map_err(|source| EnforcerError::Map {
                map: maps::COUNTERS,
                source,
            })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Counters {
            events_sent: sum(counter::EVENTS_SENT)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
        })
    }

    fn write_generation(&mut self, g: u32, p: &CompiledPolicy) -> Result<usize, EnforcerError> {
        let mut n = 0;
        {
            let mut identities =
                self.map_hash::<IdentityKey, fence_common::IdentityInfo>(maps::IDENTITIES)?;
            for identity in &p.identities {
                let key = IdentityKey {
                    generation: g,
                    identity: identity.id,
                };
                identities
                    .insert(&key, &identity.info, 0)
                    .map_err(|source| EnforcerError::Map {
                        map: maps::IDENTITIES,
                        source,
                    })?;
                n += 1;
            }
        }
        {
            let mut net4 = self.map_lpm::<Net4Key>(maps::NET4)?;
            for e in &p.net4 {
                let key = Key::new(
                    NET_KEY_PREFIX_BITS + u32::from(e.prefix_len),
                    Net4Key {
                        generation: g,
                        identity: e.identity,
                        addr: e.addr,
                    },
                );
                net4.insert(&key, &e.rules, 0)
                    .map_err(|source| EnforcerError::Map {
                        map: maps::NET4,
                        source,
                    })?;
                n += 1;
            }
        }
        {
            let mut net6 = self.map_lpm::<Net6Key>(maps::NET6)?;
            for e in &p.net6 {
                let key = Key::new(
                    NET_KEY_PREFIX_BITS + u32::from(e.prefix_len),
                    Net6Key {
                        generation: g,
                        identity: e.identity,
                        addr: e.addr,
                    },
                );
                net6.insert(&key, &e.rules, 0)
                    .map_err(|source| EnforcerError::Map {
                        map: maps::NET6,
                        source,
                    })?;
                n += 1;
            }
        }
        // Cgroup bindings last: an identity is only reachable once its rules are in place.
        let mut cgroups = self.map_hash::<CgroupKey, u32>(maps::CGROUPS)?;
        for &(cgroup_id, identity) in &p.cgroups {
            let key = CgroupKey {
                cgroup_id,
                generation: g,
                _pad: 0,
            };
            cgroups
                .insert(&key, &identity, 0)
                .map_err(|source| EnforcerError::Map {
                    map: maps::CGROUPS,
                    source,
                })?;
            n += 1;
        }
        Ok(n)
    }

    fn clear_generation(&mut self, g: u32) -> Result<(), EnforcerError> {
        let err = |map| move |source| EnforcerError::Map { map, source };
        {
            let mut m = self.map_hash::<CgroupKey, u32>(maps::CGROUPS)?;
            let keys: Vec<CgroupKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.generation == g)
                .collect();
            for k in keys {
                remove_ok_if_gone(m.remove(&k)).map_err(err(maps::CGROUPS))?;
            }
        }
        {
            let mut m =
                self.map_hash::<IdentityKey, fence_common::IdentityInfo>(maps::IDENTITIES)?;
            let keys: Vec<IdentityKey> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.generation == g)
                .collect();
            for k in keys {
                remove_ok_if_gone(m.remove(&k)).map_err(err(maps::IDENTITIES))?;
            }
        }
        {
            let mut m = self.map_lpm::<Net4Key>(maps::NET4)?;
            let keys: Vec<Key<Net4Key>> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().generation == g)
                .collect();
            for k in keys {
                remove_ok_if_gone(m.remove(&k)).map_err(err(maps::NET4))?;
            }
        }
        let mut m = self.map_lpm::<Net6Key>(maps::NET6)?;
        let keys: Vec<Key<Net6Key>> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().generation == g)
            .collect();
        for k in keys {
            remove_ok_if_gone(m.remove(&k)).map_err(err(maps::NET6))?;
        }
        Ok(())
    }

    fn map_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, EnforcerError> {
        let map = self
            .bpf
            .map_mut(name)
            .ok_or(EnforcerError::Missing { kind: "map", name })?;
        HashMap::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })
    }

    fn map_lpm<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, NetRules>, EnforcerError> {
        let map = self
            .bpf
            .map_mut(name)
            .ok_or(EnforcerError::Missing { kind: "map", name })?;
        LpmTrie::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })
    }

    fn map_array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, EnforcerError> {
        let map = self
            .bpf
            .map_mut(name)
            .ok_or(EnforcerError::Missing { kind: "map", name })?;
        Array::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })
    }
}

fn read_active(bpf: &Ebpf) -> Result<ActiveState, EnforcerError> {
    let name = maps::ACTIVE;
    let map = bpf
        .map(name)
        .ok_or(EnforcerError::Missing { kind: "map", name })?;
    let array: Array<&MapData, ActiveState> =
        Array::try_from(map).map_err(|source| EnforcerError::Map { map: name, source })?;
    array
        .get(&0, 0)
        .map_err(|source| EnforcerError::Map { map: name, source })
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
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}
