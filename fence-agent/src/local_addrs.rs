//! Addresses that reach this host itself or its cloud's instance services rather than a remote
//! peer: what a DNS answer must not open by default (`dns::unlearnable`), and what `policy
//! suggest` lists as a risk. One classifier for both.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Why an address reaches the host or its cloud's instance services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// 0.0.0.0 or `::`: a connect reaches this host itself.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// A cloud's instance metadata, credential or platform service.
    Metadata,
    /// 169.254.0.0/16, fe80::/10 (where the metadata services of most clouds live).
    LinkLocal,
    /// An address of one of this host's network interfaces.
    Interface,
}

impl Local {
    pub fn describe(self) -> &'static str {
        match self {
            Local::Unspecified => "the unspecified address, which a connect reaches as this host itself",
            Local::Loopback => "a loopback address (this host)",
            Local::Metadata => "a cloud metadata or platform service (instance credentials)",
            Local::LinkLocal => "a link-local address (host infrastructure, the cloud metadata service's network)",
            Local::Interface => "an address of this host's own interfaces (its services on every address)",
        }
    }
}

/// The cloud services at fixed addresses that hand out instance credentials or configuration:
/// 169.254.169.254 and 169.254.170.2 (link-local anyway), Alibaba's 100.100.100.200, Oracle's
/// legacy 192.0.0.192, Azure's WireServer 168.63.129.16; over IPv6, AWS's fd00:ec2::/32 (the
/// metadata service, the EKS Pod Identity agent), GCP's fd20:ce::254 and Oracle's
/// fd00:c1::a9fe:a9fe. None is a public name's answer.
pub fn metadata(ip: IpAddr) -> bool {
    match unwrap_v4(ip) {
        IpAddr::V4(a) => {
            matches!(a.octets(), [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200] | [192, 0, 0, 192])
                || a == Ipv4Addr::new(168, 63, 129, 16)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[0], s[1]) == (0xfd00, 0x0ec2)
                || a == Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)
                || a == Ipv6Addr::new(0xfd00, 0xc1, 0, 0, 0, 0, 0xa9fe, 0xa9fe)
        }
    }
}

/// How `ip` reaches the host or its cloud (interfaces aside: see [`Interfaces`]). IPv6 forms
/// that carry an IPv4 address (mapped `::ffff:a.b.c.d`, the deprecated compatible `::a.b.c.d`,
/// NAT64 `64:ff9b::/96`) are judged by it.
pub fn classify(ip: IpAddr) -> Option<Local> {
    let ip = unwrap_v4(ip);
    if ip.is_unspecified() {
        return Some(Local::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Local::Loopback);
    }
    if metadata(ip) {
        return Some(Local::Metadata);
    }
    match ip {
        IpAddr::V4(a) if a.is_link_local() => Some(Local::LinkLocal),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(Local::LinkLocal),
        _ => None,
    }
}

/// The IPv4 address an IPv6 address carries (mapped, compatible, NAT64 well-known prefix), or
/// `ip` itself.
fn unwrap_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else { return ip };
    if let Some(v4) = a.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = a.segments();
    let embedded = Ipv4Addr::from(((u32::from(s[6])) << 16) | u32::from(s[7]));
    let compatible = s[..6] == [0; 6] && u32::from(embedded) > 1;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 { IpAddr::V4(embedded) } else { ip }
}

/// The addresses of this host's interfaces that are up, read again when a second has passed
/// since the last read (a connect to any of them reaches the host's services on every
/// address).
#[derive(Debug, Default)]
pub struct Interfaces {
    cache: Mutex<Option<(Instant, HashSet<IpAddr>)>>,
}

const INTERFACES_FRESH: Duration = Duration::from_secs(1);

impl Interfaces {
    /// Whether `ip` (or the IPv4 address it carries) is one of this host's. Addresses that
    /// cannot be read count as none (the other classes still hold).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unwrap_v4(ip);
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = cache.as_ref().is_none_or(|(read, _)| read.elapsed() >= INTERFACES_FRESH);
        if stale {
            *cache = Some((Instant::now(), read_interfaces()));
        }
        cache.as_ref().is_some_and(|(_, addrs)| addrs.contains(&ip))
    }
}

fn read_interfaces() -> HashSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("the host's interface addresses are not readable: DNS answers naming them are not recognised");
        return HashSet::new();
    };
    // Interfaces that are down are left out: kube-proxy's kube-ipvs0, down by design, holds
    // every Service's cluster IP, which names legitimately resolve to.
    addrs
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classes_and_embedded_ipv4() {
        for (addr, class) in [
            ("0.0.0.0", Some(Local::Unspecified)),
            ("::", Some(Local::Unspecified)),
            ("::ffff:0.0.0.0", Some(Local::Unspecified)),
            ("127.255.0.1", Some(Local::Loopback)),
            ("::1", Some(Local::Loopback)),
            ("::127.0.0.1", Some(Local::Loopback)),
            ("64:ff9b::127.0.0.1", Some(Local::Loopback)),
            ("::ffff:127.0.0.1", Some(Local::Loopback)),
            ("169.254.169.254", Some(Local::Metadata)),
            ("64:ff9b::169.254.169.254", Some(Local::Metadata)),
            ("168.63.129.16", Some(Local::Metadata)),
            ("100.100.100.200", Some(Local::Metadata)),
            ("192.0.0.192", Some(Local::Metadata)),
            ("fd00:ec2::254", Some(Local::Metadata)),
            ("fd00:ec2::23", Some(Local::Metadata)),
            ("fd20:ce::254", Some(Local::Metadata)),
            ("fd00:c1::a9fe:a9fe", Some(Local::Metadata)),
            ("169.254.0.1", Some(Local::LinkLocal)),
            ("fe80::1", Some(Local::LinkLocal)),
            ("febf::1", Some(Local::LinkLocal)),
            // Not local: public, private networks (legitimate internal names), CGNAT, 6to4,
            // NAT64 of a public address, neighbours of the metadata addresses.
            ("192.0.2.9", None),
            ("10.0.0.1", None),
            ("100.64.0.1", None),
            ("2002:a9fe:a9fe::1", None),
            ("64:ff9b::192.0.2.9", None),
            ("fec0::1", None),
            ("fd00:ec3::254", None),
            ("100.100.100.201", None),
            ("169.255.0.1", None),
            ("::2", None),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn this_hosts_interfaces_are_found() {
        let own: Vec<IpAddr> = read_interfaces().into_iter().collect();
        assert!(own.iter().any(|a| a.is_loopback()), "lo is up: {own:?}");
        let interfaces = Interfaces::default();
        for a in &own {
            assert!(interfaces.contains(*a), "{a}");
        }
        assert!(!interfaces.contains(ip("192.0.2.250")));
    }
}
