//! Source routing (cgroup_skb/egress): a fenced socket's packet that carries an IPv6 routing
//! header (IPV6_RTHDR by setsockopt or as sendmsg ancillary data, segment routing included)
//! or IPv4 options (IP_OPTIONS: loose/strict source routes among them) is dropped. The connect/sendmsg hooks
//! judged the packet's final destination; a source route would send it to a first hop they
//! never saw.
//!
//! Attached at the attach points only (see the agent's `fences::bindings::attach_points`), so
//! packets of processes elsewhere never run this program.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use fence_common::{
    CacheKey, EventHeader, EventKind, IdentityKey, MAX_CGROUP_DEPTH, MODE_AUDIT, Mechanism, NO_ID, NO_IDENTITY,
    NetEvent, Operation, Reason, Verdict,
};

use crate::{
    events,
    maps::{FENCE_ACTIVE, FENCE_CGROUPS, FENCE_IDENTITIES, FENCE_IDENTITY_CACHE},
};

/// Program verdicts: let the packet go / drop it.
const PASS: i32 = 1;
const DROP: i32 = 0;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
/// IPv6 next-header values.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers looked through before the routing header (hop-by-hop, destination).
const MAX_EXT_HEADERS: u32 = 4;

#[cgroup_skb(egress)]
pub fn fence_skb_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the context pointer is valid for the program's run; a plain field read.
    let protocol = u32::from(u16::from_be(unsafe { (*skb).protocol } as u16));
    let routed = match protocol {
        ETH_P_IP => ipv4_has_options(&ctx),
        ETH_P_IPV6 => ipv6_routing_header(&ctx),
        _ => false,
    };
    if !routed {
        return PASS;
    }
    let Some((identity, generation, cgroup_id)) = identity_of_socket(skb) else { return PASS };
    // SAFETY: the value is copied out at once.
    let Some(info) = (unsafe { FENCE_IDENTITIES.get(&IdentityKey { generation, identity }) }).copied() else {
        return PASS;
    };
    let audit = info.mode == MODE_AUDIT;
    report(&ctx, protocol, identity, cgroup_id, info.policy_version, audit);
    if audit { PASS } else { DROP }
}

/// The identity of the packet's socket (its cgroup, or the nearest bound ancestor), through
/// the same cache the other hooks use.
#[inline(always)]
fn identity_of_socket(skb: *mut __sk_buff) -> Option<(u32, u32, u64)> {
    let active = FENCE_ACTIVE.get(0)?;
    let generation = active.generation;
    // SAFETY: the helper takes the context pointer the kernel gave the program.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let identity = match crate::identity::consistent(active) {
        Some(sequence) => {
            let key = CacheKey { cgroup_id, sequence, generation };
            // SAFETY: the value is copied out at once.
            match unsafe { FENCE_IDENTITY_CACHE.get(&key) } {
                Some(&id) => id,
                None => {
                    let found = walk(skb, generation);
                    let _ = FENCE_IDENTITY_CACHE.insert(&key, &found, 0);
                    found
                }
            }
        }
        None => walk(skb, generation),
    };
    (identity != NO_IDENTITY).then_some((identity, generation, cgroup_id))
}

/// The identity of the socket's cgroup or its nearest bound ancestor in `generation`.
#[inline(always)]
fn walk(skb: *mut __sk_buff, generation: u32) -> u32 {
    let mut found = NO_IDENTITY;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: the helper takes the context pointer the kernel gave the program; returns 0
        // past the socket cgroup's own level.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            break;
        }
        let ck = fence_common::CgroupKey { cgroup_id: id, generation, _pad: 0 };
        // SAFETY: the value is copied out at once.
        if let Some(&i) = unsafe { FENCE_CGROUPS.get(&ck) } {
            found = i;
        }
        level += 1;
    }
    found
}

/// An IPv4 header with options. Fenced sockets may send none: the ones that matter (loose and
/// strict source routes) would send the packet to a first hop the connect and sendmsg hooks
/// never judged, and the rest (record route, timestamps) have no use for them. (Looking for
/// LSRR/SSRR among the options, at data-dependent offsets, costs the verifier more than a
/// million instructions on 6.18.)
#[inline(always)]
fn ipv4_has_options(ctx: &SkBuffContext) -> bool {
    matches!(ctx.load::<u8>(0), Ok(first) if first & 0x0f > 5)
}

/// An IPv6 packet with a routing header (after hop-by-hop or destination options, if any).
#[inline(always)]
fn ipv6_routing_header(ctx: &SkBuffContext) -> bool {
    let Ok(mut next) = ctx.load::<u8>(6) else { return false };
    let mut off = 40u32;
    let mut n = 0;
    while n < MAX_EXT_HEADERS {
        match next {
            NEXTHDR_ROUTING => return true,
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let (Ok(nh), Ok(len)) = (ctx.load::<u8>(off as usize), ctx.load::<u8>(off as usize + 1)) else {
                    return false;
                };
                next = nh;
                off += (u32::from(len) + 1) * 8;
            }
            _ => return false,
        }
        n += 1;
    }
    false
}

/// The event: no task context here (a packet may leave from softirq), so the process fields
/// are empty; the socket's cgroup and the destination are known.
#[inline(always)]
fn report(ctx: &SkBuffContext, protocol: u32, identity: u32, cgroup_id: u64, policy_version: u32, audit: bool) {
    let mut addr = [0u8; 16];
    let family = if protocol == ETH_P_IP {
        if let Ok(a) = ctx.load::<[u8; 4]>(16) {
            addr[..4].copy_from_slice(&a);
        }
        2
    } else {
        if let Ok(a) = ctx.load::<[u8; 16]>(24) {
            addr = a;
        }
        10
    };
    let header = EventHeader {
        kind: EventKind::Net as u8,
        verdict: if audit { Verdict::WouldDeny as u8 } else { Verdict::Denied as u8 },
        operation: Operation::Packet as u8,
        mechanism: Mechanism::CgroupSkbEgress as u8,
        identity,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id,
        policy_version,
        reason: Reason::SourceRouting as u8,
        // A packet has no process here: no ids (never root's 0).
        uid: NO_ID,
        gid: NO_ID,
        euid: NO_ID,
        egid: NO_ID,
        ..EventHeader::default()
    };
    let protocol_byte = if family == 2 { ctx.load::<u8>(9).unwrap_or(0) } else { ctx.load::<u8>(6).unwrap_or(0) };
    let event = NetEvent { header, family, port: 0, protocol: u16::from(protocol_byte), sock_type: 0, addr };
    events::send(&event.header, event);
}
