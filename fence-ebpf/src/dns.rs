//! Egress by name, the kernel's part. A fenced identity's DNS (TCP or UDP to port 53, any
//! address) is steered to the identity's own resolver in the agent (connect4/6, sendmsg4/6):
//! the agent knows who asks from where the query arrives, and nothing the process says. The
//! socket's cookie remembers the server the process named, so that replies (recvmsg4/6) and
//! getpeername show that server again, as resolvers check. Connects to the addresses the
//! agent learned from the answers it let through are allowed until they expire, judged here
//! on the kernel's clock, agent running or not.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    programs::SockAddrContext,
};
use fence_common::{DNS_PORT, DNS_STEERING, DnsSteered, Learned4Key, Learned6Key, LearnedRules, Reason};

use crate::{
    identity::Fenced,
    maps::{FENCE_DNS_RESOLVERS, FENCE_DNS_STEERED, FENCE_LEARNED4, FENCE_LEARNED6},
};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// ::1, as the four words of `bpf_sock_addr::user_ip6`.
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A destination a fenced socket names: the family of the socket and the address, IPv4 in
/// the first 4 bytes for an IPv4 socket.
pub struct Named {
    pub family: u16,
    pub addr: [u8; 16],
    /// The IPv6 address is IPv4-mapped (::ffff:a.b.c.d): IPv4 traffic from an IPv6 socket.
    pub mapped: bool,
}

/// Steers `who`'s DNS to its resolver: `None` when this is not DNS or steering is off (the
/// egress rules decide), `Some(Ok(()))` when steered (allowed, rewritten), `Some(Err(why))`
/// when DNS must be refused (the identity is deny-all, or has no resolver: fail closed).
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, who: &Fenced, to: &Named, port: u16, deny_all: bool) -> Option<Result<(), Reason>> {
    if port != DNS_PORT {
        return None;
    }
    // SAFETY: the value is only tested for presence.
    unsafe { FENCE_DNS_RESOLVERS.get(&DNS_STEERING) }?;
    if deny_all {
        return Some(Err(Reason::IdentityDenyAll));
    }
    // SAFETY: the value is copied out at once.
    let Some(r) = (unsafe { FENCE_DNS_RESOLVERS.get(&who.identity) }).copied() else {
        return Some(Err(Reason::DnsUnavailable));
    };
    let mut steered = DnsSteered {
        addr: to.addr,
        port,
        family: to.family,
        identity: who.identity,
        resolver: [0; 16],
        resolver_port: r.port4,
        _pad: [0; 6],
    };
    if to.family == AF_INET {
        steered.resolver[..4].copy_from_slice(&r.addr4);
    } else if to.mapped {
        steered.resolver[10] = 0xff;
        steered.resolver[11] = 0xff;
        steered.resolver[12..].copy_from_slice(&r.addr4);
    } else {
        steered.resolver = LOOPBACK6;
        steered.resolver_port = r.port6;
    }
    // SAFETY: the context is the program's own; the helper reads the socket behind it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    // A full table evicts its least recently used socket: that socket's replies then show
    // the resolver's address (its resolver may discard them and retry).
    let _ = FENCE_DNS_STEERED.insert(&cookie, &steered, 0);
    set_peer(ctx, to.family, &steered.resolver, steered.resolver_port);
    Some(Ok(()))
}

/// recvmsg4/6, getpeername4/6: a steered socket sees the server it named, not the resolver.
#[inline(always)]
pub fn unsteer(ctx: &SockAddrContext, family: u16) {
    // SAFETY: the context is the program's own; the helper reads the socket behind it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    // SAFETY: the value is copied out at once.
    let Some(s) = (unsafe { FENCE_DNS_STEERED.get(&cookie) }).copied() else { return };
    if s.family != family {
        return;
    }
    let (addr, port) = peer(ctx, family);
    if port == s.resolver_port && addr == s.resolver {
        set_peer(ctx, family, &s.addr, s.port);
    }
}

/// The address and port (host order) in the context, IPv4 in the first 4 bytes.
#[inline(always)]
fn peer(ctx: &SockAddrContext, family: u16) -> ([u8; 16], u16) {
    let mut addr = [0u8; 16];
    // SAFETY: the context pointer is valid for the program's run; 4-byte field reads.
    let sa = unsafe { &*ctx.sock_addr };
    if family == AF_INET {
        addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        let mut i = 0;
        while i < 4 {
            addr[i * 4..i * 4 + 4].copy_from_slice(&sa.user_ip6[i].to_ne_bytes());
            i += 1;
        }
    }
    (addr, u16::from_be(sa.user_port as u16))
}

#[inline(always)]
fn set_peer(ctx: &SockAddrContext, family: u16, addr: &[u8; 16], port: u16) {
    // SAFETY: the context pointer is valid for the program's run; the kernel lets these
    // programs write the address and port (4-byte stores).
    let sa = unsafe { &mut *ctx.sock_addr };
    if family == AF_INET {
        sa.user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    } else {
        let mut i = 0;
        while i < 4 {
            sa.user_ip6[i] = u32::from_ne_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]]);
            i += 1;
        }
    }
    sa.user_port = u32::from(port.to_be());
}

/// The grant slot (0: standing) of the rule through which `identity` learned `addr` from an
/// allowed answer, not expired, with `port` over `proto` allowed; `None` when it did not.
#[inline(always)]
pub fn learned_v4(identity: u32, addr: [u8; 4], proto: u8, port: u16) -> Option<u16> {
    // SAFETY: the value is copied out at once.
    let v = unsafe { FENCE_LEARNED4.get(&Learned4Key { identity, addr }) }.copied();
    v.and_then(|v| live(&v, identity, proto, port))
}

#[inline(always)]
pub fn learned_v6(identity: u32, addr: [u8; 16], proto: u8, port: u16) -> Option<u16> {
    // SAFETY: the value is copied out at once.
    let v = unsafe { FENCE_LEARNED6.get(&Learned6Key { identity, addr }) }.copied();
    v.and_then(|v| live(&v, identity, proto, port))
}

#[inline(always)]
fn live(v: &LearnedRules, identity: u32, proto: u8, port: u16) -> Option<u16> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now >= v.expires_ns {
        return None;
    }
    v.rules.allows_where(proto, port, |slot| crate::grants::live(slot, identity))
}
