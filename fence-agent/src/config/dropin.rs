//! Drop-in files: `agent.d/*.toml` beside the configuration file (`/etc/fence/agent.d/` for
//! the packaged `/etc/fence/agent.toml`), read in name order after it. A table in a drop-in is
//! merged key by key into the same table of what was read before; any other value (a string,
//! a number, a list) replaces it. Files not ending in `.toml` (editor and dpkg leftovers) are
//! ignored. A fleet tool can so own one file without editing the packaged one.

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
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_owned(), source }),
    };
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|source| ConfigError::Read { path: dir.to_owned(), source })?;
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".toml") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
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
