//! Drop-in files: `agent.d/*.toml` beside the configuration file (`/etc/fence/agent.d/` for
//! the packaged `/etc/fence/agent.toml`), read in name order after it. A table in a drop-in is
//! merged key by key into the same table of what was read before; any other value (a string,
//! a number, a list) replaces it. Files not ending in `.toml` (editor and dpkg leftovers) are
//! ignored. A fleet tool can so own one file without editing the packaged one.
//!
//! Like the configuration they amend, drop-ins must be owned by root (or by the user reading
//! them) and writable by no one else, and so must their directory: a drop-in could otherwise
//! turn enforcement off for whoever can write there.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::ConfigError;

/// The drop-in directory of the configuration file `path`: `agent.toml` -> `agent.d`.
pub fn dir_of(path: &Path) -> PathBuf {
    path.with_extension("d")
}

/// The drop-in files of `dir`, in name order; none if it does not exist.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_owned(), source }),
        Ok(m) => trusted(dir, &m)?,
    }
    let entries = fs::read_dir(dir).map_err(|source| ConfigError::Read { path: dir.to_owned(), source })?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|source| ConfigError::Read { path: dir.to_owned(), source })?;
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".toml") || name.starts_with('.') {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        if !meta.is_file() {
            return Err(ConfigError::Invalid {
                path,
                message: "a drop-in must be a regular file (not a link or a directory)".to_owned(),
            });
        }
        trusted(&path, &meta)?;
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// `path` is owned by root or this user and writable by no one else.
fn trusted(path: &Path, meta: &fs::Metadata) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let me = nix::unistd::geteuid().as_raw();
    let why = if meta.uid() != 0 && meta.uid() != me {
        Some(format!("it is owned by uid {}, not root", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!("it is writable by group or others (mode {:o})", meta.mode() & 0o7777))
    } else {
        None
    };
    match why {
        Some(why) => Err(ConfigError::Invalid { path: path.to_owned(), message: format!("not read: {why}") }),
        None => Ok(()),
    }
}

/// `over` merged into `base`: tables key by key, everything else replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
