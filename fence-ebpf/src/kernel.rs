//! Reading kernel structures. Field offsets come from the running kernel's BTF, set by the
//! agent in `FENCE_OFFSETS` before loading (Rust eBPF has no CO-RE relocations); every read
//! goes through bpf_probe_read_kernel, so a wrong pointer yields `None`, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task};
use fence_common::{DentryPath, KernelOffsets, NO_ID, PATH_COMPONENTS};

/// Set by the agent before loading. All zero, with `valid` 0, until then. Mutable as far as
/// the compiler knows, so that it never folds the zero initialiser into the programs; read
/// through [`offsets`] only.
#[unsafe(no_mangle)]
static mut FENCE_OFFSETS: KernelOffsets = KernelOffsets::ZERO;

/// The offsets, or `None` if the agent did not set them.
#[inline(always)]
pub fn offsets() -> Option<&'static KernelOffsets> {
    // SAFETY: programs only read the global; the agent writes it once, before loading.
    let o = unsafe { &*core::ptr::addr_of!(FENCE_OFFSETS) };
    // SAFETY: a plain read of a field of the global.
    if unsafe { core::ptr::read_volatile(&o.valid) } == 1 { Some(o) } else { None }
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

/// `/sys/fs/cgroup`'s file system (CGROUP2_SUPER_MAGIC).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Whether the inode lives on a cgroup2 file system.
#[inline(always)]
pub fn on_cgroup2(o: &KernelOffsets, inode: u64) -> bool {
    let Some(sb) = read::<u64>(inode, o.inode_i_sb) else { return false };
    read::<u64>(sb, o.sb_s_magic) == Some(CGROUP2_SUPER_MAGIC)
}

/// The cgroup id (kernfs node id) of a `struct cgroup`.
#[inline(always)]
pub fn cgroup_id(o: &KernelOffsets, cgroup: u64) -> Option<u64> {
    read::<u64>(read::<u64>(cgroup, o.cgroup_kn)?, o.kernfs_node_id)
}

/// The parent of a `struct cgroup`, or `None` at the root.
#[inline(always)]
pub fn cgroup_parent(o: &KernelOffsets, cgroup: u64) -> Option<u64> {
    let css = read::<u64>(cgroup, o.cgroup_self_parent)?;
    if css == 0 { None } else { Some(css - u64::from(o.cgroup_self)) }
}

/// A task's cgroup on the default (v2) hierarchy.
#[inline(always)]
pub fn task_cgroup(o: &KernelOffsets, task: u64) -> Option<u64> {
    read::<u64>(read::<u64>(task, o.task_cgroups)?, o.css_set_dfl_cgrp).filter(|&c| c != 0)
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

/// The effective uid and gid of `task` ([`NO_ID`] each on a failed read).
#[inline(always)]
pub fn effective_ids(o: &KernelOffsets, task: u64) -> (u32, u32) {
    match read::<u64>(task, o.task_cred) {
        Some(cred) => {
            (read::<u32>(cred, o.cred_euid).unwrap_or(NO_ID), read::<u32>(cred, o.cred_egid).unwrap_or(NO_ID))
        }
        None => (NO_ID, NO_ID),
    }
}

/// The effective uid and gid of the current task ([`NO_ID`] without offsets).
#[inline(always)]
pub fn current_effective_ids() -> (u32, u32) {
    let Some(o) = offsets() else { return (NO_ID, NO_ID) };
    // SAFETY: helper without arguments.
    effective_ids(o, unsafe { bpf_get_current_task() })
}

/// The process id (tgid) of the current task's parent; 0 without offsets or on a failed read.
#[inline(always)]
pub fn current_ppid() -> u32 {
    let Some(o) = offsets() else { return 0 };
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, o.task_real_parent).and_then(|parent| read::<i32>(parent, o.task_tgid)).map_or(0, |p| p as u32)
}
