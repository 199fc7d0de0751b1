//! Where event lines go: stdout and/or an append-only file. Each line is written with a
//! single write(2), so concurrent writers and readers never see half a line.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot open event file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing to {sink} failed: {source}")]
    Write { sink: String, source: io::Error },
}

pub struct Sinks {
    stdout: bool,
    file: Option<(PathBuf, File)>,
}

impl Sinks {
    /// Opens the configured sinks. The file is opened O_APPEND and created 0640 (its directory
    /// 0750) if missing; it is never truncated.
    pub fn open(stdout: bool, file: Option<&Path>) -> Result<Sinks, SinkError> {
        let file = match file {
            None => None,
            Some(path) => {
                let open_err = |source| SinkError::Open { path: path.to_owned(), source };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(open_err)?;
                }
                let f = OpenOptions::new().append(true).create(true).mode(0o640).open(path).map_err(open_err)?;
                Some((path.to_owned(), f))
            }
        };
        Ok(Sinks { stdout, file })
    }

    /// Writes one JSON line to every sink. A failing sink does not stop the others.
    pub fn write_line(&mut self, json: &str) -> Result<(), Vec<SinkError>> {
        let mut line = String::with_capacity(json.len() + 1);
        line.push_str(json);
        line.push('\n');
        let mut errors = Vec::new();
        if self.stdout {
            let mut out = io::stdout().lock();
            if let Err(source) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                errors.push(SinkError::Write { sink: "stdout".into(), source });
            }
        }
        if let Some((path, f)) = &mut self.file
            && let Err(source) = f.write_all(line.as_bytes())
        {
            errors.push(SinkError::Write { sink: path.display().to_string(), source });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_never_truncates() {
        let dir = std::env::temp_dir().join(format!("fence-sink-{}", std::process::id()));
        let path = dir.join("sub/events.jsonl");
        let _ = fs::remove_dir_all(&dir);
        {
            let mut s = Sinks::open(false, Some(&path)).unwrap();
            s.write_line("{\"a\":1}").unwrap();
        }
        {
            let mut s = Sinks::open(false, Some(&path)).unwrap();
            s.write_line("{\"a\":2}").unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
