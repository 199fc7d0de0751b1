//! The unix-socket fence (BPF LSM `unix_stream_connect` and `unix_may_send`). The peer is
//! judged by what the kernel resolved: a path socket by its inode (so a symlink or hard link
//! to docker.sock is docker.sock), an abstract socket by its name.
//!
//! An identity with a unix allow-list may reach only the listed sockets; one without may
//! reach any socket except the host's default-deny set (container runtimes, the system
//! D-Bus, systemd's private socket: daemons that run code on request).

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use fence_common::{
    ABSTRACT_NAME_LEN, AbstractKey, EventKind, IDENTITY_DENY_ALL, IDENTITY_UNIX_ALLOWLIST, InodeKey, Mechanism,
    Operation, Reason,
};

use crate::{
    events, identity,
    kernel::{self, read},
    maps::{FENCE_UNIX, FENCE_UNIX_ABSTRACT, lookup},
};

const ALLOW: i32 = 0;
const EPERM: i32 = -1;
/// sizeof(sa_family_t) + the NUL that starts an abstract name.
const ABSTRACT_PREFIX: i32 = 3;

#[lsm(hook = "unix_stream_connect")]
pub fn fence_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    // (struct sock *sock, struct sock *other, struct sock *newsk, int ret)
    let previous: i32 = ctx.arg(3);
    if previous != ALLOW {
        return previous;
    }
    judge(ctx.arg(1), Operation::UnixConnect, Mechanism::LsmUnixStreamConnect)
}

#[lsm(hook = "unix_may_send")]
pub fn fence_lsm_unix_may_send(ctx: LsmContext) -> i32 {
    // (struct socket *sock, struct socket *other, int ret)
    let previous: i32 = ctx.arg(2);
    if previous != ALLOW {
        return previous;
    }
    let Some(o) = kernel::offsets() else { return ALLOW };
    let Some(sk) = read::<u64>(ctx.arg(1), o.socket_sk) else { return ALLOW };
    judge(sk, Operation::UnixSend, Mechanism::LsmUnixMaySend)
}

/// Judges a connect or send to the unix socket whose `struct sock` is `sk`.
#[inline(always)]
fn judge(sk: u64, operation: Operation, mech: Mechanism) -> i32 {
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    // struct unix_sock starts with struct sock: the same pointer.
    let path_dentry = read::<u64>(sk, o.unix_sock_path_dentry).unwrap_or(0);
    // Plain zero-initialised locals, no Option<struct>: the 6.1 verifier rejects LLVM's
    // spills of uninitialised or partial registers those produce.
    let mut inode = kernel::Inode { dev: 0, ino: 0, nlink: 0 };
    let mut name_key = AbstractKey::default();
    let (listed, host_denied) = if path_dentry != 0 {
        match kernel::dentry_inode(o, path_dentry) {
            Some(i) => inode = i,
            None => return ALLOW,
        }
        path_listed(&who, &inode)
    } else {
        let addr = read::<u64>(sk, o.unix_sock_addr).unwrap_or(0);
        if addr == 0 {
            // Unnamed peer: nothing to name in a policy.
            return ALLOW;
        }
        abstract_name(o, addr, &mut name_key);
        abstract_listed(&who, &mut name_key)
    };
    let flags = who.info.flags;
    let why = if flags & IDENTITY_DENY_ALL != 0 {
        Reason::IdentityDenyAll
    } else if listed {
        // On the identity's allow-list, or granted (a grant may open a default-deny socket).
        return ALLOW;
    } else if flags & IDENTITY_UNIX_ALLOWLIST != 0 {
        Reason::UnixNotAllowed
    } else if host_denied {
        Reason::UnixHostDenied
    } else {
        return ALLOW;
    };
    let head = events::header(&who, EventKind::Unix, operation, mech, why);
    events::send_object(head, o, |e| {
        if path_dentry != 0 {
            e.dev = inode.dev;
            e.ino = inode.ino;
            e.nlink = inode.nlink;
            kernel::fill_path(o, path_dentry, &mut e.path);
        } else {
            e.name[..ABSTRACT_NAME_LEN].copy_from_slice(&name_key.name);
            e.name_len = name_key.len;
        }
    });
    if who.audit() { ALLOW } else { EPERM }
}

/// (in the identity's allow-list, in the host's default-deny set) for a path socket.
#[inline(always)]
fn path_listed(who: &identity::Fenced, inode: &kernel::Inode) -> (bool, bool) {
    let mut key =
        InodeKey { generation: who.generation, identity: who.identity, ino: inode.ino, dev: inode.dev, _pad: 0 };
    let listed = crate::grants::inode_rule(lookup(&FENCE_UNIX, &key), who.identity).is_some();
    key.identity = 0;
    (listed, lookup(&FENCE_UNIX, &key).is_some())
}

/// Reads the peer's abstract name (without its leading NUL) into `key.name`/`key.len`.
#[inline(always)]
fn abstract_name(o: &fence_common::KernelOffsets, addr: u64, key: &mut AbstractKey) {
    let len = read::<i32>(addr, o.unix_address_len).unwrap_or(0) - ABSTRACT_PREFIX;
    let mut n = if len < 0 { 0 } else { len as u32 };
    if n > ABSTRACT_NAME_LEN as u32 {
        n = ABSTRACT_NAME_LEN as u32;
    }
    // sockaddr_un: 2 bytes of family, then the NUL, then the name.
    let src = addr + u64::from(o.unix_address_name) + 3;
    // SAFETY: n is at most the key's name length.
    unsafe { bpf_probe_read_kernel(key.name.as_mut_ptr().cast(), n, src as *const _) };
    key.len = n;
}

/// As [`path_listed`], for an abstract name.
#[inline(always)]
fn abstract_listed(who: &identity::Fenced, key: &mut AbstractKey) -> (bool, bool) {
    key.generation = who.generation;
    key.identity = who.identity;
    let listed = crate::grants::inode_rule(lookup(&FENCE_UNIX_ABSTRACT, key), who.identity).is_some();
    key.identity = 0;
    (listed, lookup(&FENCE_UNIX_ABSTRACT, key).is_some())
}
