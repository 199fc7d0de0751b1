//! What the fuzz targets share: the policy pipeline as the agent runs it, a fixed clock, a
//! cgroup resolver and a host view with fixed answers, and fixed test signing keys.

use std::{
    fmt::Write as _,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use fence_agent::{
    events::build::HostView,
    policy::{self, CgroupResolver, Format, NamePattern, ResolveError, SourceDocument},
    vault::sign::SigningKey,
};
use jiff::Timestamp;

/// The fixed "now" of every target (2027-01-15T08:00:00Z): dates in inputs are judged against it.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("a valid timestamp")
}

/// A cgroup tree in which every path exists (its id is a hash of the path), except paths whose
/// last component starts with `missing`; the agent runs in `/system.slice/fence-agent.service`.
pub struct FakeCgroups;

impl CgroupResolver for FakeCgroups {
    fn root(&self) -> &Path {
        Path::new("/sys/fs/cgroup")
    }
    fn resolve(&self, path: &str) -> Result<u64, ResolveError> {
        if path.rsplit('/').next().is_some_and(|last| last.starts_with("missing")) {
            return Err(ResolveError::NotFound);
        }
        if path.contains("unreadable") {
            return Err(ResolveError::Other("permission denied".to_owned()));
        }
        let mut h = DefaultHasher::new();
        path.hash(&mut h);
        Ok(h.finish() | 1)
    }
    fn own_cgroup(&self) -> Option<String> {
        Some("/system.slice/fence-agent.service".to_owned())
    }
    fn find_unit(&self, unit: &str) -> Vec<String> {
        if unit.starts_with("stopped") { Vec::new() } else { vec![format!("/system.slice/{unit}")] }
    }
}

/// What the agent does with a policy file's text: parse it, then validate it as a set, offline
/// (`policy check --offline`) and against a cgroup tree (`run`). Error messages are rendered
/// too, as operators see them.
pub fn policy_text(data: &[u8], format: Format) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let document = match policy::parse_document(text, format) {
        Ok(d) => d,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let docs = [SourceDocument { path: PathBuf::from("fuzz.policy"), document }];
    for resolver in [None, Some(&FakeCgroups as &dyn CgroupResolver)] {
        match policy::validate(&docs, resolver, now()) {
            Ok(set) => {
                let mut out = String::new();
                let _ = write!(out, "{set:?}");
                set.identities.iter().for_each(names_resolve);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// Every name a valid identity lists is one it may resolve (a wildcard: a name one label below
/// its domain), unless the identity has expired.
fn names_resolve(identity: &policy::Identity) {
    for pattern in identity.names() {
        let qname = match pattern {
            NamePattern::Exact(name) => name.clone(),
            other => format!("x.{}", other.domain()),
        };
        assert!(identity.expired || identity.dns_allowance(&qname).is_some(), "{pattern} does not allow {qname}");
    }
}

/// A host with fixed answers (as in the unit tests of `events::build`).
pub struct FixedHost;

impl HostView for FixedHost {
    fn hostname(&self) -> &str {
        "host-a"
    }
    fn wall_time(&self, boot_ns: u64) -> Timestamp {
        // As the live host does: wall clock = boot clock + a fixed offset, the epoch when out
        // of range.
        Timestamp::from_nanosecond(1_800_000_000_000_000_000 + i128::from(boot_ns)).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    fn executable(&self, tgid: u32) -> Option<String> {
        tgid.is_multiple_of(2).then(|| "/usr/bin/curl".to_owned())
    }
    fn cgroup_path(&self, tgid: u32) -> Option<String> {
        tgid.is_multiple_of(3).then(|| "/system.slice/ci.service".to_owned())
    }
}

/// Seed of the test signing key the vault target signs with and its verifier trusts.
pub const TEST_KEY_SEED: [u8; 32] = [7; 32];
/// Seed of a key the verifier does not know.
pub const INTRUDER_KEY_SEED: [u8; 32] = [9; 32];

/// The key of a fixed seed, read through the agent's own key-file loader (a 0600 file holding
/// the seed in base64, as `fence-agent` keys are stored).
fn load_key(seed: &[u8; 32], name: &str) -> SigningKey {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("fence-fuzz-keys-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("creating a key file in the temporary directory");
    writeln!(f, "{}", base64::engine::general_purpose::STANDARD.encode(seed)).expect("writing the key file");
    drop(f);
    let key = SigningKey::load(&path).expect("the agent loads the key file it is given");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    key
}

/// The test signing key (trusted by the vault target's verifier).
pub fn test_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| load_key(&TEST_KEY_SEED, "test"))
}

/// A valid key that the verifier does not trust.
pub fn intruder_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| load_key(&INTRUDER_KEY_SEED, "intruder"))
}
