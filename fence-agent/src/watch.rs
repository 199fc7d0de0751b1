//! Watches the directories a policy's paths live in (inotify), so that programs replaced by a
//! package upgrade, protected files created or renamed into place, and sockets re-created by
//! their daemons are resolved again without a reload.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    thread,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::mpsc::UnboundedSender;

pub struct Watcher {
    inotify: Arc<Inotify>,
    watches: HashMap<PathBuf, WatchDescriptor>,
}

impl Watcher {
    /// Starts the reading thread; every change sends one `()` on `changed`.
    pub fn start(changed: UnboundedSender<()>) -> nix::Result<Watcher> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
        let reader = inotify.clone();
        thread::Builder::new()
            .name("fence-watch".into())
            .spawn(move || {
                loop {
                    match reader.read_events() {
                        Ok(events) if !events.is_empty() => {
                            if changed.send(()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "reading inotify events failed; file changes are no longer followed");
                            return;
                        }
                    }
                }
            })
            .map_err(|_| nix::errno::Errno::EAGAIN)?;
        Ok(Watcher { inotify, watches: HashMap::new() })
    }

    /// Watches exactly `dirs` (adds new ones, drops the rest).
    pub fn set(&mut self, dirs: &BTreeSet<PathBuf>) {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        self.watches.retain(|dir, wd| {
            let keep = dirs.contains(dir);
            if !keep {
                let _ = self.inotify.rm_watch(*wd);
            }
            keep
        });
        for dir in dirs {
            if self.watches.contains_key(dir) {
                continue;
            }
            match self.inotify.add_watch(dir.as_path(), mask) {
                Ok(wd) => {
                    self.watches.insert(dir.clone(), wd);
                }
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }
}
