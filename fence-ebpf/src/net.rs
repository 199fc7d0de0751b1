//! The network fence: cgroup connect4/6 and sendmsg4/6 (egress allow-lists) and sock_create
//! (only TCP and UDP sockets over IPv4/IPv6 for fenced identities).
//!
//! Unconnected UDP (sendto/sendmsg/sendmmsg with an address) reaches sendmsg4/6; connected
//! sockets were judged at connect. An IPv4-mapped IPv6 destination (::ffff:a.b.c.d) is judged
//! by the IPv4 rules: it is IPv4 traffic. DNS is steered to the agent first (see `dns`), and
//! addresses learned from allowed answers are allowed next to the prefixes of the policy.

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, lsm},
    maps::lpm_trie::Key,
    programs::{LsmContext, SockAddrContext, SockContext},
};
use fence_common::{
    EventKind, IDENTITY_DENY_ALL, IDENTITY_HOSTS4, IDENTITY_HOSTS6, Mechanism, NET_KEY_PREFIX_BITS, Net4Key, Net6Key,
    NetEvent, Operation, PROTO_TCP, PROTO_UDP, Reason,
};

use crate::{
    dns::{self, Named},
    events, grants,
    identity::{self, Fenced},
    maps::{FENCE_HOST4, FENCE_HOST6, FENCE_NET4, FENCE_NET6},
    verdicts,
};

/// Program verdict: let the operation proceed.
const ALLOW: i32 = 1;
/// Program verdict: the syscall fails with EPERM.
const DENY: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(connect4)]
pub fn fence_connect4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, Operation::Connect, Mechanism::CgroupConnect4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn fence_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, Operation::Sendmsg, Mechanism::CgroupSendmsg4)
}

#[cgroup_sock_addr(connect6)]
pub fn fence_connect6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, Operation::Connect, Mechanism::CgroupConnect6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn fence_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, Operation::Sendmsg, Mechanism::CgroupSendmsg6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn fence_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::unsteer(&ctx, dns::AF_INET);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn fence_recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::unsteer(&ctx, dns::AF_INET6);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn fence_getpeername4(ctx: SockAddrContext) -> i32 {
    dns::unsteer(&ctx, dns::AF_INET);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn fence_getpeername6(ctx: SockAddrContext) -> i32 {
    dns::unsteer(&ctx, dns::AF_INET6);
    ALLOW
}

/// Fenced identities get TCP and UDP sockets only: raw IP, ICMP, SCTP, MPTCP, UDP-Lite and
/// the like would leave through paths that connect/sendmsg do not see.
#[cgroup_sock(sock_create)]
pub fn fence_sock_create(ctx: SockContext) -> i32 {
    let Some(who) = identity::current() else {
        return ALLOW;
    };
    // SAFETY: the context pointer is valid for the program's run; plain field reads.
    let (family, sock_type, protocol) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if protocol_bit(sock_type, protocol) != 0 {
        return ALLOW;
    }
    decide(&who, socket_refused(&who, Mechanism::CgroupSockCreate, family, sock_type, protocol))
}

/// The event of a socket a fenced identity may not create.
#[inline(always)]
fn socket_refused(who: &Fenced, mech: Mechanism, family: u32, sock_type: u32, protocol: u32) -> NetEvent {
    NetEvent {
        header: events::header(who, EventKind::Net, Operation::Socket, mech, Reason::SocketKindNotAllowed),
        family: family as u16,
        port: 0,
        protocol: protocol as u16,
        sock_type: sock_type as u16,
        addr: [0; 16],
    }
}

/// `PROTO_*` bit for a TCP or UDP socket, 0 for anything else.
#[inline(always)]
fn protocol_bit(sock_type: u32, protocol: u32) -> u8 {
    match (sock_type, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) => PROTO_TCP,
        (SOCK_DGRAM, IPPROTO_UDP) => PROTO_UDP,
        _ => 0,
    }
}

/// The fields every network decision needs from the context.
struct Dest {
    sock_type: u32,
    protocol: u32,
    /// Host byte order.
    port: u16,
}

#[inline(always)]
fn dest(ctx: &SockAddrContext) -> Dest {
    // SAFETY: the context pointer is valid for the program's run; 4-byte field reads.
    let (sock_type, protocol, user_port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.type_, sa.protocol, sa.user_port)
    };
    // user_port holds the port in network byte order in its low 16 bits.
    Dest { sock_type, protocol, port: u16::from_be(user_port as u16) }
}

#[inline(always)]
fn judge_v4(ctx: &SockAddrContext, operation: Operation, mech: Mechanism) -> i32 {
    let Some(who) = identity::current() else {
        return ALLOW;
    };
    let d = dest(ctx);
    // SAFETY: as in `dest`.
    let ip4 = unsafe { (*ctx.sock_addr).user_ip4 };
    let addr = ip4.to_ne_bytes();
    let mut full = [0u8; 16];
    full[..4].copy_from_slice(&addr);
    let named = Named { family: dns::AF_INET, addr: full, mapped: false };
    let why = match steered(ctx, &who, &named, &d) {
        Some(verdict) => verdict,
        None => allowed_v4(&who, addr, &d),
    };
    let Some(why) = why else {
        return ALLOW;
    };
    decide(&who, net_event(&who, operation, mech, why, AF_INET, &d, full))
}

#[inline(always)]
fn judge_v6(ctx: &SockAddrContext, operation: Operation, mech: Mechanism) -> i32 {
    let Some(who) = identity::current() else {
        return ALLOW;
    };
    let d = dest(ctx);
    // SAFETY: as in `dest`.
    let ip6 = unsafe { (*ctx.sock_addr).user_ip6 };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        addr[i * 4..i * 4 + 4].copy_from_slice(&ip6[i].to_ne_bytes());
        i += 1;
    }
    let mapped = is_v4_mapped(&addr);
    let named = Named { family: dns::AF_INET6, addr, mapped };
    let why = match steered(ctx, &who, &named, &d) {
        Some(verdict) => verdict,
        None if mapped => allowed_v4(&who, [addr[12], addr[13], addr[14], addr[15]], &d),
        None => allowed_v6(&who, addr, &d),
    };
    let Some(why) = why else {
        return ALLOW;
    };
    decide(&who, net_event(&who, operation, mech, why, AF_INET6, &d, addr))
}

/// DNS of a fenced identity: `None` when the egress rules decide (not DNS, or steering off),
/// else `Some(None)` steered (allowed) or `Some(Some(why))` refused.
#[inline(always)]
fn steered(ctx: &SockAddrContext, who: &Fenced, named: &Named, d: &Dest) -> Option<Option<Reason>> {
    if protocol_bit(d.sock_type, d.protocol) == 0 {
        return None;
    }
    let deny_all = who.info.flags & IDENTITY_DENY_ALL != 0;
    dns::steer(ctx, who, named, d.port, deny_all).map(Result::err)
}

/// ::ffff:0:0/96
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// `None` when the policy allows the destination, else the [`Reason`] for refusing it.
#[inline(always)]
fn allowed_v4(who: &Fenced, addr: [u8; 4], d: &Dest) -> Option<Reason> {
    if who.info.flags & IDENTITY_DENY_ALL != 0 {
        return Some(Reason::IdentityDenyAll);
    }
    let proto = protocol_bit(d.sock_type, d.protocol);
    let mut full = [0u8; 16];
    full[..4].copy_from_slice(&addr);
    let cache = verdicts::dest(who, verdicts::V4, full, proto, d.port);
    if let Some(slot) = verdicts::cached(&cache) {
        return allowed_by(Some(slot));
    }
    let key = Net4Key { generation: who.generation, identity: who.identity, addr };
    // An identity with many single addresses has them in the host map (one lookup, however
    // many); a miss there, or an identity without, goes to the prefix trie.
    // SAFETY: the value is only read, within this program's run.
    let rules = if who.info.flags & IDENTITY_HOSTS4 != 0 { unsafe { FENCE_HOST4.get(&key) } } else { None };
    let rules = match rules {
        Some(rules) => Some(rules),
        None => FENCE_NET4.get(&Key::new(NET_KEY_PREFIX_BITS + 32, key)),
    };
    let slot = match rules {
        Some(rules) => rules.allows_where(proto, d.port, |slot| grants::live(slot, who.identity)),
        None => None,
    };
    if let Some(slot) = slot {
        verdicts::remember(&cache, slot);
        return allowed_by(Some(slot));
    }
    allowed_by(dns::learned_v4(who.identity, addr, proto, d.port))
}

#[inline(always)]
fn allowed_v6(who: &Fenced, addr: [u8; 16], d: &Dest) -> Option<Reason> {
    if who.info.flags & IDENTITY_DENY_ALL != 0 {
        return Some(Reason::IdentityDenyAll);
    }
    let proto = protocol_bit(d.sock_type, d.protocol);
    let cache = verdicts::dest(who, verdicts::V6, addr, proto, d.port);
    if let Some(slot) = verdicts::cached(&cache) {
        return allowed_by(Some(slot));
    }
    let key = Net6Key { generation: who.generation, identity: who.identity, addr };
    // As in `allowed_v4`.
    // SAFETY: the value is only read, within this program's run.
    let rules = if who.info.flags & IDENTITY_HOSTS6 != 0 { unsafe { FENCE_HOST6.get(&key) } } else { None };
    let rules = match rules {
        Some(rules) => Some(rules),
        None => FENCE_NET6.get(&Key::new(NET_KEY_PREFIX_BITS + 128, key)),
    };
    let slot = match rules {
        Some(rules) => rules.allows_where(proto, d.port, |slot| grants::live(slot, who.identity)),
        None => None,
    };
    if let Some(slot) = slot {
        verdicts::remember(&cache, slot);
        return allowed_by(Some(slot));
    }
    allowed_by(dns::learned_v6(who.identity, addr, proto, d.port))
}

/// `None` (allowed) when a rule of grant slot `slot` allowed it (the use is counted), else the
/// refusal.
#[inline(always)]
fn allowed_by(slot: Option<u16>) -> Option<Reason> {
    match slot {
        Some(slot) => {
            grants::used(slot);
            None
        }
        None => Some(Reason::NoMatchingRule),
    }
}

#[inline(always)]
fn net_event(
    who: &Fenced,
    operation: Operation,
    mech: Mechanism,
    why: Reason,
    family: u32,
    d: &Dest,
    addr: [u8; 16],
) -> NetEvent {
    NetEvent {
        header: events::header(who, EventKind::Net, operation, mech, why),
        family: family as u16,
        port: d.port,
        protocol: d.protocol as u16,
        sock_type: d.sock_type as u16,
        addr,
    }
}

/// Reports the refusal and returns the verdict: audit mode allows.
#[inline(always)]
fn decide(who: &Fenced, event: NetEvent) -> i32 {
    events::send(&event.header, event);
    if who.audit() { ALLOW } else { DENY }
}

/// Socket families fenced identities may create: unix, inet, netlink, inet6.
const AF_UNIX: i32 = 1;
const AF_NETLINK: i32 = 16;

/// Socket families other than inet, inet6, unix and netlink (packet, XDP, vsock, bluetooth,
/// TIPC...) leave through paths the cgroup socket hooks never see (BPF LSM only; without it
/// cgroup/sock_create sees inet sockets only).
#[lsm(hook = "socket_create")]
pub fn fence_lsm_socket_create(ctx: LsmContext) -> i32 {
    // (int family, int type, int protocol, int kern, int ret)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || matches!(family, AF_UNIX | AF_NETLINK) || family == AF_INET as i32 || family == AF_INET6 as i32 {
        return 0;
    }
    let Some(who) = identity::current() else { return 0 };
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let event = socket_refused(&who, Mechanism::LsmSocketCreate, family as u32, sock_type as u32, protocol as u32);
    events::send(&event.header, event);
    if who.audit() { 0 } else { -1 }
}
