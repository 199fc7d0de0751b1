//! /proc/self/mountinfo, parsed once for every use: the cgroup2 mount, the bpffs mount, and
//! each mount's device (which the kernel programs key inodes by).
//!
//! A line: `id parent major:minor root mount-point options [optional fields...] - fstype
//! source super-options`. Paths escape space, tab, newline and backslash as `\ooo`.

use std::path::PathBuf;

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub major: u32,
    pub minor: u32,
    /// The directory of the file system mounted here (`/` unless a bind mount of a part).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// The mounts of this process's mount namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    pub mounts: Vec<Mount>,
}

impl MountInfo {
    /// Reads /proc/self/mountinfo; empty if it cannot be read.
    pub fn read() -> MountInfo {
        MountInfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// Parses mountinfo text; lines that do not parse are skipped.
    pub fn parse(text: &str) -> MountInfo {
        MountInfo { mounts: text.lines().filter_map(parse_line).collect() }
    }

    /// `path`, relative to the root of the file system on device `major:minor`, as a path from
    /// `/` through a mount of the whole file system (None: not mounted whole here, or the
    /// result does not exist).
    pub fn absolute(&self, device: &str, path: &str) -> Option<PathBuf> {
        let (major, minor) = device.split_once(':')?;
        let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
        self.mounts
            .iter()
            .filter(|m| m.major == major && m.minor == minor && m.root == "/")
            .map(|m| m.mount_point.join(path.trim_start_matches('/')))
            .find(|p| p.symlink_metadata().is_ok())
    }

    /// The first mount point of a file system type (`cgroup2`, `bpf`).
    pub fn mount_of(&self, fstype: &str) -> Option<PathBuf> {
        self.mounts.iter().find(|m| m.fstype == fstype).map(|m| m.mount_point.clone())
    }
}

fn parse_line(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let id = f.next()?.parse().ok()?;
    let _parent = f.next()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let root = unescape_octal(f.next()?);
    let mount_point = PathBuf::from(unescape_octal(f.next()?));
    let fstype = post.split(' ').next()?.to_owned();
    Some(Mount { id, major: major.parse().ok()?, minor: minor.parse().ok()?, root, mount_point, fstype })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.len() >= i + 4 {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v =
                    u32::from(digits[0] - b'0') * 64 + u32::from(digits[1] - b'0') * 8 + u32::from(digits[2] - b'0');
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
36 25 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        let m = MountInfo::parse(HYBRID);
        assert_eq!(m.mount_of("cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(m.mount_of("bpf"), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(m.mount_of("nfs"), None);
        assert_eq!(m.mounts[2].id, 34);
        assert_eq!((m.mounts[2].major, m.mounts[2].minor), (0, 29));
    }

    #[test]
    fn finds_cgroup2_with_optional_fields_and_escapes() {
        let m = MountInfo::parse("40 1 0:35 / /mnt/cg\\040two\\134x rw shared:1 master:2 - cgroup2 none rw\n");
        assert_eq!(m.mount_of("cgroup2"), Some(PathBuf::from("/mnt/cg two\\x")));
        // Not an escape: too short, or not octal.
        assert_eq!(unescape_octal("a\\04"), "a\\04");
        assert_eq!(unescape_octal("a\\09x"), "a\\09x");
    }

    #[test]
    fn no_cgroup2() {
        let only_v1 = "35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(MountInfo::parse(only_v1).mount_of("cgroup2"), None);
    }

    #[test]
    fn bad_lines_are_skipped() {
        let m = MountInfo::parse("garbage\n24 1 8:1 / / rw - ext4 /dev/sda1 rw\n1 2 x / /y - z\n");
        assert_eq!(m.mounts.len(), 1);
        assert_eq!((m.mounts[0].major, m.mounts[0].minor), (8, 1));
    }
}
