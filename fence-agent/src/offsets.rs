//! The kernel field offsets the exec, file and unix programs need, read from BTF.

use fence_common::{FOWN_EMBEDDED, FOWN_POINTER, KernelOffsets};

use crate::btf::{Btf, BtfError};

/// Reads every offset from `btf`; any missing field is an error naming it.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        valid: 1,
        file_f_inode: btf.offset_of("file", &["f_inode"])?,
        file_f_path_dentry: btf.offset_of("file", &["f_path", "dentry"])?,
        inode_i_ino: btf.offset_of("inode", &["i_ino"])?,
        inode_i_sb: btf.offset_of("inode", &["i_sb"])?,
        inode_i_nlink: btf.offset_of("inode", &["i_nlink"])?,
        sb_s_dev: btf.offset_of("super_block", &["s_dev"])?,
        dentry_d_parent: btf.offset_of("dentry", &["d_parent"])?,
        dentry_d_inode: btf.offset_of("dentry", &["d_inode"])?,
        dentry_d_name_name: btf.offset_of("dentry", &["d_name", "name"])?,
        dentry_d_name_len: btf.offset_of("dentry", &["d_name", "len"])?,
        binprm_file: btf.offset_of("linux_binprm", &["file"])?,
        binprm_filename: btf.offset_of("linux_binprm", &["filename"])?,
        task_mm: btf.offset_of("task_struct", &["mm"])?,
        mm_exe_file: btf.offset_of("mm_struct", &["exe_file"])?,
        socket_sk: btf.offset_of("socket", &["sk"])?,
        unix_sock_addr: btf.offset_of("unix_sock", &["addr"])?,
        unix_sock_path_dentry: btf.offset_of("unix_sock", &["path", "dentry"])?,
        unix_address_len: btf.offset_of("unix_address", &["len"])?,
        unix_address_name: btf.offset_of("unix_address", &["name"])?,
        sb_s_magic: btf.offset_of("super_block", &["s_magic"])?,
        file_f_mode: btf.offset_of("file", &["f_mode"])?,
        cgroup_kn: btf.offset_of("cgroup", &["kn"])?,
        kernfs_node_id: btf.offset_of("kernfs_node", &["id"])?,
        cgroup_root: btf.offset_of("cgroup", &["root"])?,
        cgroup_root_hierarchy_id: btf.offset_of("cgroup_root", &["hierarchy_id"])?,
        cgroup_self_parent: btf.offset_of("cgroup", &["self", "parent"])?,
        cgroup_self: btf.offset_of("cgroup", &["self"])?,
        task_cgroups: btf.offset_of("task_struct", &["cgroups"])?,
        css_set_dfl_cgrp: btf.offset_of("css_set", &["dfl_cgrp"])?,
        task_tgid: btf.offset_of("task_struct", &["tgid"])?,
        task_real_parent: btf.offset_of("task_struct", &["real_parent"])?,
        task_pid: btf.offset_of("task_struct", &["pid"])?,
        task_comm: btf.offset_of("task_struct", &["comm"])?,
        inode_i_private: btf.offset_of("inode", &["i_private"])?,
        kernfs_node_parent: btf
            .offset_of("kernfs_node", &["parent"])
            .or_else(|_| btf.offset_of("kernfs_node", &["__parent"]))?,
        kernfs_node_name: btf.offset_of("kernfs_node", &["name"])?,
        task_cred: btf.offset_of("task_struct", &["cred"])?,
        cred_euid: btf.offset_of("cred", &["euid", "val"])?,
        cred_egid: btf.offset_of("cred", &["egid", "val"])?,
        fown_kind: fown(btf).map_or(0, |(kind, _)| kind),
        fown_file: fown(btf).map_or(0, |(_, offset)| offset),
        inode_i_mode: btf.offset_of("inode", &["i_mode"])?,
    })
}

/// How a `fown_struct` leads to its file (see [`KernelOffsets::fown_kind`]), or `None`: the
/// SIGIO programs then judge every signal a fenced task raises, as they would with no record.
fn fown(btf: &Btf) -> Option<(u32, u32)> {
    match btf.offset_of("fown_struct", &["file"]) {
        Ok(offset) => Some((FOWN_POINTER, offset)),
        Err(_) => btf.offset_of("file", &["f_owner"]).ok().map(|offset| (FOWN_EMBEDDED, offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_resolves_on_this_kernel() {
        let btf = Btf::from_sys_fs().expect("the kernel's BTF");
        let o = kernel_offsets(&btf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.valid, 1);
        assert!(o.file_f_inode > 0 && o.dentry_d_name_name > o.dentry_d_parent);
        assert!(o.task_cred > 0 && o.cred_egid > o.cred_euid, "{o:?}");
        assert!(matches!(o.fown_kind, FOWN_EMBEDDED | FOWN_POINTER), "{o:?}");
    }
}
