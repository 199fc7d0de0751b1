//! From names to inodes: expands the path patterns of the policy and of the host's protected
//! set on this host and identifies each match the way the kernel programs see it (the
//! super block's device number, as `inode->i_sb->s_dev`, and the inode number).
//!
//! The device number comes from the mount the file is on (statx mount id -> mountinfo), not
//! from `st_dev`: on btrfs subvolumes `st_dev` is a per-subvolume number the kernel's
//! `s_dev` does not match. The result also lists the directories to watch, so that a file
//! created, replaced or renamed later is picked up.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::FileTypeExt as _},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use crate::{
    policy::{
        PolicySet, SelectorKind,
        glob::{PathGlob, component_matches, has_wildcard},
        is_dynamic_loader,
    },
    protect::{HostProtection, is_public_key},
};

/// An inode as the kernel programs key it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    /// `s_dev` encoding: major << 20 | minor.
    pub dev: u32,
    pub ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Socket,
    Other,
}

/// Mount id -> device of the mounted file system, from /proc/self/mountinfo.
#[derive(Debug, Default)]
pub struct Mounts {
    devs: HashMap<u64, u32>,
}

impl Mounts {
    pub fn read() -> Mounts {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Mounts::parse(&text)
    }

    pub fn parse(text: &str) -> Mounts {
        let mut devs = HashMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(id), _, Some(majmin)) = (f.next(), f.next(), f.next()) else { continue };
            let Some((maj, min)) = majmin.split_once(':') else { continue };
            if let (Ok(id), Ok(maj), Ok(min)) = (id.parse::<u64>(), maj.parse::<u32>(), min.parse::<u32>()) {
                devs.insert(id, kernel_dev(maj, min));
            }
        }
        Mounts { devs }
    }
}

/// The kernel's internal dev_t: MKDEV(major, minor).
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

/// Identifies `path` (following symlinks).
pub fn object_id(path: &Path, mounts: &Mounts) -> io::Result<(ObjectId, Kind)> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    statx_id(libc::AT_FDCWD, &c, 0, mounts)
}

/// Identifies an open file (which may be reachable by no path in this mount namespace).
pub fn object_id_of_fd(fd: std::os::fd::BorrowedFd<'_>, mounts: &Mounts) -> io::Result<(ObjectId, Kind)> {
    use std::os::fd::AsRawFd as _;
    statx_id(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, mounts)
}

fn statx_id(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    mounts: &Mounts,
) -> io::Result<(ObjectId, Kind)> {
    const STATX_TYPE: u32 = 0x1;
    const STATX_INO: u32 = 0x100;
    const STATX_MNT_ID: u32 = 0x1000;
    // SAFETY: statx writes into the zeroed struct; the path is NUL terminated.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, STATX_TYPE | STATX_INO | STATX_MNT_ID, &mut stx) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let from_mount = (stx.stx_mask & STATX_MNT_ID != 0).then(|| mounts.devs.get(&stx.stx_mnt_id).copied()).flatten();
    let dev = from_mount.unwrap_or_else(|| kernel_dev(stx.stx_dev_major, stx.stx_dev_minor));
    let kind = match u32::from(stx.stx_mode) & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFSOCK => Kind::Socket,
        _ => Kind::Other,
    };
    Ok((ObjectId { dev, ino: stx.stx_ino }, kind))
}

/// The existing paths a pattern matches, and the directories whose changes can change that.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub found: Vec<PathBuf>,
    pub watch: Vec<PathBuf>,
}

/// Most entries looked at per wildcard component (a guard against huge directories).
const MAX_DIR_ENTRIES: usize = 100_000;

pub fn expand(glob: &PathGlob) -> Expansion {
    let mut out = Expansion::default();
    let mut dirs = vec![PathBuf::from("/")];
    let comps = glob.components();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for dir in &dirs {
            out.watch.push(dir.clone());
            if has_wildcard(comp) {
                let Ok(entries) = fs::read_dir(dir) else { continue };
                for e in entries.flatten().take(MAX_DIR_ENTRIES) {
                    let name = e.file_name();
                    if component_matches(comp, &name.to_string_lossy()) {
                        next.push(dir.join(name));
                    }
                }
            } else {
                let p = dir.join(comp);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        next.sort();
        if last {
            out.found = next;
        } else {
            // Only directories lead further (symlinks to directories count).
            dirs = next.into_iter().filter(|p| p.is_dir()).collect();
        }
    }
    out.watch.sort();
    out.watch.dedup();
    out
}

/// What a path pattern resolved to, with the name it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: ObjectId,
    pub path: PathBuf,
    /// `PROTECT_*` flags for protected/exception entries, the rule index for exec entries.
    pub value: u32,
}

/// Everything the compiler needs from the host, for one policy set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub protected: Vec<Entry>,
    pub unix_deny: Vec<Entry>,
    pub unix_deny_abstract: Vec<Vec<u8>>,
    pub identities: BTreeMap<String, ResolvedIdentity>,
    /// Directories whose changes may change this resolution.
    pub watch: BTreeSet<PathBuf>,
    /// Problems worth an operator's attention (nothing matched, hash mismatch...).
    pub warnings: Vec<String>,
    /// Every directory inside protected trees (the trees' roots included).
    pub tree_dirs: Vec<PathBuf>,
    /// Current cgroup ids of unit and managed selectors, by cgroup path (absent: the unit is
    /// not running).
    pub cgroup_ids: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedIdentity {
    pub exec: Vec<Entry>,
    pub file_exceptions: Vec<Entry>,
    pub unix_allow: Vec<Entry>,
    pub unix_allow_abstract: Vec<Vec<u8>>,
}

impl Resolved {
    /// The path each known inode is reported under.
    pub fn names(&self) -> HashMap<ObjectId, PathBuf> {
        let mut names = HashMap::new();
        let mut add = |e: &Entry| {
            names.entry(e.id).or_insert_with(|| e.path.clone());
        };
        self.protected.iter().for_each(&mut add);
        self.unix_deny.iter().for_each(&mut add);
        for r in self.identities.values() {
            r.exec.iter().chain(&r.file_exceptions).chain(&r.unix_allow).for_each(&mut add);
        }
        names
    }
}

/// Resolves the host's protected set, every identity's exec, file and unix patterns, and the
/// current cgroups of unit and managed selectors (creating managed ones) under `cgroup_root`.
pub fn resolve(set: &PolicySet, host: &HostProtection, cgroup_root: &Path) -> Resolved {
    let mounts = Mounts::read();
    let mut r = Resolved::default();
    for identity in &set.identities {
        for cg in &identity.cgroups {
            let dir = cgroup_root.join(cg.path.trim_start_matches('/'));
            match &cg.kind {
                SelectorKind::Cgroup => continue,
                SelectorKind::Managed => {
                    if let Err(e) = fs::create_dir_all(&dir) {
                        r.warnings.push(format!(
                            "identity \"{}\": cannot create its cgroup {}: {e}",
                            identity.name,
                            dir.display()
                        ));
                    }
                }
                SelectorKind::Unit(_) => {}
            }
            // A unit that restarts gets a new cgroup at the same path: watch its parent.
            if let Some(parent) = dir.parent() {
                r.watch.insert(parent.to_owned());
            }
            if let Ok(id) = crate::cgroup::id_of(&dir) {
                r.cgroup_ids.insert(cg.path.clone(), id);
            }
        }
    }
    for glob in &host.files {
        protected_entries(glob, &mounts, &mut r);
    }
    for root in &host.env_roots {
        r.watch.insert(root.parent().unwrap_or(root).to_owned());
        match object_id(root, &mounts) {
            Ok((id, Kind::Dir)) => {
                r.protected.push(Entry { id, path: root.clone(), value: fence_common::PROTECT_ENV_ROOT });
                // The .env files themselves, by inode (what a fanotify mark needs), and every
                // directory below, watched, so that a new one is seen.
                for dir in walk_dirs(root) {
                    if let Ok(entries) = fs::read_dir(&dir) {
                        for f in entries.flatten() {
                            let path = f.path();
                            if f.file_name().to_string_lossy().starts_with(".env")
                                && let Ok((id, Kind::File)) = object_id(&path, &mounts)
                            {
                                r.protected.push(Entry { id, path, value: fence_common::PROTECT_FILE });
                            }
                        }
                    }
                    r.watch.insert(dir);
                }
            }
            Ok(_) => r.warnings.push(format!("protect.env_roots: {} is not a directory", root.display())),
            Err(_) => {}
        }
    }
    for glob in &host.unix_deny {
        let ex = expand(glob);
        r.watch.extend(ex.watch);
        for path in ex.found {
            if let Ok((id, _)) = object_id(&path, &mounts) {
                r.unix_deny.push(Entry { id, path, value: 0 });
            }
        }
    }
    r.unix_deny_abstract = host.unix_deny_abstract.clone();
    for identity in &set.identities {
        let mut ri = ResolvedIdentity::default();
        if let Some(exec) = &identity.exec {
            for (index, rule) in exec.allow.iter().enumerate() {
                let ex = expand(&rule.glob);
                r.watch.extend(ex.watch);
                let mut matched = 0;
                for path in ex.found {
                    let Ok((id, Kind::File)) = object_id(&path, &mounts) else { continue };
                    if path.file_name().is_some_and(|n| is_dynamic_loader(&n.to_string_lossy())) {
                        r.warnings.push(format!(
                            "identity \"{}\": exec.allow[{index}] {} matches the dynamic loader {}; not allowed",
                            identity.name,
                            rule.glob,
                            path.display()
                        ));
                        continue;
                    }
                    if let Some(want) = rule.sha256 {
                        match sha256_of(&path) {
                            Ok(got) if got == want => {}
                            Ok(_) => {
                                r.warnings.push(format!(
                                    "identity \"{}\": exec.allow[{index}] {}: sha256 does not match the pinned value; not allowed",
                                    identity.name,
                                    path.display()
                                ));
                                continue;
                            }
                            Err(e) => {
                                r.warnings.push(format!(
                                    "identity \"{}\": {}: cannot hash: {e}",
                                    identity.name,
                                    path.display()
                                ));
                                continue;
                            }
                        }
                    }
                    matched += 1;
                    ri.exec.push(Entry { id, path, value: index as u32 });
                }
                if matched == 0 {
                    r.warnings.push(format!(
                        "identity \"{}\": exec.allow[{index}] {} matches no executable file on this host",
                        identity.name, rule.glob
                    ));
                }
            }
        }
        for glob in &identity.file_exceptions {
            let ex = expand(glob);
            r.watch.extend(ex.watch);
            for path in ex.found {
                let Ok((id, kind)) = object_id(&path, &mounts) else { continue };
                let value = if glob.is_tree() && kind == Kind::Dir {
                    fence_common::PROTECT_TREE
                } else {
                    fence_common::PROTECT_FILE
                };
                ri.file_exceptions.push(Entry { id, path, value });
            }
        }
        if let Some(unix) = &identity.unix {
            for glob in &unix.paths {
                let ex = expand(glob);
                r.watch.extend(ex.watch);
                for path in ex.found {
                    match object_id(&path, &mounts) {
                        Ok((id, Kind::Socket)) => ri.unix_allow.push(Entry { id, path, value: 0 }),
                        Ok(_) => r.warnings.push(format!(
                            "identity \"{}\": unix.allow {} is not a socket",
                            identity.name,
                            path.display()
                        )),
                        Err(_) => {}
                    }
                }
            }
            ri.unix_allow_abstract = unix.abstract_names.clone();
        }
        r.identities.insert(identity.name.clone(), ri);
    }
    r
}

fn protected_entries(glob: &PathGlob, mounts: &Mounts, r: &mut Resolved) {
    let ex = expand(glob);
    r.watch.extend(ex.watch);
    for path in ex.found {
        if glob.is_tree() && path.is_dir() {
            // Every directory of the tree: watched (a new one is seen) and listed (a fanotify
            // fence marks each, as its marks cover direct children only).
            for dir in walk_dirs(&path) {
                r.watch.insert(dir.clone());
                r.tree_dirs.push(dir);
            }
        }
        if is_public_key(&path) && glob.components().last().is_some_and(|c| c.starts_with("id_")) {
            continue;
        }
        let Ok((id, kind)) = object_id(&path, mounts) else { continue };
        let value = match (glob.is_tree(), kind) {
            (true, Kind::Dir) => fence_common::PROTECT_TREE | fence_common::PROTECT_FILE,
            (_, Kind::Dir) => continue,
            _ => fence_common::PROTECT_FILE,
        };
        r.protected.push(Entry { id, path, value });
    }
}

/// Most directories looked at below one protected directory or env root.
const MAX_TREE_DIRS: usize = 10_000;

/// `root` and the directories below it (not following symlinks), at most `MAX_TREE_DIRS`.
pub fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_TREE_DIRS {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

fn sha256_of(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// Whether `path` is a socket (for messages).
pub fn is_socket(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fence-resolve-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn expands_wildcards_and_lists_directories_to_watch() {
        let d = tmp("expand");
        for u in ["alice", "bob"] {
            fs::create_dir_all(d.join(u).join(".ssh")).unwrap();
            fs::write(d.join(u).join(".ssh/id_ed25519"), "k").unwrap();
            fs::write(d.join(u).join(".ssh/known_hosts"), "h").unwrap();
        }
        let g = PathGlob::parse(&format!("{}/*/.ssh/id_*", d.display())).unwrap();
        let ex = expand(&g);
        assert_eq!(ex.found, vec![d.join("alice/.ssh/id_ed25519"), d.join("bob/.ssh/id_ed25519")]);
        assert!(ex.watch.contains(&d) && ex.watch.contains(&d.join("alice/.ssh")));
        // A literal path that does not exist yet: its parent is watched.
        let g = PathGlob::parse(&format!("{}/carol/.aws/**", d.display())).unwrap();
        let ex = expand(&g);
        assert!(ex.found.is_empty());
        assert!(ex.watch.contains(&d));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn object_ids_match_the_kernel_encoding_and_follow_symlinks() {
        let d = tmp("ids");
        let f = d.join("file");
        fs::write(&f, "x").unwrap();
        std::os::unix::fs::symlink(&f, d.join("link")).unwrap();
        let mounts = Mounts::read();
        let (a, kind) = object_id(&f, &mounts).unwrap();
        let (b, _) = object_id(&d.join("link"), &mounts).unwrap();
        assert_eq!(kind, Kind::File);
        assert_eq!(a, b, "a symlink is its target");
        assert_eq!(a.ino, fs::metadata(&f).unwrap().ino());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mountinfo_devices() {
        let m = Mounts::parse("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 24 0:45 / /tmp rw - tmpfs tmpfs rw\n");
        assert_eq!(m.devs[&24], (8 << 20) | 1);
        assert_eq!(m.devs[&40], 45);
    }
}
