//! Kernel event records as the agent reads them from the ring buffer: `events::decode::decode`,
//! then `events::build::build` of what decodes (with an empty directory, and with one that
//! knows the identity, its cgroup and some inodes), then the JSON line the agent writes.
#![no_main]

use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

use fence_agent::{
    compile::{CompiledIdentity, CompiledPolicy},
    events::{
        build::build,
        decode::{components, decode, path_into_components},
        directory::Directory,
    },
    policy::{Mode, PolicyVersion},
    resolve::ObjectId,
};
use fence_agent_fuzz::FixedHost;
use fence_common::{DentryPath, IdentityInfo};
use libfuzzer_sys::fuzz_target;

/// A directory that knows identity 7 (its policy version's short id is 0xabababab), cgroup 99,
/// and the inodes (dev 1, ino 2) and (dev 1, ino 3).
fn known() -> &'static Directory {
    static DIR: OnceLock<Directory> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut d = Directory::default();
        d.update(&CompiledPolicy {
            identities: vec![CompiledIdentity {
                id: 7,
                name: "ci-bot".into(),
                mode: Mode::Enforce,
                expired: false,
                info: IdentityInfo::default(),
                version: PolicyVersion([0xab; 32]),
                cgroups: vec![("/fence/ci".into(), 99)],
            }],
            ..Default::default()
        });
        d.set_objects(HashMap::from([
            (ObjectId { dev: 1, ino: 2 }, PathBuf::from("/etc/shadow")),
            (ObjectId { dev: 1, ino: 3 }, PathBuf::from("/root/.ssh")),
        ]));
        d
    })
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(event) => {
            for dir in [&Directory::default(), known()] {
                match build(&event, dir, &FixedHost) {
                    Ok(record) => {
                        let line = serde_json::to_string(&record).expect("a record serialises");
                        let _: serde_json::Value = serde_json::from_str(&line).expect("a record is valid JSON");
                    }
                    Err(e) => drop(e.to_string()),
                }
            }
        }
        Err(e) => drop(e.to_string()),
    }
    // The agent's own records (fanotify) carry paths it turned into dentry components.
    use std::os::unix::ffi::OsStrExt as _;
    let mut dentries = DentryPath::default();
    path_into_components(std::path::Path::new(std::ffi::OsStr::from_bytes(data)), &mut dentries);
    let (names, _complete) = components(&dentries);
    assert!(names.len() <= fence_common::PATH_COMPONENTS);
});
