//! Protection follows the inode. The agent holds an O_PATH descriptor on every protected
//! file and directory; when one is no longer found at its path (renamed, moved, its path
//! replaced) but still exists, it stays protected, under the path it was last seen at. It
//! leaves the protected set only when it is deleted (no links left).
//!
//! Without this, a process allowed to rename files could move a credential file away and
//! read it once the agent re-resolved the protected paths.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use nix::{
    fcntl::{OFlag, open},
    sys::stat::{Mode, fstat},
};

use crate::resolve::{Entry, ObjectId, Resolved};

struct Held {
    fd: OwnedFd,
    path: PathBuf,
    flags: u32,
}

/// See [`Holder::checkpoint`].
pub struct Checkpoint(HashMap<ObjectId, (PathBuf, u32)>);

#[derive(Default)]
pub struct Holder {
    held: HashMap<ObjectId, Held>,
}

impl Holder {
    /// A holder for the agent: the process's open-file limit is raised to its hard limit
    /// first, since every file and directory of protected trees is held (thousands, where the
    /// default soft limit is 1024).
    pub fn for_agent() -> Holder {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls on a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    tracing::warn!("could not raise RLIMIT_NOFILE; large protected trees may not all be held");
                }
            }
        }
        Holder::default()
    }

    /// Holds every protected inode of `resolved` and adds back the held ones that moved away
    /// but still exist.
    pub fn update(&mut self, resolved: &mut Resolved) {
        let found: HashSet<ObjectId> = resolved.protected.iter().map(|e| e.id).collect();
        let mut out_of_fds = 0usize;
        for e in &resolved.protected {
            if let Some(h) = self.held.get_mut(&e.id) {
                h.path = e.path.clone();
                h.flags |= e.value;
                continue;
            }
            match open(&e.path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()) {
                // The path may have been replaced since it was resolved: hold only the same inode.
                Ok(fd) if fstat(&fd).is_ok_and(|st| st.st_ino == e.id.ino) => {
                    self.held.insert(e.id, Held { fd, path: e.path.clone(), flags: e.value });
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE) => out_of_fds += 1,
                Err(_) => {}
            }
        }
        if out_of_fds > 0 {
            tracing::warn!(
                not_held = out_of_fds,
                held = self.held.len(),
                "out of file descriptors: some protected inodes are not held (renames of them are not followed)"
            );
        }
        let mut moved = Vec::new();
        self.held.retain(|id, h| {
            if found.contains(id) {
                return true;
            }
            let alive = fstat(&h.fd).is_ok_and(|st| st.st_nlink > 0);
            if alive {
                moved.push(Entry::new(*id, h.path.clone(), h.flags));
            }
            alive
        });
        moved.sort_by_key(|e| e.id);
        resolved.protected.extend(moved);
    }

    /// What is held now, to go back to if the policy being applied is refused.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(self.held.iter().map(|(id, h)| (*id, (h.path.clone(), h.flags))).collect())
    }

    /// Back to `checkpoint`: inodes held since are let go (they were protected only by a
    /// policy that was not applied). Inodes deleted since stay gone.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        self.held.retain(|id, _| checkpoint.0.contains_key(id));
        for (id, (path, flags)) in checkpoint.0 {
            if let Some(h) = self.held.get_mut(&id) {
                h.path = path;
                h.flags = flags;
            }
        }
    }

    /// A descriptor on a protected inode, to mark it without going through its (old) path.
    pub fn fd(&self, id: ObjectId) -> Option<BorrowedFd<'_>> {
        self.held.get(&id).map(|h| h.fd.as_fd())
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::resolve::{Mounts, object_id};

    #[test]
    fn a_renamed_protected_file_stays_protected_until_deleted() {
        let d_guard = tempfile::tempdir().unwrap();
        let d = d_guard.path().to_path_buf();
        fs::create_dir_all(&d).unwrap();
        let f = d.join("secret");
        fs::write(&f, "s").unwrap();
        let (id, _) = object_id(&f, &Mounts::read()).unwrap();
        let entry = Entry::new(id, f.clone(), fence_common::PROTECT_FILE);
        let mut holder = Holder::default();
        let mut r = Resolved { protected: vec![entry.clone()], ..Resolved::default() };
        holder.update(&mut r);
        assert_eq!(holder.len(), 1);
        fs::rename(&f, d.join("renamed")).unwrap();
        // The pattern no longer finds it, but it is still protected.
        let mut r = Resolved::default();
        holder.update(&mut r);
        assert_eq!(r.protected, vec![entry]);
        fs::remove_file(d.join("renamed")).unwrap();
        let mut r = Resolved::default();
        holder.update(&mut r);
        assert!(r.protected.is_empty(), "a deleted file leaves the set");
        assert!(holder.is_empty());
    }

    #[test]
    fn a_rollback_lets_go_of_what_a_refused_policy_held() {
        let d_guard = tempfile::tempdir().unwrap();
        let d = d_guard.path().to_path_buf();
        fs::create_dir_all(&d).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        let mounts = Mounts::read();
        let entry = |p: &std::path::Path| Entry::new(object_id(p, &mounts).unwrap().0, p.to_owned(), 1);
        let mut holder = Holder::default();
        holder.update(&mut Resolved { protected: vec![entry(&a)], ..Resolved::default() });
        let checkpoint = holder.checkpoint();
        holder.update(&mut Resolved { protected: vec![entry(&a), entry(&b)], ..Resolved::default() });
        assert_eq!(holder.len(), 2);
        holder.rollback(checkpoint);
        assert_eq!(holder.len(), 1);
        // `b` is not added back as "moved away" by the next resolution.
        let mut r = Resolved { protected: vec![entry(&a)], ..Resolved::default() };
        holder.update(&mut r);
        assert_eq!(r.protected, vec![entry(&a)]);
    }
}
