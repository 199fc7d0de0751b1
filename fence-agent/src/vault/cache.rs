//! The last-known-good cache of the vault's policy: the set last applied and the highest
//! serial applied per document (the rollback floor), kept root-only in the state directory,
//! verified again when read at start.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::sync::{SyncError, VaultSet};

/// A cache file larger than this is not one fence wrote.
const MAX_CACHE_BYTES: u64 = 256 << 20;

/// The last-known-good cache: the set last applied from the vault, and the highest serials.
/// Root-only (0600, owned by the agent's user); documents are policy, not secrets, and are
/// verified again when loaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cache {
    pub schema: u32,
    pub saved_at: String,
    pub set: VaultSet,
    pub highest: BTreeMap<String, u64>,
}

impl Cache {
    /// Reads the cache. The file must be a regular file (a symbolic link is refused), owned by
    /// the agent's user and not readable or writable by anyone else; the checks apply to the
    /// file opened.
    pub fn load(path: &Path) -> Result<Option<Cache>, SyncError> {
        let err = |why: String| SyncError::Cache { path: path.to_owned(), why };
        let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(err("is a symbolic link; refusing it".to_owned()));
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".to_owned()));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(err(format!("owned by uid {}, not by the agent's user; refusing it", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!("mode {:o} lets others read or change it; expected 0600", meta.mode() & 0o777)));
        }
        if meta.len() > MAX_CACHE_BYTES {
            return Err(err(format!("{} bytes is larger than a cache fence writes", meta.len())));
        }
        let mut text = String::new();
        file.take(MAX_CACHE_BYTES).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
        let cache: Cache = serde_json::from_str(&text).map_err(|e| err(format!("not a cache file: {e}")))?;
        if cache.schema != 2 {
            return Err(err(format!("schema {} (this agent reads 2)", cache.schema)));
        }
        Ok(Some(cache))
    }

    /// Writes the cache atomically (a temporary file, fsync, rename, fsync of the directory),
    /// 0600.
    pub fn save(&self, path: &Path) -> Result<(), SyncError> {
        let err = |why: String| SyncError::Cache { path: path.to_owned(), why };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
        fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err(format!("{}: {e}", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn cache_round_trips_and_refuses_loose_permissions() {
        let dir_guard = tempfile::tempdir().unwrap();
        let dir = dir_guard.path().to_path_buf();
        let path = dir.join("policy-cache.json");
        assert!(Cache::load(&path).unwrap().is_none());
        let mut c = Cache { schema: 2, ..Default::default() };
        c.highest.insert("identities/a".into(), 7);
        c.save(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Cache::load(&path).unwrap().unwrap().highest["identities/a"], 7);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Cache::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 644"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = Cache::load(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
