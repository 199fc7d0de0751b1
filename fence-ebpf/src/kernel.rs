//! Reading kernel structures. Field offsets come from the running kernel's BTF, set by the
//! agent in `FENCE_OFFSETS` before loading (Rust eBPF has no CO-RE relocations); every read
//! goes through bpf_probe_read_kernel, so a wrong pointer yields `None`, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task};
use fence_common::{DentryPath, KernelOffsets, PATH_COMPONENTS};

/// Set by the agent (read-only global). All zero, with `valid` 0, until then.
#[unsafe(no_mangle)]
static FENCE_OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    file_f_inode: 0,
    file_f_path_dentry: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    inode_i_nlink: 0,
    sb_s_dev: 0,
    dentry_d_parent: 0,
    dentry_d_inode: 0,
    dentry_d_name_name: 0,
    dentry_d_name_len: 0,
    binprm_file: 0,
    binprm_filename: 0,
    task_mm: 0,
    mm_exe_file: 0,
    socket_sk: 0,
    unix_sock_addr: 0,
    unix_sock_path_dentry: 0,
    unix_address_len: 0,
    unix_address_name: 0,
};

/// The offsets, or `None` if the agent did not set them.
#[inline(always)]
pub fn offsets() -> Option<KernelOffsets> {
    // SAFETY: a plain read of a global; volatile so that the compiler does not fold the
    // zero initialiser.
    let o = unsafe { core::ptr::read_volatile(&FENCE_OFFSETS) };
    if o.valid == 1 { Some(o) } else { None }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; failure is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

/// An inode's identity as the maps key it.
#[derive(Clone, Copy)]
pub struct Inode {
    pub dev: u32,
    pub ino: u64,
    pub nlink: u32,
}

#[inline(always)]
pub fn inode(o: &KernelOffsets, inode: u64) -> Option<Inode> {
    let ino = read::<u64>(inode, o.inode_i_ino)?;
    let sb = read::<u64>(inode, o.inode_i_sb)?;
    let dev = read::<u32>(sb, o.sb_s_dev)?;
    let nlink = read::<u32>(inode, o.inode_i_nlink).unwrap_or(1);
    Some(Inode { dev, ino, nlink })
}

#[inline(always)]
pub fn file_inode(o: &KernelOffsets, file: u64) -> Option<Inode> {
    inode(o, read::<u64>(file, o.file_f_inode)?)
}

#[inline(always)]
pub fn file_dentry(o: &KernelOffsets, file: u64) -> Option<u64> {
    read::<u64>(file, o.file_f_path_dentry).filter(|&d| d != 0)
}

#[inline(always)]
pub fn dentry_inode(o: &KernelOffsets, dentry: u64) -> Option<Inode> {
    inode(o, read::<u64>(dentry, o.dentry_d_inode)?)
}

/// The parent dentry, or `None` at the root of the file system.
#[inline(always)]
pub fn parent(o: &KernelOffsets, dentry: u64) -> Option<u64> {
    let p = read::<u64>(dentry, o.dentry_d_parent)?;
    if p == 0 || p == dentry { None } else { Some(p) }
}

/// Whether the dentry's name starts with `.env` (`.env`, `.env.local`, `.envrc`...).
#[inline(always)]
pub fn name_is_env(o: &KernelOffsets, dentry: u64) -> bool {
    let Some(name) = read::<u64>(dentry, o.dentry_d_name_name) else { return false };
    matches!(read::<[u8; 4]>(name, 0), Some(b) if &b == b".env")
}

/// Fills `out` with the names from `dentry` up to (not including) its file system's root.
#[inline(always)]
pub fn fill_path(o: &KernelOffsets, dentry: u64, out: &mut DentryPath) {
    out.depth = 0;
    out.complete = 0;
    let mut d = dentry;
    let mut i = 0;
    while i < PATH_COMPONENTS {
        let p = parent(o, d);
        if let Some(name) = read::<u64>(d, o.dentry_d_name_name) {
            // SAFETY: the helper bounds the copy by the destination's length.
            if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.components[i]) }.is_err() {
                out.components[i][0] = 0;
            }
        } else {
            out.components[i][0] = 0;
        }
        // A file system's root is named "/": not a component. Pseudo files (memfd, pipes)
        // have no parent but a real name, which is kept.
        let root_name = out.components[i][0] == b'/' && out.components[i][1] == 0;
        if !(p.is_none() && root_name) {
            out.depth = i as u32 + 1;
        }
        let Some(p) = p else {
            out.complete = 1;
            return;
        };
        d = p;
        i += 1;
    }
}

/// Fills `out` with the current task's executable.
#[inline(always)]
pub fn fill_current_exe(o: &KernelOffsets, out: &mut DentryPath) {
    out.depth = 0;
    out.complete = 0;
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let Some(mm) = read::<u64>(task, o.task_mm) else { return };
    let Some(exe) = read::<u64>(mm, o.mm_exe_file) else { return };
    if let Some(d) = file_dentry(o, exe) {
        fill_path(o, d, out);
    }
}
