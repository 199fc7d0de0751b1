//! Enforcement that outlives the agent. Each agent run pins its program links (and its event
//! ring buffer) under `<pin_dir>/<run>/`; the kernel keeps the programs attached, with the
//! maps they use, as long as the pins exist, whatever happens to the process.
//!
//! A starting agent never leaves a window: it loads its programs, fills its maps with the
//! policy, attaches, pins, and only then removes earlier runs' pins (writing out the events
//! their programs recorded while no agent was reading). Until that moment the earlier run's
//! programs enforce; for that instant both do, with the same policy.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, RingBuf};
use thiserror::Error;

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
}

impl Run {
    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn events(&self) -> PathBuf {
        self.dir.join("events")
    }
}

/// Makes sure a bpffs is mounted at (or above) `pin_dir`, mounting one at its parent
/// (`/sys/fs/bpf`) if none is, and creates this run's directory.
pub fn prepare(pin_dir: &Path) -> Result<Run, PersistError> {
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
    let now = jiff::Timestamp::now().as_nanosecond();
    // The event layout's version is in the name: a later agent reads the buffer only if it
    // knows the layout (bpffs holds pins and directories, no plain files).
    let dir = pin_dir.join(format!("run-abi{}-{now}", fence_common::ABI_VERSION));
    fs::create_dir_all(dir.join("links")).map_err(io(&dir))?;
    Ok(Run { dir })
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

/// The event ring buffer an earlier run pinned, if any.
pub fn events_of(run: &Path) -> Option<RingBuf<MapData>> {
    let prefix = format!("run-abi{}-", fence_common::ABI_VERSION);
    if !run.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)) {
        tracing::info!(run = %run.display(), "an earlier run used another event layout: its unread events are not read");
        return None;
    }
    let data = MapData::from_pin(run.join("events")).ok()?;
    let map = Map::from_map_data(data).ok()?;
    RingBuf::try_from(map).ok()
}

/// Removes an earlier run's pins: its links (detaching its programs) and its event buffer.
/// Returns the number of links removed.
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
    let events = run.join("events");
    if events.exists() {
        fs::remove_file(&events).map_err(io(events.clone()))?;
    }
    fs::remove_dir(run).map_err(io(run.to_owned()))?;
    Ok(removed)
}
