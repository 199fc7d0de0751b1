//! Offsets of kernel struct fields, read by the agent from the running kernel's BTF and set
//! as a read-only global before the programs load.

/// Names of read-only globals the agent sets before loading.
pub mod globals {
    /// [`super::KernelOffsets`] of the running kernel.
    pub const OFFSETS: &str = "FENCE_OFFSETS";
    /// The run's token (`u64`, never 0): this run's programs send events only while
    /// [`crate::Map::Reporter`] holds it.
    pub const RUN: &str = "FENCE_RUN";
}

/// Offsets of kernel struct fields on the running kernel, set as the [`globals::OFFSETS`]
/// global before loading. `valid` is 1 once set; programs that read kernel structures do
/// nothing without it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    pub file_f_inode: u32,
    pub file_f_path_dentry: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_nlink: u32,
    pub sb_s_dev: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_name_name: u32,
    pub dentry_d_name_len: u32,
    pub binprm_file: u32,
    pub binprm_filename: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub socket_sk: u32,
    pub unix_sock_addr: u32,
    pub unix_sock_path_dentry: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    pub sb_s_magic: u32,
    pub file_f_mode: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
    /// Offset of `self.parent` (a `cgroup_subsys_state *`) in `struct cgroup`.
    pub cgroup_self_parent: u32,
    /// Offset of `self` in `struct cgroup` (to go from a parent css to its cgroup).
    pub cgroup_self: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    /// `task_struct.pid` (the thread id).
    pub task_pid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `inode.i_private` (on kernfs, the `kernfs_node`).
    pub inode_i_private: u32,
    /// `kernfs_node.parent` (`__parent` since 6.15).
    pub kernfs_node_parent: u32,
    /// `kernfs_node.name`.
    pub kernfs_node_name: u32,
    /// `task_struct.cred` (the task's subjective credentials for events: effective ids).
    pub task_cred: u32,
    /// `cred.euid` and `cred.egid` (`kuid_t`/`kgid_t`: the id at offset 0).
    pub cred_euid: u32,
    pub cred_egid: u32,
    /// How a `fown_struct` leads to its file: [`FOWN_EMBEDDED`] (before 6.12, `file.f_owner`
    /// is the struct itself, at offset `fown_file`), [`FOWN_POINTER`] (since 6.12,
    /// `fown_struct.file` at offset `fown_file`), or 0: unknown.
    pub fown_kind: u32,
    pub fown_file: u32,
    /// `inode.i_mode` (a u16: the file type and permissions).
    pub inode_i_mode: u32,
}

/// [`KernelOffsets::fown_kind`]: `struct file` holds its `fown_struct`.
pub const FOWN_EMBEDDED: u32 = 1;
/// [`KernelOffsets::fown_kind`]: `fown_struct` points to its file.
pub const FOWN_POINTER: u32 = 2;

impl KernelOffsets {
    /// All zero, `valid` 0: what the programs see until the agent sets the real offsets.
    pub const ZERO: KernelOffsets = KernelOffsets {
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
        sb_s_magic: 0,
        file_f_mode: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        cgroup_root: 0,
        cgroup_root_hierarchy_id: 0,
        cgroup_self_parent: 0,
        cgroup_self: 0,
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        task_tgid: 0,
        task_real_parent: 0,
        task_pid: 0,
        task_comm: 0,
        inode_i_private: 0,
        kernfs_node_parent: 0,
        kernfs_node_name: 0,
        task_cred: 0,
        cred_euid: 0,
        cred_egid: 0,
        fown_kind: 0,
        fown_file: 0,
        inode_i_mode: 0,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 172);
