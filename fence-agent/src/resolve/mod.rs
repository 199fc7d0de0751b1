//! From names to inodes: expands the path patterns of the policy and of the host's protected
//! set on this host and identifies each match the way the kernel programs see it (the
//! super block's device number, as `inode->i_sb->s_dev`, and the inode number).
//!
//! The device number comes from the mount the file is on (statx mount id -> mountinfo), not
//! from `st_dev`: on btrfs subvolumes `st_dev` is a per-subvolume number the kernel's
//! `s_dev` does not match. The result also lists the directories to watch, so that a file
//! created, replaced or renamed later is picked up. A [`Resolver`] keeps what it found per
//! pattern, so that a change in one watched directory re-expands only the patterns that
//! depend on it, and hashes a pinned program again only when its inode changed.

mod cache;
mod expand;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

pub use cache::Resolver;
pub use expand::{
    Expansion, Kind, Mounts, ObjectId, expand, is_socket, kernel_dev, object_id, object_id_of_fd, walk_dirs,
};

use crate::{
    policy::{PolicySet, SelectorKind, glob::PathGlob, is_dynamic_loader},
    protect::{HostProtection, is_public_key},
};

/// What a path pattern resolved to, with the name it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: ObjectId,
    pub path: PathBuf,
    /// `PROTECT_*` flags for protected/exception entries, the rule index for exec entries.
    pub value: u32,
    /// The just-in-time grant slot the entry is allowed under (0: standing).
    pub grant: u16,
}

impl Entry {
    /// A standing entry.
    pub fn new(id: ObjectId, path: PathBuf, value: u32) -> Entry {
        Entry { id, path, value, grant: 0 }
    }
}

/// Everything the compiler needs from the host, for one policy set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub protected: Vec<Entry>,
    pub unix_deny: Vec<Entry>,
    pub unix_deny_abstract: Vec<Vec<u8>>,
    pub identities: BTreeMap<String, ResolvedIdentity>,
    /// Directories whose changes may change this resolution.
    pub watch: BTreeSet<PathBuf>,
    /// Files whose content matters (sha256-pinned programs): watched on their inode, so that a
    /// write through any name (a hard link elsewhere) has the pin checked again.
    pub watch_files: BTreeSet<PathBuf>,
    /// Problems worth an operator's attention (nothing matched, hash mismatch...).
    pub warnings: Vec<String>,
    /// Current cgroup ids of unit and managed selectors, by cgroup path (absent: the unit is
    /// not running).
    pub cgroup_ids: BTreeMap<String, u64>,
    /// Current cgroup ids of those selectors' parents (a unit's slice), by cgroup path: where
    /// the cgroup programs are attached and what the kernel's scope names. A parent made
    /// again (a stopped slice started, a user's slice after a logout) has a new id, and so is
    /// a new resolution, applied again.
    pub parent_ids: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedIdentity {
    pub exec: Vec<Entry>,
    pub file_exceptions: Vec<Entry>,
    pub unix_allow: Vec<Entry>,
    /// Abstract names, each with its grant slot (0: standing).
    pub unix_allow_abstract: Vec<(Vec<u8>, u16)>,
}

impl Resolved {
    /// The path each known inode is reported under.
    pub fn names(&self) -> HashMap<ObjectId, PathBuf> {
        let mut names = HashMap::new();
        let mut add = |e: &Entry| {
            names.entry(e.id).or_insert_with(|| e.path.clone());
        };
        self.protected.iter().for_each(&mut add);
        self.unix_deny.iter().for_each(&mut add);
        for r in self.identities.values() {
            r.exec.iter().chain(&r.file_exceptions).chain(&r.unix_allow).for_each(&mut add);
        }
        names
    }
}

/// Resolves the host's protected set, every identity's exec, file and unix patterns, and the
/// current cgroups of unit and managed selectors (creating managed ones) under `cgroup_root`,
/// with what `cache` already knows.
fn resolve(cache: &mut Resolver, set: &PolicySet, host: &HostProtection, cgroup_root: &Path) -> Resolved {
    let mounts = Mounts::read();
    let mut r = Resolved::default();
    selector_cgroups(set, cgroup_root, &mut r);
    for glob in &host.files {
        protected_entries(cache, glob, &mounts, &mut r);
    }
    for root in &host.env_roots {
        env_root_entries(cache, root, &mounts, &mut r);
    }
    for glob in &host.unix_deny {
        let ex = cache.expand(glob);
        r.watch.extend(ex.watch);
        for path in ex.found {
            if let Ok((id, _)) = object_id(&path, &mounts) {
                r.unix_deny.push(Entry::new(id, path, 0));
            }
        }
    }
    r.unix_deny_abstract = host.unix_deny_abstract.clone();
    for identity in &set.identities {
        let mut ri = ResolvedIdentity::default();
        let standing = Reach {
            exec: identity.exec.as_ref().map_or(&[], |e| e.allow.as_slice()),
            files: &identity.file_exceptions,
            unix: identity.unix.as_ref(),
            grant: 0,
        };
        let mut ctx = ReachContext { cache, identity: &identity.name, mounts: &mounts, r: &mut r, ri: &mut ri };
        ctx.resolve(&standing);
        for g in &identity.grants_in_force {
            let t = &g.target;
            ctx.resolve(&Reach { exec: &t.exec, files: &t.files, unix: Some(&t.unix), grant: g.slot });
        }
        r.identities.insert(identity.name.clone(), ri);
    }
    r
}

/// The exec, file and unix sections of an identity's standing policy or of one of its grants.
struct Reach<'a> {
    exec: &'a [crate::policy::ExecRule],
    files: &'a [PathGlob],
    unix: Option<&'a crate::policy::UnixPolicy>,
    /// Grant slot (0: standing).
    grant: u16,
}

/// Where one identity's reach is resolved.
struct ReachContext<'a> {
    cache: &'a mut Resolver,
    identity: &'a str,
    mounts: &'a Mounts,
    r: &'a mut Resolved,
    ri: &'a mut ResolvedIdentity,
}

impl ReachContext<'_> {
    /// Resolves `reach` into the identity's entries, each tagged with its grant slot.
    fn resolve(&mut self, reach: &Reach<'_>) {
        let tag = |list: &mut Vec<Entry>, from: usize| list[from..].iter_mut().for_each(|e| e.grant = reach.grant);
        let from = self.ri.exec.len();
        for (index, rule) in reach.exec.iter().enumerate() {
            exec_entries(self.cache, self.identity, index, rule, self.mounts, self.r, self.ri);
        }
        tag(&mut self.ri.exec, from);
        let from = self.ri.file_exceptions.len();
        self.file_exceptions(reach.files);
        tag(&mut self.ri.file_exceptions, from);
        if let Some(unix) = reach.unix {
            let from = self.ri.unix_allow.len();
            self.unix_sockets(unix);
            tag(&mut self.ri.unix_allow, from);
            self.ri.unix_allow_abstract.extend(unix.abstract_names.iter().map(|n| (n.clone(), reach.grant)));
        }
    }

    fn file_exceptions(&mut self, globs: &[PathGlob]) {
        for glob in globs {
            let ex = self.cache.expand(glob);
            self.r.watch.extend(ex.watch);
            for path in ex.found {
                let Ok((id, kind)) = object_id(&path, self.mounts) else { continue };
                // An excepted tree is keyed at its root only: the kernel looks for it above the
                // file (exceptions only ever allow, so one not found refuses).
                let value = if glob.is_tree() && kind == Kind::Dir {
                    fence_common::PROTECT_TREE
                } else {
                    fence_common::PROTECT_FILE
                };
                self.ri.file_exceptions.push(Entry::new(id, path, value));
            }
        }
    }

    fn unix_sockets(&mut self, unix: &crate::policy::UnixPolicy) {
        for glob in &unix.paths {
            let ex = self.cache.expand(glob);
            self.r.watch.extend(ex.watch);
            for path in ex.found {
                match object_id(&path, self.mounts) {
                    Ok((id, Kind::Socket)) => self.ri.unix_allow.push(Entry::new(id, path, 0)),
                    Ok(_) => self.r.warnings.push(format!(
                        "identity \"{}\": unix.allow {} is not a socket",
                        self.identity,
                        path.display()
                    )),
                    Err(_) => {}
                }
            }
        }
    }
}

/// The current cgroups of unit and managed selectors (managed ones are created), and their
/// parents to watch: a unit that restarts gets a new cgroup at the same path.
fn selector_cgroups(set: &PolicySet, cgroup_root: &Path, r: &mut Resolved) {
    for identity in &set.identities {
        for cg in &identity.cgroups {
            let dir = cgroup_root.join(cg.path.trim_start_matches('/'));
            match &cg.kind {
                SelectorKind::Cgroup => continue,
                SelectorKind::Managed => {
                    if let Err(e) = crate::cgroup::make_managed(&dir) {
                        r.warnings.push(format!(
                            "identity \"{}\": cannot create its cgroup {}: {e}",
                            identity.name,
                            dir.display()
                        ));
                    }
                }
                SelectorKind::Unit(_) => {}
            }
            if let Some(parent) = dir.parent() {
                // While the parent is missing, its nearest existing ancestor is watched, to
                // see it made again.
                let mut watched = parent;
                while !watched.exists() && watched != cgroup_root {
                    let Some(up) = watched.parent() else { break };
                    watched = up;
                }
                r.watch.insert(watched.to_owned());
                if let (Ok(id), Some(rel)) = (crate::cgroup::id_of(parent), Path::new(&cg.path).parent()) {
                    r.parent_ids.insert(rel.display().to_string(), id);
                }
            }
            if let Ok(id) = crate::cgroup::id_of(&dir) {
                r.cgroup_ids.insert(cg.path.clone(), id);
            }
        }
    }
}

/// An env root: the directory itself, the `.env*` files below it by inode (what a fanotify
/// mark needs), and every directory below, watched, so that a new one is seen.
fn env_root_entries(cache: &mut Resolver, root: &Path, mounts: &Mounts, r: &mut Resolved) {
    r.watch.insert(root.parent().unwrap_or(root).to_owned());
    match object_id(root, mounts) {
        Ok((id, Kind::Dir)) => {
            r.protected.push(Entry::new(id, root.to_owned(), fence_common::PROTECT_ENV_ROOT));
            let walk = cache.env_root(root);
            for path in &walk.env_files {
                if let Ok((id, Kind::File)) = object_id(path, mounts) {
                    r.protected.push(Entry::new(id, path.clone(), fence_common::PROTECT_FILE));
                }
            }
            r.watch.extend(walk.dirs.iter().cloned());
        }
        Ok(_) => r.warnings.push(format!("protect.env_roots: {} is not a directory", root.display())),
        Err(_) => {}
    }
}

/// The programs one exec rule allows: executable files, not the dynamic loader, with the
/// pinned content if the rule pins one.
fn exec_entries(
    cache: &mut Resolver,
    identity: &str,
    index: usize,
    rule: &crate::policy::ExecRule,
    mounts: &Mounts,
    r: &mut Resolved,
    ri: &mut ResolvedIdentity,
) {
    let ex = cache.expand(&rule.glob);
    r.watch.extend(ex.watch);
    let mut matched = 0;
    for path in ex.found {
        let Ok((id, Kind::File)) = object_id(&path, mounts) else { continue };
        if rule.sha256.is_some() {
            r.watch_files.insert(path.clone());
        }
        if path.file_name().is_some_and(|n| is_dynamic_loader(&n.to_string_lossy())) {
            r.warnings.push(format!(
                "identity \"{identity}\": exec.allow[{index}] {} matches the dynamic loader {}; not allowed",
                rule.glob,
                path.display()
            ));
            continue;
        }
        if let Some(want) = rule.sha256 {
            match cache.sha256(&path, id) {
                Ok(got) if got == want => {}
                Ok(_) => {
                    r.warnings.push(format!(
                        "identity \"{identity}\": exec.allow[{index}] {}: sha256 does not match the pinned value; not allowed",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => {
                    r.warnings.push(format!("identity \"{identity}\": {}: cannot hash: {e}", path.display()));
                    continue;
                }
            }
        }
        matched += 1;
        ri.exec.push(Entry::new(id, path, index as u32));
    }
    if matched == 0 {
        r.warnings.push(format!(
            "identity \"{identity}\": exec.allow[{index}] {} matches no executable file on this host",
            rule.glob
        ));
    }
}

fn protected_entries(cache: &mut Resolver, glob: &PathGlob, mounts: &Mounts, r: &mut Resolved) {
    let ex = cache.expand(glob);
    r.watch.extend(ex.watch);
    for path in ex.found {
        if is_public_key(&path) && glob.components().last().is_some_and(|c| c.starts_with("id_")) {
            continue;
        }
        let Ok((id, kind)) = object_id(&path, mounts) else { continue };
        match (glob.is_tree(), kind) {
            (true, Kind::Dir) => {
                tree_entries(cache, &path, mounts, r);
            }
            (_, Kind::Dir) => {}
            _ => r.protected.push(Entry::new(id, path, fence_common::PROTECT_FILE)),
        }
    }
}

/// Most inodes of one protected tree keyed one by one (directories first); the rest are
/// covered by the directories above them (BPF LSM: up to 32 levels up; fanotify: the marks of
/// their directory).
const MAX_TREE_KEYS: usize = 4096;

/// Every directory and regular file of the protected tree at `root`, each keyed by its own
/// inode: a directory as a tree (it covers what is created in it later), a file as a file. A
/// file hard-linked elsewhere, or a directory renamed out of the tree, is then still
/// protected, and a file's protection does not depend on how far below the root it is. Every
/// directory is watched, so that what is created later is keyed too.
fn tree_entries(cache: &mut Resolver, root: &Path, mounts: &Mounts, r: &mut Resolved) {
    let walk = cache.tree(root);
    let mut keyed = 0;
    for dir in &walk.dirs {
        r.watch.insert(dir.clone());
        if keyed < MAX_TREE_KEYS
            && let Ok((id, Kind::Dir)) = object_id(dir, mounts)
        {
            r.protected.push(Entry::new(id, dir.clone(), fence_common::PROTECT_TREE | fence_common::PROTECT_FILE));
            keyed += 1;
        }
    }
    for file in walk.files.iter().take(MAX_TREE_KEYS.saturating_sub(keyed)) {
        if let Ok((id, Kind::File)) = object_id(file, mounts) {
            r.protected.push(Entry::new(id, file.clone(), fence_common::PROTECT_FILE));
            keyed += 1;
        }
    }
    if walk.truncated || keyed < walk.dirs.len() + walk.files.len() {
        r.warnings.push(format!(
            "protect {}: {} directories and {} files, more than fence keys one by one ({MAX_TREE_KEYS}); the rest \
             are protected through the directories above them only",
            root.display(),
            walk.dirs.len(),
            walk.files.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use std::fs;

    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn expands_wildcards_and_lists_directories_to_watch() {
        let guard = tmp();
        let d = guard.path().to_path_buf();
        for u in ["alice", "bob"] {
            fs::create_dir_all(d.join(u).join(".ssh")).unwrap();
            fs::write(d.join(u).join(".ssh/id_ed25519"), "k").unwrap();
            fs::write(d.join(u).join(".ssh/known_hosts"), "h").unwrap();
        }
        let g = PathGlob::parse(&format!("{}/*/.ssh/id_*", d.display())).unwrap();
        let ex = expand(&g);
        assert_eq!(ex.found, vec![d.join("alice/.ssh/id_ed25519"), d.join("bob/.ssh/id_ed25519")]);
        assert!(ex.watch.contains(&d) && ex.watch.contains(&d.join("alice/.ssh")));
        // A literal path that does not exist yet: its parent is watched.
        let g = PathGlob::parse(&format!("{}/carol/.aws/**", d.display())).unwrap();
        let ex = expand(&g);
        assert!(ex.found.is_empty());
        assert!(ex.watch.contains(&d));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn object_ids_match_the_kernel_encoding_and_follow_symlinks() {
        let guard = tmp();
        let d = guard.path().to_path_buf();
        let f = d.join("file");
        fs::write(&f, "x").unwrap();
        std::os::unix::fs::symlink(&f, d.join("link")).unwrap();
        let mounts = Mounts::read();
        let (a, kind) = object_id(&f, &mounts).unwrap();
        let (b, _) = object_id(&d.join("link"), &mounts).unwrap();
        assert_eq!(kind, Kind::File);
        assert_eq!(a, b, "a symlink is its target");
        assert_eq!(a.ino, fs::metadata(&f).unwrap().ino());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mountinfo_devices() {
        let m = Mounts::parse("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 24 0:45 / /tmp rw - tmpfs tmpfs rw\n");
        assert_eq!(m.dev(24), Some((8 << 20) | 1));
        assert_eq!(m.dev(40), Some(45));
    }
}
