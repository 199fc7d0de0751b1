//! Cgroup attachments as BPF links that fence owns as plain file descriptors, so that every
//! kind of cgroup program can be pinned and unpinned alike. aya 0.16 attaches them all, but
//! cannot turn every kind's link into an `FdLink` to pin (cgroup sysctl and sockopt links
//! have no such conversion), so the two system calls used here are made directly:
//! BPF_LINK_CREATE and BPF_OBJ_PIN.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_attach_type, bpf_cmd};

/// `union bpf_attr` as far as the two commands use it, zero padded to a size every kernel
/// that has BPF links accepts (the kernel checks that bytes it does not know are zero).
#[repr(C, align(8))]
#[derive(Default)]
struct Attr {
    words: [u32; 16],
}

fn bpf(cmd: bpf_cmd, attr: &Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised buffer of the size given, alive for the call; the
    // kernel reads at most that many bytes from it.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *const Attr, size_of::<Attr>() as libc::c_uint)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A program attached to a cgroup through a link that fence holds (and may have pinned).
#[derive(Debug)]
pub struct CgroupLink {
    fd: OwnedFd,
    pin: Option<PathBuf>,
}

impl CgroupLink {
    /// Attaches the loaded program `prog` to the cgroup `cgroup` as `attach_type`. Multi-program
    /// semantics: other programs on the cgroup and its ancestors keep running.
    pub fn create(
        prog: BorrowedFd<'_>,
        cgroup: BorrowedFd<'_>,
        attach_type: bpf_attach_type,
    ) -> io::Result<CgroupLink> {
        let mut attr = Attr::default();
        attr.words[0] = prog.as_raw_fd() as u32;
        attr.words[1] = cgroup.as_raw_fd() as u32;
        attr.words[2] = attach_type as u32;
        let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &attr)?;
        // SAFETY: BPF_LINK_CREATE returned a new file descriptor that nothing else owns.
        Ok(CgroupLink { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, pin: None })
    }

    /// Pins the link at `path` (on bpffs): it stays attached when fence exits.
    pub fn pin(&mut self, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = Attr::default();
        let ptr = c.as_ptr() as u64;
        attr.words[0] = ptr as u32;
        attr.words[1] = (ptr >> 32) as u32;
        attr.words[2] = self.fd.as_raw_fd() as u32;
        bpf(bpf_cmd::BPF_OBJ_PIN, &attr)?;
        self.pin = Some(path.to_owned());
        Ok(())
    }

    /// Detaches: removes the pin, if any, and closes the link.
    pub fn detach(self) -> io::Result<()> {
        if let Some(p) = &self.pin {
            std::fs::remove_file(p)?;
        }
        drop(self.fd);
        Ok(())
    }
}
