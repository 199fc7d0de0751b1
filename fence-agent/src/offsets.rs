//! The kernel field offsets the exec, file and unix programs need, read from BTF.

use fence_common::KernelOffsets;

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
    })
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
    }
}
