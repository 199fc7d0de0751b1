//! Learn mode: a least-privilege policy from what an identity was seen to do.
//!
//! [`Observed`] gathers an identity's would-deny events (audit mode) and denials: the
//! destinations it connected or sent to, the names it asked for, the programs it ran, the
//! protected files it opened and the unix sockets it reached. [`suggest`] adds exactly those to
//! the identity's policy as it stands: addresses as /32 or /128, the ports seen, the protocol
//! seen; names as asked (no wildcard); programs, files and sockets by their full path. It never
//! widens on its own, and lists what should be read before the policy is applied ([`Risk`]):
//! credential files, container and D-Bus sockets, cloud metadata, private and loopback
//! networks, programs in writable or temporary directories, interpreters, and what policy
//! cannot allow at all (raw sockets, leaving the fence, ...).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use fence_common::{Operation, Reason, Verdict};

use crate::{
    events::record::Record,
    policy::model::{EgressDoc, ExecDoc, ExecEntryDoc, FilesDoc, IdentityDoc, Mode, PortDoc, Protocol, UnixDoc},
};

/// What one identity was seen to do that its policy did not allow.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    /// (protocol, address) → ports.
    pub egress: BTreeMap<(Proto, IpAddr), BTreeSet<u16>>,
    /// Names it asked its resolver for and was (or would have been) refused.
    pub names: BTreeSet<String>,
    /// Address → the names that resolved to it (audit-mode DNS events carry the answer):
    /// connects to it are the name's, not the address's.
    pub resolved: BTreeMap<IpAddr, BTreeSet<String>>,
    pub exec: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub unix: BTreeSet<String>,
    /// What no policy allows, by `fence.reason`, with a count.
    pub not_allowable: BTreeMap<String, u64>,
    /// Paths the kernel could not give in full (`.../name`): not added.
    pub partial_paths: BTreeSet<String>,
    /// Events read for the identity.
    pub events: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Observed {
    /// Takes in one event line's record, if it is the identity's and a denial or would-deny.
    /// Paths the kernel gave relative to their file system's root are made whole through
    /// `mounts` (this host's: suggest where the events were written).
    pub fn add(&mut self, identity: &str, r: &Record, mounts: &crate::mountinfo::MountInfo) {
        if r.fence.identity != identity
            || !matches!(r.fence.verdict, Verdict::WouldDeny | Verdict::Denied | Verdict::Killed)
        {
            return;
        }
        self.events += 1;
        let relative = r.fence.target.as_ref().is_some_and(|t| t.fs_relative);
        let target = r.fence.target.as_ref().map(|t| t.path.clone()).or(r.file.as_ref().map(|f| f.path.clone()));
        let device = r.file.as_ref().and_then(|f| f.device.as_deref());
        let target = match (target, device) {
            (Some(p), Some(dev)) if relative => {
                Some(mounts.absolute(dev, &p).map_or_else(|| format!("(on {dev}) {p}"), |a| a.display().to_string()))
            }
            (t, _) => t,
        };
        let target = target.as_deref();
        let mut path_into = |set: &mut BTreeSet<String>, path: Option<&str>| match path {
            Some(p) if p.starts_with('/') || p.starts_with('@') => {
                set.insert(p.to_owned());
            }
            Some(p) => {
                self.partial_paths.insert(p.to_owned());
            }
            None => {}
        };
        match (r.fence.operation, r.fence.reason) {
            (Operation::Connect | Operation::Sendmsg, Reason::NoMatchingRule) => {
                let proto = match r.network.as_ref().map(|n| n.transport.as_str()) {
                    Some("tcp") => Proto::Tcp,
                    Some("udp") => Proto::Udp,
                    _ => return self.not_allowable("socket-kind-not-allowed"),
                };
                if let Some(d) = &r.destination
                    && let Ok(ip) = d.ip.parse::<IpAddr>()
                {
                    self.egress.entry((proto, unmapped(ip))).or_default().insert(d.port);
                }
            }
            (Operation::DnsQuery, Reason::NameNotAllowed) => {
                if let Some(d) = &r.dns {
                    let name = d.question.name.trim_end_matches('.').to_ascii_lowercase();
                    for ip in d.resolved_ip.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                        self.resolved.entry(unmapped(ip)).or_default().insert(name.clone());
                    }
                    self.names.insert(name);
                }
            }
            (Operation::Exec, Reason::ExecNotAllowed) => path_into(&mut self.exec, target),
            (Operation::Open, Reason::FileProtected) => path_into(&mut self.files, target),
            (Operation::UnixConnect | Operation::UnixSend, Reason::UnixNotAllowed | Reason::UnixHostDenied) => {
                path_into(&mut self.unix, target)
            }
            (_, reason) => self.not_allowable(reason.as_str()),
        }
    }

    fn not_allowable(&mut self, reason: &str) {
        *self.not_allowable.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }
}

/// Something to read before applying a suggested policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Risk {
    pub what: String,
    pub why: &'static str,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

/// The identity's policy with what was observed added (mode `enforce`), and the risks.
pub fn suggest(base: &IdentityDoc, seen: &Observed) -> (IdentityDoc, Vec<Risk>) {
    let mut doc = base.clone();
    doc.mode = Mode::Enforce;
    let mut risks = BTreeSet::new();

    // Egress: a connect to an address a name resolved to is the name's (its rule learns the
    // address from the answer when enforcing); others are the address's, as /32 or /128.
    // Destinations with the same protocol and ports share a rule.
    let mut by_name: BTreeMap<(Proto, String), BTreeSet<u16>> = BTreeMap::new();
    let mut by_ports: BTreeMap<(Proto, Vec<u16>), Vec<IpAddr>> = BTreeMap::new();
    for ((proto, ip), ports) in &seen.egress {
        match seen.resolved.get(ip) {
            // One name answered with it: the connect is the name's.
            Some(names) if names.len() == 1 => {
                for name in names {
                    by_name.entry((*proto, name.clone())).or_default().extend(ports);
                    if let Some(why) = address_risk(*ip) {
                        risks.insert(Risk { what: format!("egress to {name}, which resolved to {ip}"), why });
                    }
                }
            }
            other => {
                if let Some(names) = other {
                    risks.insert(Risk {
                        what: format!(
                            "egress to {ip}, an answer for several names ({})",
                            names.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        why: "kept as an address: which name it was for cannot be told",
                    });
                }
                by_ports.entry((*proto, ports.iter().copied().collect())).or_default().push(*ip);
                if let Some(why) = address_risk(*ip) {
                    risks.insert(Risk { what: format!("egress to {ip} ({})", proto_str(*proto)), why });
                }
            }
        }
    }
    let mut rules: BTreeMap<(Proto, Vec<u16>), Vec<String>> = BTreeMap::new();
    for ((proto, ports), ips) in by_ports {
        rules.entry((proto, ports)).or_default().extend(ips.iter().map(|ip| host_cidr(*ip)));
    }
    let mut names_rules: BTreeMap<(Proto, Vec<u16>), Vec<String>> = BTreeMap::new();
    for ((proto, name), ports) in by_name {
        risks.insert(Risk {
            what: format!("egress to {name} ({})", proto_str(proto)),
            why: "by name: enforced, it reaches whatever the name resolves to then, not only the addresses seen",
        });
        names_rules.entry((proto, ports.into_iter().collect())).or_default().push(name);
    }
    // Names asked for whose addresses no connect was seen to (enforce mode, or an answer
    // not used): they need a rule to be resolved at all; its port is a guess.
    let connected: BTreeSet<&String> = names_rules.values().flatten().collect();
    let unused: Vec<String> = seen.names.iter().filter(|n| !connected.contains(n)).cloned().collect();
    if !unused.is_empty() {
        risks.insert(Risk {
            what: format!("names {}", unused.join(", ")),
            why: "no connect to what they resolved to was seen: their rule gets port 443 as a guess; narrow or remove it",
        });
        names_rules.entry((Proto::Tcp, vec![443])).or_default().extend(unused);
    }
    for (kind, list) in [("", rules), ("names-", names_rules)] {
        for (n, ((proto, ports), to)) in list.into_iter().enumerate() {
            doc.egress.push(EgressDoc {
                name: Some(format!("learned-{kind}{}-{}", proto_str(proto), n + 1)),
                to,
                ports: ports.iter().map(|p| PortDoc::Number(i64::from(*p))).collect(),
                protocol: match proto {
                    Proto::Tcp => Protocol::Tcp,
                    Proto::Udp => Protocol::Udp,
                },
            });
        }
    }

    // Programs: only where exec is restricted (no list: every program may already run).
    if !seen.exec.is_empty() {
        let exec = doc.exec.get_or_insert(ExecDoc { allow: Vec::new(), fileless: false });
        for p in &seen.exec {
            if !exec.allow.iter().any(|e| matches!(e, ExecEntryDoc::Path(x) if x == p)) {
                exec.allow.push(ExecEntryDoc::Path(p.clone()));
            }
            if let Some(why) = program_risk(p) {
                risks.insert(Risk { what: format!("exec {p}"), why });
            }
        }
    }
    if !seen.files.is_empty() {
        let files = doc.files.get_or_insert(FilesDoc { allow: Vec::new() });
        for p in &seen.files {
            if !files.allow.contains(p) {
                files.allow.push(p.clone());
            }
            risks.insert(Risk {
                what: format!("read {p}"),
                why: "a protected file (credentials): allowing it hands the identity a standing secret; prefer the broker",
            });
        }
    }
    if !seen.unix.is_empty() {
        let unix = doc.unix.get_or_insert(UnixDoc { allow: Vec::new() });
        for p in &seen.unix {
            if !unix.allow.contains(p) {
                unix.allow.push(p.clone());
            }
            if let Some(why) = socket_risk(p) {
                risks.insert(Risk { what: format!("unix socket {p}"), why });
            }
        }
    }
    for (reason, n) in &seen.not_allowable {
        risks.insert(Risk {
            what: format!("{n} event(s) {reason}"),
            why: "no policy allows this: the workload must change, or it stays denied",
        });
    }
    for p in &seen.partial_paths {
        risks.insert(Risk { what: format!("path {p}"), why: "the kernel did not give the full path: not added" });
    }
    (doc, risks.into_iter().collect())
}

fn proto_str(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// IPv4-mapped IPv6 as the IPv4 address (the IPv4 rules judge it).
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn address_risk(ip: IpAddr) -> Option<&'static str> {
    if crate::local_addrs::metadata(ip) {
        return Some("cloud instance metadata: the host's cloud credentials are one request away");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a service on this host (loopback)"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local: host infrastructure"),
        IpAddr::V4(v4) if v4.is_private() => Some("a private network (10/8, 172.16/12, 192.168/16)"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a service on this host (loopback)"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => Some("a private network (fc00::/7)"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local: host infrastructure"),
        _ => None,
    }
}

/// Interpreters run whatever they are given: allowing one allows every script.
const INTERPRETERS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "fish",
    "busybox",
    "python",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "tclsh",
    "java",
    "osascript",
    "pwsh",
    "awk",
    "gawk",
    "env",
];

fn program_risk(path: &str) -> Option<&'static str> {
    const WRITABLE: &[&str] = &["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/", "/home/", "/root/"];
    if WRITABLE.iter().any(|d| path.starts_with(d)) || writable_by_others(path) {
        return Some("a program in a writable or temporary directory: whoever can write there chooses what runs");
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    INTERPRETERS
        .contains(&stem)
        .then_some("an interpreter: allowing it allows every script it is given (pin scripts, not the interpreter)")
}

/// Whether the program's directory (or the program) can be written by others than root.
fn writable_by_others(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let p = std::path::Path::new(path);
    [Some(p), p.parent()]
        .into_iter()
        .flatten()
        .any(|q| std::fs::metadata(q).is_ok_and(|m| m.uid() != 0 || m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0))
}

fn socket_risk(path: &str) -> Option<&'static str> {
    const CONTAINER: &[&str] = &["docker.sock", "containerd.sock", "podman.sock", "crio.sock", "buildkitd.sock"];
    let name = path.rsplit('/').next().unwrap_or(path);
    if CONTAINER.contains(&name) {
        return Some("a container runtime's socket: whoever reaches it is root on the host");
    }
    if path.contains("dbus") || path.contains("bus/system_bus_socket") {
        return Some("D-Bus: reaches system services (systemd, logind, NetworkManager...)");
    }
    if path.ends_with("/systemd/private") || path.contains("/systemd/") {
        return Some("a systemd socket: controls services");
    }
    None
}

#[cfg(test)]
mod tests;
