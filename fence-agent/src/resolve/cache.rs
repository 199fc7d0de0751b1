//! What the resolver has already found on the file system, per pattern, so that a change in
//! one directory costs the patterns that depend on it and nothing more.

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    Resolved,
    expand::{Expansion, ObjectId, TreeWalk, expand, sha256_of, walk_dirs, walk_tree},
};
use crate::{policy::PolicySet, protect::HostProtection};

/// The directories below an env root, and the `.env*` files in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvWalk {
    pub dirs: Vec<PathBuf>,
    pub env_files: Vec<PathBuf>,
}

/// When a file's content last changed, as far as the inode says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        let m = fs::metadata(path)?;
        Ok(Stamp { len: m.len(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) })
    }
}

/// Resolves policies on this host, remembering what it found until told that a directory it
/// depends on changed ([`Resolver::invalidate`]) or to forget everything ([`Resolver::clear`]).
#[derive(Debug, Default)]
pub struct Resolver {
    /// Pattern text -> what it matched and the directories it depends on.
    expansions: HashMap<String, Expansion>,
    /// Tree root -> its directories and files.
    walks: HashMap<PathBuf, TreeWalk>,
    /// Env root -> its directories and `.env*` files.
    env_roots: HashMap<PathBuf, EnvWalk>,
    /// SHA-256 of pinned programs, with the stamp of the inode they were computed from.
    hashes: HashMap<ObjectId, (Stamp, [u8; 32])>,
    /// Expansions done from the file system (not the cache) since the last clear (tests).
    pub(super) misses: usize,
}

impl Resolver {
    /// Resolves `set` and the host's protected set (see [`super::resolve`]).
    pub fn resolve(&mut self, set: &PolicySet, host: &HostProtection, cgroup_root: &Path) -> Resolved {
        super::resolve(self, set, host, cgroup_root)
    }

    /// Forgets what was found (a new policy, or a reload: everything is looked at again).
    /// Hashes stay: they are checked against the inode before use.
    pub fn clear(&mut self) {
        self.expansions.clear();
        self.walks.clear();
        self.env_roots.clear();
    }

    /// Forgets what depended on `dirs`, which changed on disk.
    pub fn invalidate(&mut self, dirs: &BTreeSet<PathBuf>) {
        let touched = |list: &[PathBuf]| list.iter().any(|d| dirs.contains(d));
        let parent_touched = |root: &Path| root.parent().is_some_and(|p| dirs.contains(p));
        self.expansions.retain(|_, e| !touched(&e.watch));
        self.walks.retain(|root, w| !touched(&w.dirs) && !parent_touched(root));
        self.env_roots.retain(|root, w| !touched(&w.dirs) && !parent_touched(root));
    }

    pub(super) fn expand(&mut self, glob: &crate::policy::glob::PathGlob) -> Expansion {
        let key = glob.to_string();
        if let Some(e) = self.expansions.get(&key) {
            return e.clone();
        }
        self.misses += 1;
        let e = expand(glob);
        self.expansions.insert(key, e.clone());
        e
    }

    /// The directories and regular files of the tree at `root`.
    pub(super) fn tree(&mut self, root: &Path) -> TreeWalk {
        self.walks.entry(root.to_owned()).or_insert_with(|| walk_tree(root, true)).clone()
    }

    pub(super) fn env_root(&mut self, root: &Path) -> EnvWalk {
        self.env_roots
            .entry(root.to_owned())
            .or_insert_with(|| {
                let dirs = walk_dirs(root);
                let mut env_files = Vec::new();
                for dir in &dirs {
                    for f in fs::read_dir(dir).into_iter().flatten().flatten() {
                        if f.file_name().to_string_lossy().starts_with(".env") {
                            env_files.push(f.path());
                        }
                    }
                }
                EnvWalk { dirs, env_files }
            })
            .clone()
    }

    /// The SHA-256 of `path` (inode `id`), computed again only if the inode changed.
    pub(super) fn sha256(&mut self, path: &Path, id: ObjectId) -> io::Result<[u8; 32]> {
        let stamp = Stamp::of(path)?;
        if let Some((s, h)) = self.hashes.get(&id)
            && *s == stamp
        {
            return Ok(*h);
        }
        let h = sha256_of(path)?;
        self.hashes.insert(id, (stamp, h));
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::glob::PathGlob;

    #[test]
    fn a_change_re_expands_only_the_patterns_that_depend_on_it() {
        let d_guard = tempfile::tempdir().unwrap();
        let d = d_guard.path().to_path_buf();
        for sub in ["a", "b"] {
            fs::create_dir_all(d.join(sub)).unwrap();
            fs::write(d.join(sub).join("key"), "k").unwrap();
        }
        let a = PathGlob::parse(&format!("{}/a/*", d.display())).unwrap();
        let b = PathGlob::parse(&format!("{}/b/*", d.display())).unwrap();
        let mut r = Resolver::default();
        assert_eq!(r.expand(&a).found.len(), 1);
        assert_eq!(r.expand(&b).found.len(), 1);
        assert_eq!(r.misses, 2);
        fs::write(d.join("a").join("new"), "n").unwrap();
        assert_eq!(r.expand(&a).found.len(), 1, "cached until told");
        r.invalidate(&BTreeSet::from([d.join("a")]));
        assert_eq!(r.expand(&a).found.len(), 2);
        assert_eq!(r.expand(&b).found.len(), 1);
        assert_eq!(r.misses, 3, "only the pattern on the changed directory was expanded again");
        r.clear();
        r.expand(&b);
        assert_eq!(r.misses, 4);
    }

    #[test]
    fn hashes_are_computed_again_only_when_the_inode_changes() {
        let d_guard = tempfile::tempdir().unwrap();
        let d = d_guard.path().to_path_buf();
        fs::create_dir_all(&d).unwrap();
        let f = d.join("prog");
        fs::write(&f, "one").unwrap();
        let id = ObjectId { dev: 1, ino: 1 };
        let mut r = Resolver::default();
        let first = r.sha256(&f, id).unwrap();
        assert_eq!(r.sha256(&f, id).unwrap(), first);
        fs::write(&f, "two, longer").unwrap();
        assert_ne!(r.sha256(&f, id).unwrap(), first, "new content, new hash");
    }
}
