//! `secret file`: a secret written to `<files_dir>/<identity>/<name>`, mode 0400, owned by the
//! caller's uid and gid. The directories are root's, 0711 (reachable by name, not listable);
//! the whole of `files_dir` is in the host's protected set, so a fenced process of another
//! identity is refused the file by the kernel whatever its uid, and the owning identity is
//! excepted for its own directory only. The file is written to a temporary name (created
//! exclusively, not following links) and renamed into place, and removed when its lease ends,
//! when its identity loses the secret, and when the agent stops.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Makes `dir` (and its parents) root's, mode 0711; an existing one is set to 0711.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o711).create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", dir.display())));
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

/// Writes `bytes` to `dir/name`, 0400, owned by `uid`:`gid`; its path.
pub fn write(dir: &Path, name: &str, bytes: &[u8], uid: u32, gid: u32) -> io::Result<PathBuf> {
    make_dir(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// Removes a file the broker wrote (gone already is fine).
pub fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing a secret file failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn written_0400_owned_replaced_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets").join("bot");
        let p = write(&dir, "key", b"one", 1234, 5678).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o400, 1234, 5678));
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o711);
        assert_eq!(write(&dir, "key", b"two", 1234, 5678).unwrap(), p);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        remove(&p);
        remove(&p);
        assert!(!p.exists());
    }
}
