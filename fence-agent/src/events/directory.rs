//! What user space knows about identity ids: names, modes, policy versions and bound cgroups.
//! The policy service updates it with every apply (and puts it back if the apply fails); the
//! event writer reads it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use crate::{
    compile::CompiledPolicy,
    policy::{Mode, PolicyVersion},
    resolve::ObjectId,
};

#[derive(Debug, Clone)]
pub struct DirectoryEntry {
    pub name: String,
    pub mode: Mode,
    pub version: PolicyVersion,
}

#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_id: HashMap<u32, DirectoryEntry>,
    cgroup_paths: HashMap<u64, String>,
    /// Paths of the inodes the agent resolved (protected files, programs, sockets).
    objects: HashMap<ObjectId, PathBuf>,
}

pub type SharedDirectory = Arc<RwLock<Directory>>;

impl Directory {
    /// Records the identities of a newly applied policy. Entries of identities that left the
    /// policy stay (events about them may still be in flight); ids are never reused.
    pub fn update(&mut self, policy: &CompiledPolicy) {
        for identity in &policy.identities {
            self.by_id.insert(
                identity.id,
                DirectoryEntry { name: identity.name.clone(), mode: identity.mode, version: identity.version },
            );
            for (path, id) in &identity.cgroups {
                self.cgroup_paths.insert(*id, path.clone());
            }
        }
    }

    /// Records the paths of resolved inodes (replacing the previous set).
    pub fn set_objects(&mut self, objects: HashMap<ObjectId, PathBuf>) {
        self.objects = objects;
    }

    pub fn object_path(&self, id: ObjectId) -> Option<&PathBuf> {
        self.objects.get(&id)
    }

    pub fn identity(&self, id: u32) -> Option<&DirectoryEntry> {
        self.by_id.get(&id)
    }

    pub fn cgroup_path(&self, id: u64) -> Option<&str> {
        self.cgroup_paths.get(&id).map(String::as_str)
    }
}
