//! The host's cgroup v2 hierarchy: where it is mounted, which cgroup a process is in, and
//! cgroup ids. The mount point is read from /proc/self/mountinfo ([`crate::mountinfo`]), never
//! assumed: hybrid hosts mount cgroup2 at /sys/fs/cgroup/unified, pure v2 hosts at
//! /sys/fs/cgroup.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::policy::{CgroupResolver, ResolveError};

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "no cgroup2 file system is mounted (checked /proc/self/mountinfo); mount one, e.g. \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
}

/// The cgroup v2 path of a process from /proc/PID/cgroup text (the `0::` line).
pub fn v2_path_in(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end_matches(" (deleted)").to_owned())
}

/// The cgroup id of a cgroup directory: on 64-bit kernels (>= 5.5) the kernfs node id, which
/// is the directory's inode number and what `bpf_get_current_cgroup_id()` returns.
pub fn id_of(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// Makes a managed identity's cgroup `dir` (`<parent>/fence-managed/<identity>`) and its
/// `fence-managed` directory where missing; never the parent, which belongs to the agent's
/// unit or to `[managed] cgroup_parent` (a unit that is not running has none, and a cgroup
/// made in its place would be outside systemd's knowledge).
pub fn make_managed(dir: &Path) -> io::Result<()> {
    for d in dir.parent().into_iter().chain([dir]) {
        match fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Processes in a cgroup and every cgroup below it.
pub fn process_count(dir: &Path) -> usize {
    let own = fs::read_to_string(dir.join("cgroup.procs")).map(|s| s.lines().count()).unwrap_or(0);
    let below: usize = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| process_count(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    own + below
}

/// The host's cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    /// `[managed] cgroup_parent`.
    managed_parent: Option<String>,
}

impl Cgroups {
    /// Finds the cgroup2 mount of this host.
    pub fn discover() -> Result<Cgroups, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })?;
        let root = crate::mountinfo::MountInfo::parse(&text).mount_of("cgroup2").ok_or(CgroupError::NoCgroup2)?;
        Ok(Cgroups { root, managed_parent: None })
    }

    /// A hierarchy mounted at `root` (tests use a directory that looks like one).
    pub fn at(root: PathBuf) -> Cgroups {
        Cgroups { root, managed_parent: None }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Managed identities' cgroups below `parent` (`[managed] cgroup_parent`) rather than
    /// below the agent's own cgroup.
    pub fn with_managed_parent(mut self, parent: Option<String>) -> Cgroups {
        self.managed_parent = parent;
        self
    }

    /// Absolute directory of a cgroup path relative to the mount (`/a/b`).
    pub fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The cgroup v2 path of process `pid` ("self" for this process).
    pub fn path_of_process(pid: &str) -> Option<String> {
        fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().as_deref().and_then(v2_path_in)
    }
}

impl CgroupResolver for Cgroups {
    fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &str) -> Result<u64, ResolveError> {
        let dir = self.dir(path);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() && dir.join("cgroup.procs").exists() => Ok(m.ino()),
            Ok(_) => Err(ResolveError::Other(format!("{} is not a cgroup directory", dir.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ResolveError::NotFound),
            Err(e) => Err(ResolveError::Other(format!("{}: {e}", dir.display()))),
        }
    }

    fn own_cgroup(&self) -> Option<String> {
        Cgroups::path_of_process("self")
    }

    fn managed_parent(&self) -> Option<&str> {
        self.managed_parent.as_deref()
    }

    fn find_unit(&self, unit: &str) -> Vec<String> {
        // Breadth first, a few levels deep: systemd puts units at depth 1 to 4.
        let mut found = Vec::new();
        let mut level = vec![self.root.clone()];
        for _ in 0..6 {
            let mut next = Vec::new();
            for dir in &level {
                let Ok(entries) = fs::read_dir(dir) else { continue };
                for e in entries.flatten() {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    if e.file_name() == unit
                        && let Ok(rel) = e.path().strip_prefix(&self.root)
                    {
                        found.push(format!("/{}", rel.display()));
                    }
                    next.push(e.path());
                }
            }
            if next.len() > 50_000 {
                break;
            }
            level = next;
        }
        found
    }
}

/// The pids of cgroup `dir` and of every cgroup below it (at most `MAX_CGROUP_DEPTH` levels).
pub fn processes_below(dir: &Path) -> Vec<u32> {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<u32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= fence_common::MAX_CGROUP_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_path_from_proc_cgroup() {
        let text = "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n";
        assert_eq!(v2_path_in(text).as_deref(), Some("/user.slice/x.scope"));
        assert_eq!(v2_path_in("1:name=systemd:/\n"), None);
    }
}
