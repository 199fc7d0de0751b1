//! Egress by name: the kernel steers every fenced identity's DNS (UDP and TCP port 53, to any
//! address) to the identity's own resolver in the agent, and allows connects to the addresses
//! the agent learned from the answers it let through, until they expire.
//!
//! Steering is on while [`Map::DnsResolvers`](crate::Map::DnsResolvers) holds the key
//! [`DNS_STEERING`]; a fenced identity without a resolver entry then gets EPERM for DNS
//! (fail closed: the agent is not ready, or could not open the identity's sockets).

use crate::NetRules;

/// The DNS port, steered for fenced identities.
pub const DNS_PORT: u16 = 53;

/// Key of [`crate::Map::DnsResolvers`] whose presence turns steering on (identity ids start
/// at 1).
pub const DNS_STEERING: u32 = 0;

/// Value of [`crate::Map::DnsResolvers`]: where an identity's DNS goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsResolver {
    /// IPv4 loopback address of the identity's resolver (network byte order): DNS to IPv4
    /// (and IPv4-mapped) destinations goes here.
    pub addr4: [u8; 4],
    /// Port at `addr4` (host byte order), UDP and TCP.
    pub port4: u16,
    /// Port at ::1 (host byte order), UDP and TCP: DNS to IPv6 destinations goes here.
    pub port6: u16,
}

/// Value of [`crate::Map::DnsSteered`]: where a steered socket meant to go, so that replies
/// and `getpeername` show that address again (keyed by the socket's cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSteered {
    /// The destination the process named (network byte order; IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Its port (host byte order).
    pub port: u16,
    /// `AF_INET` or `AF_INET6`: the family of `addr`.
    pub family: u16,
    /// The identity whose resolver the socket was steered to.
    pub identity: u32,
    /// Where it was steered, in the socket's family: the resolver's address (IPv4 in the
    /// first 4 bytes; ::1 or the IPv4-mapped resolver for an IPv6 socket) and port (host
    /// byte order).
    pub resolver: [u8; 16],
    pub resolver_port: u16,
    pub _pad: [u8; 6],
}

/// Key of [`crate::Map::Learned4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Learned4Key {
    pub identity: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Key of [`crate::Map::Learned6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Learned6Key {
    pub identity: u32,
    /// Network byte order.
    pub addr: [u8; 16],
}

/// Value of the learned-address maps: the ports the identity's rules allow to an address it
/// resolved, until `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedRules {
    /// `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`) after which new connects are refused.
    pub expires_ns: u64,
    pub rules: NetRules,
}

const _: () = {
    assert!(core::mem::size_of::<DnsResolver>() == 8);
    assert!(core::mem::size_of::<DnsSteered>() == 48);
    assert!(core::mem::size_of::<Learned4Key>() == 8);
    assert!(core::mem::size_of::<Learned6Key>() == 20);
    assert!(core::mem::size_of::<LearnedRules>() == 8 + core::mem::size_of::<NetRules>());
};
