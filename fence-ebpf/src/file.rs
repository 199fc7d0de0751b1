//! The credential-file fence (BPF LSM `file_open`): a fenced identity cannot open a file of
//! the host's protected set unless its policy names an exception.
//!
//! Matching is by inode, so other names for the same file (symlinks, hard links, bind mounts,
//! renames) match too. A protected directory covers everything below it; an env root covers
//! `.env*` files anywhere below it. Without BPF LSM the agent answers fanotify permission
//! events instead (user space, same rules).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use fence_common::{
    EventKind, IDENTITY_DENY_ALL, InodeKey, Mechanism, Operation, PROTECT_ENV_ROOT, PROTECT_FILE, PROTECT_TREE, Reason,
};

use crate::{
    events,
    identity::{self, Fenced},
    kernel::{self, Inode, read},
    maps::{FENCE_FILE_EXCEPT, FENCE_PROTECTED, lookup},
};

const ALLOW: i32 = 0;
const EPERM: i32 = -1;

/// Directory levels searched above a file for a protected or excepted directory.
const MAX_WALK: u32 = 16;

#[lsm(hook = "file_open")]
pub fn fence_lsm_file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != ALLOW {
        return previous;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let file: u64 = ctx.arg(0);
    let Some(o) = kernel::offsets() else { return ALLOW };
    let Some(inode) = kernel::file_inode(o, file) else { return ALLOW };
    let dentry = kernel::file_dentry(o, file).unwrap_or(0);
    if let Some(inode_ptr) = read::<u64>(file, o.file_f_inode)
        && let Some(verdict) = crate::escape::cgroup_write(&who, o, file, inode_ptr, dentry)
    {
        return verdict;
    }
    // The matching rule's inode; all zero when none. (No Option<Inode> here: the 6.1
    // verifier rejects spills of the uninitialised payload LLVM leaves in a `None`.)
    let mut rule = Inode { dev: 0, ino: 0, nlink: 0 };
    let why = if who.info.flags & IDENTITY_DENY_ALL != 0 {
        Reason::IdentityDenyAll
    } else if protected_without_exception(&who, o, &inode, dentry, &mut rule) {
        Reason::FileProtected
    } else {
        return ALLOW;
    };
    let head = events::header(&who, EventKind::File, Operation::Open, Mechanism::LsmFileOpen, why);
    events::send_object(head, o, |e| {
        e.dev = inode.dev;
        e.ino = inode.ino;
        e.nlink = inode.nlink;
        e.rule_dev = rule.dev;
        e.rule_ino = rule.ino;
        if dentry != 0 {
            kernel::fill_path(o, dentry, &mut e.path);
        }
    });
    if who.audit() { ALLOW } else { EPERM }
}

#[inline(always)]
fn key(who: &Fenced, identity: u32, i: &Inode) -> InodeKey {
    InodeKey { generation: who.generation, identity, ino: i.ino, dev: i.dev, _pad: 0 }
}

/// Whether the file is protected (its rule's inode goes to `rule`) and the identity has no
/// exception for it (on the file or any directory above it).
#[inline(always)]
fn protected_without_exception(
    who: &Fenced,
    o: &fence_common::KernelOffsets,
    inode: &Inode,
    dentry: u64,
    rule: &mut Inode,
) -> bool {
    let mut protected = false;
    if let Some(flags) = lookup(&FENCE_PROTECTED, &key(who, 0, inode))
        && flags & (PROTECT_FILE | PROTECT_TREE) != 0
    {
        protected = true;
        *rule = *inode;
    }
    let mut excepted = lookup(&FENCE_FILE_EXCEPT, &key(who, who.identity, inode)).is_some();
    let is_env = dentry != 0 && kernel::name_is_env(o, dentry);
    let mut d = dentry;
    let mut level = 0;
    while level < MAX_WALK && d != 0 {
        let Some(p) = kernel::parent(o, d) else { break };
        let Some(dir) = kernel::dentry_inode(o, p) else { break };
        if !protected
            && let Some(flags) = lookup(&FENCE_PROTECTED, &key(who, 0, &dir))
            && (flags & PROTECT_TREE != 0 || (is_env && flags & PROTECT_ENV_ROOT != 0))
        {
            protected = true;
            *rule = dir;
        }
        if !excepted
            && let Some(flags) = lookup(&FENCE_FILE_EXCEPT, &key(who, who.identity, &dir))
            && flags & PROTECT_TREE != 0
        {
            excepted = true;
        }
        d = p;
        level += 1;
    }
    protected && !excepted
}
