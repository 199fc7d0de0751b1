//! Identifying paths as the kernel does, and expanding patterns on the file system.

use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::FileTypeExt as _},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

use crate::policy::glob::{PathGlob, component_matches, has_wildcard};

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
        Mounts::of(&crate::mountinfo::MountInfo::read())
    }

    pub fn parse(text: &str) -> Mounts {
        Mounts::of(&crate::mountinfo::MountInfo::parse(text))
    }

    /// The device of mount `id`.
    pub fn dev(&self, id: u64) -> Option<u32> {
        self.devs.get(&id).copied()
    }

    fn of(info: &crate::mountinfo::MountInfo) -> Mounts {
        Mounts { devs: info.mounts.iter().map(|m| (m.id, kernel_dev(m.major, m.minor))).collect() }
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
    // SAFETY: statx is a plain C struct of integers, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes into the struct we own; the path is NUL terminated.
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

/// Most directories looked at below one protected directory or env root.
pub const MAX_TREE_DIRS: usize = 10_000;
/// Most regular files listed below one protected or excepted directory.
pub const MAX_TREE_FILES: usize = 20_000;

/// `root` and the directories below it (not following symlinks), at most `MAX_TREE_DIRS`.
pub fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    walk_tree(root, false).dirs
}

/// A directory tree: its directories (the root first) and, when asked, its regular files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeWalk {
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    /// More directories or files than the limits: the lists are incomplete.
    pub truncated: bool,
}

/// Walks `root` breadth first, not following symlinks, listing directories (at most
/// `MAX_TREE_DIRS`) and, with `files`, regular files (at most `MAX_TREE_FILES`).
pub fn walk_tree(root: &Path, files: bool) -> TreeWalk {
    let mut out = TreeWalk { dirs: vec![root.to_owned()], ..TreeWalk::default() };
    let mut i = 0;
    while i < out.dirs.len() {
        if let Ok(entries) = fs::read_dir(&out.dirs[i]) {
            for e in entries.flatten() {
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() {
                    if out.dirs.len() < MAX_TREE_DIRS {
                        out.dirs.push(e.path());
                    } else {
                        out.truncated = true;
                    }
                } else if files && t.is_file() {
                    if out.files.len() < MAX_TREE_FILES {
                        out.files.push(e.path());
                    } else {
                        out.truncated = true;
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// The SHA-256 of a file's content.
pub(super) fn sha256_of(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// Whether `path` is a socket (for messages).
pub fn is_socket(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
