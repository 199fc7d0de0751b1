//! The policy service's part of egress by name. It owns the kernel's DNS maps (where each
//! identity's DNS is steered, the addresses it learned) and each identity's resolver (a UDP
//! socket and a TCP listener on an address of `[dns] resolvers` port 53, and on a port of ::1),
//! and keeps them in step with the policy in force: a resolver exists before an identity is
//! fenced, learned addresses follow the identity's rules when they change, and go with the
//! identity. Answers reach the kernel through the service too ([`DnsState::learn`]), so one
//! owner writes every map.
//!
//! The resolvers themselves run on the async runtime (`crate::dns`); they decide from
//! [`InForce`], a snapshot the service replaces after each apply.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
};

use fence_common::{DnsResolver, EventHeader, EventKind, Mechanism, NetEvent, Operation, Reason, Verdict};

use super::{
    ServiceHandle, dns_peer,
    learned::{Caps, Learned, Range, Row, Write, boot_ns},
};
use crate::{
    compile::CompiledPolicy,
    config::{DnsConfig, RefuseWith},
    dns::{self, Decide, Decision, Engine, EngineConfig, Learn, LearnError, LearnFuture, QueryEvent, Report, Server},
    events::{
        decode::{DnsQueryEvent, KernelEvent},
        summary::AgentEvents,
    },
    kernel::{MapsError, dns_maps::DnsKernel},
    policy::{Identity, Mode, PolicySet},
};

/// What an allowed name lets the identity reach: its rules' port ranges.
pub type Allowance = Vec<Range>;

/// What the resolvers decide from, per identity id.
#[derive(Debug, Default)]
pub struct InForce {
    identities: HashMap<u32, Entry>,
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    /// The bound cgroups' directories (to find the process behind a refused query).
    cgroups: Vec<PathBuf>,
    policy_version: u32,
    /// Where its resolver listens (IPv4), for events.
    resolver: Ipv4Addr,
}

pub type SharedInForce = Arc<RwLock<InForce>>;

/// [`Decide`] over the policy in force.
pub struct PolicyDecide(pub SharedInForce);

impl Decide<Allowance> for PolicyDecide {
    fn decide(&self, identity: u32, qname: &str) -> Decision<Allowance> {
        let in_force = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = in_force.identities.get(&identity) else { return Decision::Refuse };
        match entry.identity.dns_allowance(qname) {
            Some(a) => Decision::Allow(a.ports.iter().map(|p| (p.lo, p.hi, p.protocols, p.grant)).collect()),
            None if entry.identity.mode == Mode::Audit => Decision::AuditWouldRefuse,
            None => Decision::Refuse,
        }
    }
}

/// [`Learn`] through the policy service.
pub struct ServiceLearn(pub ServiceHandle);

impl Learn<Allowance> for ServiceLearn {
    fn learn<'a>(
        &'a self,
        identity: u32,
        qname: &'a str,
        allowance: &'a Allowance,
        addrs: &'a [dns::Learned],
    ) -> LearnFuture<'a> {
        let now = boot_ns();
        let addrs: Vec<(IpAddr, u64)> =
            addrs.iter().map(|a| (a.addr, now.saturating_add(u64::from(a.keep_secs) * 1_000_000_000))).collect();
        let learned = LearnedAnswer { identity, name: qname.to_owned(), ranges: allowance.clone(), addrs };
        Box::pin(async move { self.0.dns_learn(learned).await.map_err(LearnError) })
    }
}

/// An allowed answer's addresses, for the service to write.
#[derive(Debug, Clone)]
pub struct LearnedAnswer {
    pub identity: u32,
    pub name: String,
    pub ranges: Vec<Range>,
    /// Each address with its expiry (CLOCK_BOOTTIME ns).
    pub addrs: Vec<(IpAddr, u64)>,
}

/// [`Report`]: refused and would-refuse queries become `dns-query` events.
pub struct EventReport {
    pub in_force: SharedInForce,
    pub events: AgentEvents,
}

impl Report for EventReport {
    fn report(&self, q: &QueryEvent<'_>) {
        let verdict = match q.verdict {
            dns::Verdict::Refused => Verdict::Denied,
            dns::Verdict::WouldRefuse => Verdict::WouldDeny,
            dns::Verdict::UpstreamFailed | dns::Verdict::LearnFailed => {
                tracing::warn!(identity = q.identity, name = q.qname, verdict = %q.verdict, "DNS answer failed");
                return;
            }
        };
        let (cgroups, policy_version, resolver) = {
            let in_force = self.in_force.read().unwrap_or_else(PoisonError::into_inner);
            match in_force.identities.get(&q.identity) {
                Some(e) => (e.cgroups.clone(), e.policy_version, e.resolver),
                None => return,
            }
        };
        let tcp = q.transport == dns::Transport::Tcp;
        let who = dns_peer::find(q.peer, tcp, &cgroups).unwrap_or_default();
        let header = EventHeader {
            kind: EventKind::Net as u8,
            verdict: verdict as u8,
            operation: Operation::DnsQuery as u8,
            mechanism: Mechanism::Resolver as u8,
            identity: q.identity,
            boot_ns: boot_ns(),
            cgroup_id: who.cgroup_id,
            pid: who.tgid,
            tgid: who.tgid,
            uid: who.uid,
            gid: who.gid,
            policy_version,
            reason: Reason::NameNotAllowed as u8,
            comm: who.comm,
            ppid: who.ppid,
            euid: who.euid,
            egid: who.egid,
            ..EventHeader::default()
        };
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&resolver.octets());
        let net = NetEvent {
            header,
            family: 2,
            port: fence_common::DNS_PORT,
            protocol: if tcp { 6 } else { 17 },
            sock_type: if tcp { 1 } else { 2 },
            addr,
        };
        let event =
            DnsQueryEvent { net, name: q.qname.to_owned(), qtype: q.qtype.to_string(), resolved: q.resolved.to_vec() };
        self.events.send(KernelEvent::Dns(Box::new(event)));
    }
}

/// The engine's settings from `[dns]`.
pub fn engine_config(c: &DnsConfig) -> EngineConfig {
    EngineConfig {
        refusal: match c.refuse_with {
            RefuseWith::Refused => dns::Refusal::Refused,
            RefuseWith::Nxdomain => dns::Refusal::NxDomain,
        },
        ttl_grace: c.ttl_grace,
        ttl_floor: c.ttl_floor,
        ttl_cap: c.ttl_cap,
        learn_local: c.learn_local_addresses,
        ..EngineConfig::default()
    }
}

/// The learned-address table's size and evictions, for the metrics (read at each scrape).
#[derive(Debug, Default)]
pub struct LearnedStats {
    pub addresses: std::sync::atomic::AtomicU64,
    pub evictions: std::sync::atomic::AtomicU64,
}

/// One identity's resolver.
struct Running {
    slot: u32,
    resolver: DnsResolver,
    _server: Server,
}

/// The DNS state of the policy service.
pub struct DnsState {
    kernel: Box<dyn DnsKernel>,
    learned: Learned,
    config: DnsConfig,
    runtime: tokio::runtime::Handle,
    engine: Arc<Engine<Allowance>>,
    in_force: SharedInForce,
    running: HashMap<u32, Running>,
    stats: Arc<LearnedStats>,
}

impl DnsState {
    /// Takes over the kernel's DNS maps (and what an earlier run learned) and turns steering
    /// on: from now on a fenced identity's DNS reaches its resolver or fails.
    pub fn new(
        mut kernel: Box<dyn DnsKernel>,
        config: DnsConfig,
        runtime: tokio::runtime::Handle,
        engine: Arc<Engine<Allowance>>,
        in_force: SharedInForce,
    ) -> Result<DnsState, MapsError> {
        let caps = Caps { per_name: config.max_addresses_per_name, per_identity: config.max_addresses_per_identity };
        let mut learned = Learned::new(caps);
        // An earlier run (or another configuration) may have learned what this one refuses:
        // forgotten now, not left to open the host until it expires.
        let interfaces = crate::local_addrs::Interfaces::default();
        let (adopted, refused): (Vec<_>, Vec<_>) = kernel
            .learned()?
            .into_iter()
            .partition(|(_, addr, _)| dns::unlearnable(*addr, config.learn_local_addresses, &interfaces).is_none());
        let mut kept = Vec::new();
        for (identity, addr, rules) in refused {
            tracing::warn!(identity, %addr, "an address learned by an earlier run is not learnable now: forgotten");
            // Should the map refuse, the entry is adopted instead: it lives to its expiry, and
            // the agent still starts (it would close nothing by stopping).
            if let Err(e) = kernel.forget(identity, addr) {
                tracing::error!(identity, %addr, error = %e, "forgetting it failed: kept until it expires");
                kept.push((identity, addr, rules));
            }
        }
        learned.adopt(adopted.into_iter().chain(kept).collect());
        kernel.steer(true)?;
        let stats = Arc::default();
        Ok(DnsState { kernel, learned, config, runtime, engine, in_force, running: HashMap::new(), stats })
    }

    /// Before an apply: a resolver for each identity of `compiled` that has none yet, so that
    /// its DNS is answered from the moment it is fenced. An identity whose sockets cannot be
    /// opened gets none (its DNS fails, closed) and the reason is returned.
    pub fn prepare(&mut self, compiled: &CompiledPolicy) -> Vec<String> {
        let mut problems = Vec::new();
        for id in compiled.identities.iter().map(|i| i.id) {
            if self.running.contains_key(&id) {
                continue;
            }
            match self.start(id) {
                Ok(r) => {
                    self.running.insert(id, r);
                }
                Err(e) => problems.push(format!("identity #{id}: no DNS resolver: {e}")),
            }
        }
        problems
    }

    /// After an apply (or a failed one, with the set still in force): the resolvers decide
    /// from `set`; identities no longer in it lose their resolver and learned addresses; the
    /// others' learned addresses take their rules' ports now.
    pub fn commit(&mut self, set: &PolicySet, compiled: &CompiledPolicy, cgroup_dir: &dyn Fn(&str) -> PathBuf) {
        let mut in_force = InForce::default();
        for c in &compiled.identities {
            let Some(identity) = set.identities.iter().find(|i| i.name == c.name) else { continue };
            let Some(running) = self.running.get(&c.id) else { continue };
            in_force.identities.insert(
                c.id,
                Entry {
                    identity: identity.clone(),
                    cgroups: c.cgroups.iter().map(|(p, _)| cgroup_dir(p)).collect(),
                    policy_version: c.info.policy_version,
                    resolver: Ipv4Addr::from(running.resolver.addr4),
                },
            );
        }
        let gone: Vec<u32> = self.running.keys().copied().filter(|id| !in_force.identities.contains_key(id)).collect();
        for id in gone {
            self.stop(id);
        }
        let mut writes = Vec::new();
        for (&id, entry) in &in_force.identities {
            writes.extend(self.learned.reprice(id, |name| {
                entry
                    .identity
                    .dns_allowance(name)
                    .map(|a| a.ports.iter().map(|p| (p.lo, p.hi, p.protocols, p.grant)).collect())
            }));
        }
        self.write(writes);
        *self.in_force.write().unwrap_or_else(PoisonError::into_inner) = in_force;
    }

    /// An allowed answer: its addresses go into the kernel before the client sees it.
    pub fn learn(&mut self, answer: LearnedAnswer) -> Result<(), String> {
        let known =
            self.in_force.read().unwrap_or_else(PoisonError::into_inner).identities.contains_key(&answer.identity);
        if !known {
            return Err(format!("identity #{} is no longer in force", answer.identity));
        }
        let writes = self.learned.learn(answer.identity, &answer.name, &answer.ranges, &answer.addrs);
        let failed = self.write(writes);
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    }

    /// Drops what expired (the kernel already refuses it; this frees the room).
    pub fn sweep(&mut self) {
        let writes = self.learned.sweep(boot_ns());
        self.write(writes);
    }

    /// The grant slots learned entries still name.
    pub fn grant_slots(&self) -> std::collections::BTreeSet<u16> {
        self.learned.grant_slots()
    }

    /// What `identity` learned, by address, with the ranges whose slot `keep` accepts.
    pub fn learned_reach(
        &self,
        identity: u32,
        keep: impl Fn(u16) -> bool,
    ) -> Vec<(std::net::IpAddr, Vec<super::learned::Range>)> {
        self.learned.reach_of(identity, keep)
    }

    /// Every learned (identity, name, address).
    pub fn rows(&self) -> Vec<Row> {
        self.learned.rows()
    }

    pub fn engine(&self) -> &Arc<Engine<Allowance>> {
        &self.engine
    }

    pub fn evictions(&self) -> u64 {
        self.learned.evictions
    }

    /// What the metrics read.
    pub fn stats(&self) -> Arc<LearnedStats> {
        self.stats.clone()
    }

    /// Applies `writes` to the kernel; the errors, each in one line.
    fn write(&mut self, writes: Vec<Write>) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = self.write_kernel(writes);
        let addresses: usize = self.learned.sizes().iter().map(|(_, n)| n).sum();
        self.stats.addresses.store(addresses as u64, Relaxed);
        self.stats.evictions.store(self.learned.evictions, Relaxed);
        failed
    }

    fn write_kernel(&mut self, writes: Vec<Write>) -> Vec<String> {
        let mut failed = Vec::new();
        for w in writes {
            let r = match w {
                Write::Put { identity, addr, value } => self.kernel.learn(identity, addr, &value),
                Write::Delete { identity, addr } => self.kernel.forget(identity, addr),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "writing a learned address failed");
                failed.push(e.to_string());
            }
        }
        failed
    }

    fn stop(&mut self, id: u32) {
        self.running.remove(&id);
        if let Err(e) = self.kernel.remove_resolver(id) {
            tracing::warn!(identity = id, error = %e, "removing a DNS resolver entry failed");
        }
        let writes = self.learned.forget_identity(id);
        self.write(writes);
    }

    /// Opens `id`'s sockets on the first free slot, serves them, and steers its DNS there.
    fn start(&mut self, id: u32) -> io::Result<Running> {
        let (net, len) = self.config.resolvers;
        let size = 1u32 << (32 - u32::from(len));
        let used: Vec<u32> = self.running.values().map(|r| r.slot).collect();
        let mut last = io::Error::from(io::ErrorKind::AddrInUse);
        for slot in (1..size.saturating_sub(1)).filter(|s| !used.contains(s)) {
            let addr4 = Ipv4Addr::from(u32::from(net) + slot);
            let _guard = self.runtime.enter();
            match bind(id, addr4) {
                Ok((listeners, port6)) => {
                    let resolver = DnsResolver { addr4: addr4.octets(), port4: fence_common::DNS_PORT, port6 };
                    let server = dns::serve(id, listeners, self.engine.clone());
                    self.kernel.set_resolver(id, resolver).map_err(io::Error::other)?;
                    return Ok(Running { slot, resolver, _server: server });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

impl Drop for DnsState {
    /// The agent stops: with persistence the resolver entries stay, and a fenced identity's
    /// DNS fails (nothing listens) until the next run; without it everything goes.
    fn drop(&mut self) {
        self.running.clear();
    }
}

/// UDP and TCP on `addr4`:53 and on one port of ::1 (0 when the host has no ::1), as tokio
/// sockets (call inside the runtime).
fn bind(id: u32, addr4: Ipv4Addr) -> io::Result<(dns::Listeners, u16)> {
    let v4 = SocketAddr::new(addr4.into(), fence_common::DNS_PORT);
    let udp4 = std::net::UdpSocket::bind(v4)?;
    let tcp4 = std::net::TcpListener::bind(v4)?;
    let mut udp = vec![udp4];
    let mut tcp = vec![tcp4];
    let port6 = match bind_v6() {
        Ok((u, t, port)) => {
            udp.push(u);
            tcp.push(t);
            port
        }
        Err(e) => {
            tracing::warn!(identity = id, error = %e, "no DNS resolver on ::1: IPv6 DNS of the identity fails");
            0
        }
    };
    let mut listeners = dns::Listeners::default();
    for u in udp {
        u.set_nonblocking(true)?;
        listeners.udp.push(tokio::net::UdpSocket::from_std(u)?);
    }
    for t in tcp {
        t.set_nonblocking(true)?;
        listeners.tcp.push(tokio::net::TcpListener::from_std(t)?);
    }
    Ok((listeners, port6))
}

/// UDP and TCP on the same free port of ::1.
fn bind_v6() -> io::Result<(std::net::UdpSocket, std::net::TcpListener, u16)> {
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)) {
            Ok(tcp) => return Ok((udp, tcp, port)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
