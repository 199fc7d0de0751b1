//! Enforcement that outlives the agent. Each agent run pins its program links (and its event
//! ring buffer) under `<pin_dir>/<run>/`; the kernel keeps the programs attached, with the
//! maps they use, as long as the pins exist, whatever happens to the process.
//!
//! A starting agent never leaves a window: it loads its programs, fills its maps with the
//! policy, attaches, pins, and only then removes earlier runs' pins (writing out the events
//! their programs recorded while no agent was reading). Until that moment the earlier run's
//! programs enforce; for that instant both do, with the same policy.
//!
//! While both do, each decision is reported once: every run of one ABI shares the reporter
//! map (pinned beside the runs, [`SHARED_MAPS`]), which names the run whose programs report
//! ([`fence_common::Map::Reporter`]). The new run takes the reporting over in one write, waits
//! for the programs that read the old value, and only then writes out the earlier run's ring
//! buffer and its counters (events lost, events suppressed), which no longer change.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf};
use thiserror::Error;

use crate::events::summary::KernelStats;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("cannot mount bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Where this run's pins live.
pub struct Run {
    pub dir: PathBuf,
    /// The run's token (in its directory's name): its programs report while the reporter map
    /// holds it.
    pub token: u64,
}

impl Run {
    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn events(&self) -> PathBuf {
        self.dir.join("events")
    }

    /// The event counters (`fence_common::Map::Counters`).
    pub fn counters(&self) -> PathBuf {
        self.dir.join(COUNTERS)
    }

    /// The rate limiter's state, with its suppressed counts (`fence_common::Map::EventRate`).
    pub fn rate(&self) -> PathBuf {
        self.dir.join(RATE)
    }

    /// The directory's name, which names the run in the event writer's saved counts.
    pub fn name(&self) -> String {
        name_of(&self.dir)
    }
}

const COUNTERS: &str = "counters";
const RATE: &str = "rate";

/// The name of a run's directory.
pub fn name_of(run: &Path) -> String {
    run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, whole: a
/// temporary file beside it (0600, not following a symlink planted there), synced, renamed
/// over `path`, and the directory synced. The directory is created if missing.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The maps every run of this ABI shares, pinned in the pin directory beside the runs, with
/// the name each pin starts with: the reporter (see above), and egress by name's resolvers,
/// steered sockets and learned addresses, which outlive a restart or an upgrade (a learned
/// address keeps its expiry; a socket steered by the earlier run still gets its replies
/// rewritten), and the grant table, which the programs of every run judge (a grant ends, or is
/// revoked, for all of them at once), and which unfenced process chose each file's signal
/// receiver (a choice made before a restart still counts).
pub const SHARED_MAPS: [(fence_common::Map, &str); 8] = [
    (fence_common::Map::Reporter, "reporter"),
    (fence_common::Map::DnsResolvers, "dns-resolvers"),
    (fence_common::Map::DnsSteered, "dns-steered"),
    (fence_common::Map::Learned4, "learned4"),
    (fence_common::Map::Learned6, "learned6"),
    (fence_common::Map::Grants, "grants"),
    (fence_common::Map::GrantUses, "grant-uses"),
    (fence_common::Map::FileOwners, "file-owners"),
];

/// Where shared map `name` (of [`SHARED_MAPS`]) is pinned in `pin_dir`.
pub fn shared_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("{name}-abi{}", fence_common::ABI_VERSION))
}

/// The token of a run of this ABI, from its directory's name (`run-abi<N>-<token>`).
pub fn token_of(run: &Path) -> Option<u64> {
    let prefix = format!("run-abi{}-", fence_common::ABI_VERSION);
    run.file_name()?.to_str()?.strip_prefix(&prefix)?.parse().ok().filter(|t| *t != 0)
}

/// Whether the run named by the reporter map (`reporter`, a token) is among `earlier` runs
/// whose pins are still there: its programs are attached and report. If not, nobody reports,
/// and a starting run must take the reporting at once, before its programs attach.
pub fn reporter_alive(reporter: u64, earlier: &[PathBuf]) -> bool {
    reporter != 0 && earlier.iter().any(|r| token_of(r) == Some(reporter))
}

/// Makes sure a bpffs is mounted at (or above) `pin_dir`, mounting one at its parent
/// (`/sys/fs/bpf`) if none is, and creates this run's directory, named with its `token`.
pub fn prepare(pin_dir: &Path, token: u64) -> Result<Run, PersistError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PersistError::Io { path, source }
    };
    let mount_point = pin_dir.parent().unwrap_or(pin_dir);
    if !on_bpffs(mount_point) {
        fs::create_dir_all(mount_point).map_err(io(mount_point))?;
        nix::mount::mount(Some("bpf"), mount_point, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|source| PersistError::Mount { path: mount_point.to_owned(), source })?;
        tracing::info!(path = %mount_point.display(), "mounted bpffs");
        // A bpffs mounted in a private mount namespace (a sandboxed service) dies with it, and
        // the pins with it: enforcement would not outlive the agent.
        if fs::read_link("/proc/self/ns/mnt").ok() != fs::read_link("/proc/1/ns/mnt").ok() {
            tracing::warn!(
                path = %mount_point.display(),
                "bpffs was mounted inside the agent's own mount namespace: pinned enforcement will \
                 not survive the agent; mount bpffs on the host (systemd does at boot) at this path"
            );
        }
    }
    // The event layout's version is in the name: a later agent reads the buffer only if it
    // knows the layout (bpffs holds pins and directories, no plain files).
    let dir = pin_dir.join(format!("run-abi{}-{token}", fence_common::ABI_VERSION));
    fs::create_dir_all(dir.join("links")).map_err(io(&dir))?;
    Ok(Run { dir, token })
}

/// Whether `path` is on a bpf file system (BPF_FS_MAGIC).
fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Earlier runs' directories under `pin_dir` (all of them, or all but `keep`).
pub fn runs(pin_dir: &Path, keep: Option<&Path>) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = fs::read_dir(pin_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("run-")))
                .filter(|p| Some(p.as_path()) != keep)
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    runs
}

/// What an earlier run pinned for its events, if it used this run's layout.
pub struct Earlier {
    pub dir: PathBuf,
    /// Its event ring buffer.
    pub events: Option<RingBuf<MapData>>,
    /// Its counters and rate limiter state (what it lost and suppressed).
    pub stats: Option<KernelStats>,
}

/// Opens what an earlier run pinned for its events (nothing if it used another layout).
pub fn earlier(run: &Path) -> Earlier {
    let dir = run.to_owned();
    if token_of(run).is_none() {
        tracing::info!(run = %run.display(), "an earlier run used another event layout: its unread events and counts are not read");
        return Earlier { dir, events: None, stats: None };
    }
    let open = |name: &str| MapData::from_pin(run.join(name)).ok().and_then(|d| Map::from_map_data(d).ok());
    let events = open("events").and_then(|m| RingBuf::try_from(m).ok());
    let stats = match (open(COUNTERS), open(RATE)) {
        (Some(counters), Some(rate)) => match (PerCpuArray::try_from(counters), BpfHashMap::try_from(rate)) {
            (Ok(counters), Ok(rate)) => Some(KernelStats { rate, counters }),
            _ => None,
        },
        _ => None,
    };
    if stats.is_none() {
        tracing::warn!(run = %run.display(), "an earlier run's event counters are not readable: what it lost or suppressed since its agent's last summary is not reported");
    }
    Earlier { dir, events, stats }
}

/// Removes an earlier run's pins: its links (detaching its programs), its event buffer and
/// counters. Returns the number of links removed.
pub fn remove_run(run: &Path) -> Result<usize, PersistError> {
    let io = |path: PathBuf| move |source| PersistError::Io { path, source };
    let mut removed = 0;
    let links = run.join("links");
    if let Ok(entries) = fs::read_dir(&links) {
        for e in entries.flatten() {
            // Unlinking the pin drops the kernel's last reference: the link detaches.
            fs::remove_file(e.path()).map_err(io(e.path()))?;
            removed += 1;
        }
    }
    let _ = fs::remove_dir(&links);
    // The map pins (events, counters, rate): the maps go with the last program using them.
    if let Ok(entries) = fs::read_dir(run) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| !t.is_dir())) {
            fs::remove_file(e.path()).map_err(io(e.path()))?;
        }
    }
    fs::remove_dir(run).map_err(io(run.to_owned()))?;
    Ok(removed)
}

/// Removes what the runs share (the reporter maps of every ABI), once no run is left.
/// Returns the pins removed.
pub fn remove_shared(pin_dir: &Path) -> Result<Vec<PathBuf>, PersistError> {
    let mut removed = Vec::new();
    for e in fs::read_dir(pin_dir).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let shared = SHARED_MAPS.iter().any(|(_, name)| file.starts_with(&format!("{name}-abi")));
        if shared && e.file_type().is_ok_and(|t| !t.is_dir()) {
            fs::remove_file(e.path()).map_err(|source| PersistError::Io { path: e.path(), source })?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(token: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/fence/run-abi{}-{token}", fence_common::ABI_VERSION))
    }

    #[test]
    fn a_runs_token_is_in_its_name_for_this_abi_only() {
        assert_eq!(token_of(&run("1764412345000000000")), Some(1_764_412_345_000_000_000));
        assert_eq!(token_of(Path::new("/sys/fs/bpf/fence/run-abi1-17")), None, "another layout");
        assert_eq!(token_of(&run("0")), None, "0 names no run");
        assert_eq!(token_of(&run("x")), None);
        for (_, name) in SHARED_MAPS {
            assert_eq!(token_of(&shared_pin(Path::new("/sys/fs/bpf/fence"), name)), None);
        }
    }

    #[test]
    fn the_reporting_is_taken_at_once_unless_a_pinned_run_holds_it() {
        let earlier = [run("5"), run("9"), PathBuf::from("/sys/fs/bpf/fence/run-abi1-7")];
        assert!(reporter_alive(9, &earlier), "run 9 is pinned and reports: it keeps reporting until the take-over");
        assert!(!reporter_alive(0, &earlier), "a new reporter map: nobody reports");
        assert!(!reporter_alive(7, &earlier), "a run of another layout does not share the map");
        assert!(!reporter_alive(11, &earlier), "the reporting run's pins are gone");
        assert!(!reporter_alive(9, &[]));
    }
}
