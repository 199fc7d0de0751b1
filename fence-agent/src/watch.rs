//! Watches the directories a policy's paths live in (inotify), so that programs replaced by a
//! package upgrade, protected files created or renamed into place, and sockets re-created by
//! their daemons are resolved again without a reload; and the inodes of sha256-pinned
//! programs, so that a write to one through any of its names has its pin checked again. A
//! burst of changes (an upgrade, a rename) is gathered for a moment and reported once, with
//! the directories that changed (a pinned file's directory, for a write to it), so that the
//! policy service re-resolves only what depends on them.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

use crate::service::{Change, ServiceHandle};

/// How long a burst of changes is gathered before it is reported.
const SETTLE: Duration = Duration::from_millis(100);

type Watches = Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>;

pub struct Watcher {
    inotify: Arc<Inotify>,
    /// Watched directory (or pinned file) -> descriptor (the reading thread has the reverse
    /// map, to the directory to report).
    watches: HashMap<PathBuf, WatchDescriptor>,
    by_wd: Watches,
}

impl Watcher {
    /// Starts the reading thread; changes go to the policy service as [`Change::Files`].
    pub fn start(service: ServiceHandle) -> nix::Result<Watcher> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?);
        let by_wd: Watches = Arc::default();
        let (reader, names) = (inotify.clone(), by_wd.clone());
        thread::Builder::new()
            .name("fence-watch".into())
            .spawn(move || read_loop(&reader, &names, &service))
            .map_err(|_| nix::errno::Errno::EAGAIN)?;
        Ok(Watcher { inotify, watches: HashMap::new(), by_wd })
    }

    /// Watches exactly `dirs` and `files` (adds new ones, drops the rest).
    pub fn set(&mut self, dirs: &BTreeSet<PathBuf>, files: &BTreeSet<PathBuf>) {
        let mut by_wd = self.by_wd.lock().unwrap_or_else(|p| p.into_inner());
        self.watches.retain(|path, wd| {
            let keep = dirs.contains(path) || files.contains(path);
            if !keep {
                let _ = self.inotify.rm_watch(*wd);
                by_wd.remove(wd);
            }
            keep
        });
        drop(by_wd);
        self.add(dirs, files);
    }

    /// Also watches `dirs` and `files`; the directories newly watched (a pinned file's
    /// directory for a newly watched file), which changes made before now may have passed
    /// unseen. A path already watched is asked for again: if it now names another inode (the
    /// directory was removed or moved and made again), that one is watched and reported as new;
    /// if it names nothing, its entry goes.
    pub fn add(&mut self, dirs: &BTreeSet<PathBuf>, files: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
        let dir_mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        // On the inode: any write, by any name, or a truncate/attribute change.
        let file_mask = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ATTRIB;
        let mut by_wd = self.by_wd.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = dirs.iter().map(|d| (d, dir_mask, d.as_path())).chain(
            files.iter().filter(|f| !dirs.contains(*f)).map(|f| (f, file_mask, f.parent().unwrap_or(f.as_path()))),
        );
        let mut added = BTreeSet::new();
        for (path, mask, report) in wanted {
            // Watching an inode again gives its existing descriptor.
            match self.inotify.add_watch(path.as_path(), mask) {
                Ok(wd) if self.watches.get(path) == Some(&wd) => {}
                Ok(wd) => {
                    self.watches.insert(path.clone(), wd);
                    by_wd.insert(wd, report.to_owned());
                    added.insert(report.to_owned());
                }
                Err(e) => {
                    self.watches.remove(path);
                    tracing::debug!(path = %path.display(), error = %e, "cannot watch");
                }
            }
        }
        added
    }

    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }
}

/// Reads events until the service is gone; reports each burst once.
fn read_loop(inotify: &Inotify, names: &Watches, service: &ServiceHandle) {
    // `None`: some change could not be placed (the queue overflowed): everything.
    let mut pending: Option<Option<BTreeSet<PathBuf>>> = None;
    let mut since = Instant::now();
    loop {
        let timeout = match pending {
            Some(_) => PollTimeout::try_from(SETTLE.saturating_sub(since.elapsed()).as_millis() as u32)
                .unwrap_or(PollTimeout::ZERO),
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "waiting for inotify events failed; file changes are no longer followed");
                return;
            }
        }
        match inotify.read_events() {
            Ok(events) => {
                if pending.is_none() {
                    since = Instant::now();
                }
                let names = names.lock().unwrap_or_else(|p| p.into_inner());
                for e in events {
                    let overflow = e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW);
                    // A descriptor we no longer know (a watch just removed): nothing to redo.
                    let Some(dir) = names.get(&e.wd).cloned().or_else(|| overflow.then(PathBuf::new)) else { continue };
                    pending = match pending.take() {
                        _ if overflow => Some(None),
                        Some(None) => Some(None),
                        Some(Some(mut set)) => {
                            set.insert(dir);
                            Some(Some(set))
                        }
                        None => Some(Some(BTreeSet::from([dir]))),
                    };
                }
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading inotify events failed; file changes are no longer followed");
                return;
            }
        }
        if since.elapsed() >= SETTLE
            && let Some(dirs) = pending.take()
        {
            service.notify(Change::Files(dirs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_reports_only_what_it_starts_watching() {
        let tmp = std::env::temp_dir().join(format!("fence-watch-test-{}", std::process::id()));
        let (a, b) = (tmp.join("a"), tmp.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("prog"), "x").unwrap();
        let (handle, _inbox) = crate::service::channel();
        let mut w = Watcher::start(handle).unwrap();
        let dirs = BTreeSet::from([a.clone()]);
        let files = BTreeSet::from([b.join("prog")]);
        // A new directory is reported as itself, a new file watch as its directory.
        assert_eq!(w.add(&dirs, &files), BTreeSet::from([a.clone(), b.clone()]));
        assert!(w.add(&dirs, &files).is_empty(), "already watched");
        // One that cannot be watched is not reported (it was not read as watched).
        assert!(w.add(&BTreeSet::from([tmp.join("missing")]), &BTreeSet::new()).is_empty());
        w.set(&BTreeSet::new(), &files);
        assert_eq!(w.len(), 1);
        assert_eq!(w.add(&dirs, &files), BTreeSet::from([a.clone()]));
        // Removed and made again at the same path: another inode, watched and reported anew.
        std::fs::remove_dir(&a).unwrap();
        std::fs::create_dir(&a).unwrap();
        assert_eq!(w.add(&dirs, &files), BTreeSet::from([a.clone()]));
        // Gone: its entry goes, and it is reported when it comes back.
        std::fs::remove_dir(&a).unwrap();
        assert!(w.add(&dirs, &files).is_empty());
        std::fs::create_dir(&a).unwrap();
        assert_eq!(w.add(&dirs, &files), BTreeSet::from([a]));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
