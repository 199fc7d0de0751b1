//! `secret file`: a secret written to `<files_dir>/<identity>/<name>`, mode 0400, owned by the
//! caller's uid and gid. The directories are root's, 0711 (reachable by name, not listable);
//! the whole of `files_dir` is in the host's protected set, so a fenced process of another
//! identity is refused the file by the kernel whatever its uid, and the owning identity is
//! excepted for its own directory only.
//!
//! Every operation below `files_dir` goes through directory descriptors opened without
//! following links (`O_DIRECTORY|O_NOFOLLOW`) and checked to be root's directories: a process
//! that renames its own directory and plants a symlink in its place (a fenced root may rename
//! in its excepted directory) gets the agent to write or delete nothing elsewhere. A file is
//! written to a random temporary name (created exclusively) and renamed into place.

use std::{
    fs, io,
    io::Write as _,
    os::fd::{AsFd, OwnedFd},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat, renameat},
    sys::stat::{Mode, fchmod, fstat, mkdirat},
    unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat},
};

/// Makes `dir` (and its parents) root's, mode 0711, and checks it: a directory, not a link,
/// owned by root.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o711).create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(io::Error::other(format!("{} is not a directory of root's", dir.display())));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
}

/// Whether `dir` is on a tmpfs (or ramfs): a secret written there never reaches a disk.
pub fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| {
        let t = s.filesystem_type();
        t == nix::sys::statfs::TMPFS_MAGIC || t.0 == 0x8584_58f6 /* RAMFS_MAGIC */
    })
}

/// Empties `files_dir` of what an earlier run left (a crash leaves files behind): every
/// identity directory and its files, through descriptors.
pub fn purge(files_dir: &Path) -> io::Result<()> {
    let root = open_root(files_dir)?;
    for entry in fs::read_dir(files_dir)? {
        let name = entry?.file_name();
        match open_child(&root, name.as_os_str()) {
            Ok(dir) => {
                let names: Vec<_> =
                    fs::read_dir(files_dir.join(&name))?.filter_map(Result::ok).map(|e| e.file_name()).collect();
                for f in names {
                    let _ = unlinkat(&dir, f.as_os_str(), UnlinkatFlags::NoRemoveDir);
                }
            }
            // Not a directory of root's: nothing the agent made; removed, not followed.
            Err(_) => {
                let _ = unlinkat(&root, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
    Ok(())
}

/// `path` as a directory of root's, not through a link.
fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    owned_by_root(fd)
}

/// The directory `name` in `dir`, not through a link, root's.
fn open_child<P: ?Sized + nix::NixPath>(dir: &impl AsFd, name: &P) -> io::Result<OwnedFd> {
    let fd = openat(dir, name, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    owned_by_root(fd)
}

fn owned_by_root(fd: OwnedFd) -> io::Result<OwnedFd> {
    let st = fstat(&fd).map_err(io::Error::from)?;
    if st.st_uid != 0 {
        return Err(io::Error::other("a directory below files_dir is not root's"));
    }
    Ok(fd)
}

/// The identity's directory in `files_dir`, made if missing (root's, 0711).
fn identity_dir(files_dir: &Path, identity: &str) -> io::Result<OwnedFd> {
    let root = open_root(files_dir)?;
    match mkdirat(&root, identity, Mode::from_bits_truncate(0o711)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = open_child(&root, identity)?;
    fchmod(&dir, Mode::from_bits_truncate(0o711)).map_err(io::Error::from)?;
    Ok(dir)
}

/// Writes `bytes` to `<files_dir>/<identity>/<name>`, 0400, owned by `uid`:`gid`; its path.
pub fn write(files_dir: &Path, identity: &str, name: &str, bytes: &[u8], uid: u32, gid: u32) -> io::Result<PathBuf> {
    for part in [identity, name] {
        if part.is_empty() || part.starts_with('.') || part.contains(['/', '\0']) || part.len() > 255 {
            return Err(io::Error::other(format!("{part:?} cannot be a file name")));
        }
    }
    let dir = identity_dir(files_dir, identity)?;
    let tmp = format!(".{name}.{:016x}", rand_u64());
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(&dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o400)).map_err(io::Error::from)?;
    let written = (|| {
        let mut f = fs::File::from(fd);
        f.write_all(bytes)?;
        f.sync_all()?;
        fchown(&f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io::Error::from)?;
        renameat(&dir, tmp.as_str(), &dir, name).map_err(io::Error::from)
    })();
    if written.is_err() {
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written.map(|()| files_dir.join(identity).join(name))
}

/// Removes `<files_dir>/<identity>/<name>` (gone already is fine), through descriptors.
pub fn remove(files_dir: &Path, identity: &str, name: &str) {
    let removed = open_root(files_dir)
        .and_then(|root| open_child(&root, identity))
        .and_then(|dir| unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from));
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(identity, file = name, error = %e, "removing a secret file failed"),
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // getrandom(2) does not fail for 8 bytes once the pool is initialised; the name is
    // created exclusively either way.
    // SAFETY: the buffer is valid for its length.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_0400_owned_replaced_removed_and_links_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let files = root.path().join("secrets");
        make_dir(&files).unwrap();
        let p = write(&files, "bot", "key", b"one", 1234, 5678).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o400, 1234, 5678));
        assert_eq!(fs::metadata(files.join("bot")).unwrap().mode() & 0o777, 0o711);
        assert_eq!(write(&files, "bot", "key", b"two", 1234, 5678).unwrap(), p);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(files.join("bot")).unwrap().count(), 1, "no temporary file left");
        remove(&files, "bot", "key");
        remove(&files, "bot", "key");
        assert!(!p.exists());
        assert!(write(&files, "bot", "../escape", b"x", 1, 1).is_err());
        assert!(write(&files, "bot", ".hidden", b"x", 1, 1).is_err());

        // An identity directory swapped for a link elsewhere: nothing written or removed there.
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("key"), "keep").unwrap();
        fs::rename(files.join("bot"), files.join("bot-moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, files.join("bot")).unwrap();
        assert!(write(&files, "bot", "key", b"x", 1, 1).is_err());
        remove(&files, "bot", "key");
        assert_eq!(fs::read_to_string(elsewhere.join("key")).unwrap(), "keep");
        purge(&files).unwrap();
        assert!(!files.join("bot").exists(), "the link is removed, not followed");
        assert_eq!(fs::read_to_string(elsewhere.join("key")).unwrap(), "keep");
    }
}
