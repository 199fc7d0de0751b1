//! The host's upstream resolvers and the exchange with them: UDP with a timeout, TCP when the
//! UDP answer is truncated or the client asked over TCP, the next upstream on any failure.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    path::{Path, PathBuf},
    time::Duration,
};

use hickory_proto::op::{Message, Query};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::{Instant, timeout, timeout_at},
};
use tracing::{debug, warn};

use super::{Transport, message};

/// The DNS port.
const DNS_PORT: u16 = 53;

/// Why the upstream resolvers could not be read.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no usable nameserver line")]
    NoNameserver { path: PathBuf },
    #[error("no upstream resolver given")]
    Empty,
    #[error("{0:?} is not an address, address:port or [address]:port")]
    BadAddress(String),
    #[error("{address:?}: no network interface {interface:?}")]
    NoInterface { address: String, interface: String },
}

/// The resolvers the engine forwards to, asked in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
}

impl Upstreams {
    /// These servers, in this order; at least one.
    pub fn new(servers: Vec<SocketAddr>) -> Result<Self, UpstreamError> {
        if servers.is_empty() {
            return Err(UpstreamError::Empty);
        }
        Ok(Self { servers })
    }

    /// No server at all: every allowed question gets SERVFAIL (the host has no resolver; DNS
    /// of fenced identities fails closed rather than going around fence).
    pub fn none() -> Self {
        Self { servers: Vec::new() }
    }

    /// A configured list (`[dns] upstream`): `192.0.2.1`, `192.0.2.1:5353`, `2001:db8::1`,
    /// `[2001:db8::1]:5353`, `fe80::1%eth0`, `[fe80::1%2]:53`; port 53 when none is given.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Self, UpstreamError> {
        let servers = items.iter().map(|s| parse_server(s.as_ref().trim())).collect::<Result<Vec<_>, _>>()?;
        Self::new(servers)
    }

    /// The `nameserver` lines of a resolv.conf file (`/etc/resolv.conf`), a systemd-resolved
    /// stub (`127.0.0.53`) included.
    pub fn from_resolv_conf(path: &Path) -> Result<Self, UpstreamError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| UpstreamError::Read { path: path.to_owned(), source })?;
        Self::parse_resolv_conf(&text).map_err(|e| {
            if let UpstreamError::Empty = e { UpstreamError::NoNameserver { path: path.to_owned() } } else { e }
        })
    }

    /// The `nameserver` lines of resolv.conf text, IPv4 or IPv6 (scoped `fe80::1%eth0` too);
    /// other lines, comments (`#`, `;`) and addresses that do not parse are skipped (the latter
    /// with a warning), as the C library does. All nameservers are used, not only the first three.
    pub fn parse_resolv_conf(text: &str) -> Result<Self, UpstreamError> {
        let servers = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next()? == "nameserver").then_some(words.next()).flatten()
            })
            .filter_map(|addr| match parse_address(addr) {
                Ok(ip) => Some(ip),
                Err(e) => {
                    warn!(error = %e, "resolv.conf: nameserver skipped");
                    None
                }
            })
            .collect();
        Self::new(servers)
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Sends `query` (asked with `id`) to each upstream in turn until one answers; `own` are the
    /// resolver's listening addresses, never forwarded to. Returns the answer's bytes and message.
    pub(crate) async fn exchange(&self, x: &Exchange<'_>) -> Option<(Vec<u8>, Message)> {
        for &server in &self.servers {
            if x.own.contains(&server) {
                warn!(%server, "upstream is one of the resolver's own addresses: skipped (loop)");
                continue;
            }
            match x.with(server).await {
                Ok(answer) => return Some(answer),
                Err(e) => debug!(%server, error = %e, "upstream failed; trying the next"),
            }
        }
        None
    }
}

/// One forwarded question.
pub(crate) struct Exchange<'a> {
    pub bytes: &'a [u8],
    pub id: u16,
    pub query: &'a Query,
    pub transport: Transport,
    pub timeout: Duration,
    pub own: &'a HashSet<SocketAddr>,
}

/// Why one upstream gave no answer.
#[derive(Debug, Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no answer in time")]
    Timeout,
    #[error("answer does not parse")]
    Malformed,
    #[error("answer is not for the question")]
    Mismatch,
    #[error("query too large for TCP")]
    TooLarge,
}

impl Exchange<'_> {
    async fn with(&self, server: SocketAddr) -> Result<(Vec<u8>, Message), ExchangeError> {
        if self.transport == Transport::Tcp {
            return self.tcp(server).await;
        }
        let (bytes, reply) = self.udp(server).await?;
        if !reply.truncation {
            return Ok((bytes, reply));
        }
        debug!(%server, "truncated UDP answer; asking again over TCP");
        self.tcp(server).await
    }

    /// Over a connected UDP socket (only the server's datagrams arrive): datagrams that are not
    /// the answer (another id or question) are ignored until the deadline; one that does not
    /// parse fails this upstream.
    async fn udp(&self, server: SocketAddr) -> Result<(Vec<u8>, Message), ExchangeError> {
        let deadline = Instant::now() + self.timeout;
        let socket = UdpSocket::bind(unspecified(server)).await?;
        socket.connect(server).await?;
        socket.send(self.bytes).await?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let n = timeout_at(deadline, socket.recv(&mut buf)).await.map_err(|_| ExchangeError::Timeout)??;
            let bytes = buf.get(..n).unwrap_or_default();
            let reply = Message::from_vec(bytes).map_err(|_| ExchangeError::Malformed)?;
            if message::answers(&reply, self.id, self.query) {
                return Ok((bytes.to_vec(), reply));
            }
            debug!(%server, "UDP datagram that is not the answer ignored");
        }
    }

    /// Over TCP (RFC 1035 4.2.2: each message preceded by its length, two bytes).
    async fn tcp(&self, server: SocketAddr) -> Result<(Vec<u8>, Message), ExchangeError> {
        let io = async {
            let len = u16::try_from(self.bytes.len()).map_err(|_| ExchangeError::TooLarge)?;
            let mut stream = TcpStream::connect(server).await?;
            let mut framed = Vec::with_capacity(self.bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(self.bytes);
            stream.write_all(&framed).await?;
            let n = stream.read_u16().await?;
            let mut bytes = vec![0u8; usize::from(n)];
            stream.read_exact(&mut bytes).await?;
            Ok::<_, ExchangeError>(bytes)
        };
        let bytes = timeout(self.timeout, io).await.map_err(|_| ExchangeError::Timeout)??;
        let reply = Message::from_vec(&bytes).map_err(|_| ExchangeError::Malformed)?;
        if !message::answers(&reply, self.id, self.query) {
            return Err(ExchangeError::Mismatch);
        }
        Ok((bytes, reply))
    }
}

/// The wildcard address of `server`'s family, any port: where the query socket is bound.
fn unspecified(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// One configured server: an address with an optional port and zone.
fn parse_server(s: &str) -> Result<SocketAddr, UpstreamError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, port) = rest.split_once("]:").ok_or_else(|| UpstreamError::BadAddress(s.to_owned()))?;
        let port = port.parse().map_err(|_| UpstreamError::BadAddress(s.to_owned()))?;
        return parse_address(addr).map(|a| with_port(a, port));
    }
    if let Some((ip, port)) = s.split_once(':').filter(|(_, p)| !p.contains(':')) {
        let ip: Ipv4Addr = ip.parse().map_err(|_| UpstreamError::BadAddress(s.to_owned()))?;
        let port = port.parse().map_err(|_| UpstreamError::BadAddress(s.to_owned()))?;
        return Ok((ip, port).into());
    }
    parse_address(s)
}

fn with_port(mut addr: SocketAddr, port: u16) -> SocketAddr {
    addr.set_port(port);
    addr
}

/// An IPv4 or IPv6 address, the latter with an optional `%zone` (an interface name or index),
/// on port 53.
fn parse_address(s: &str) -> Result<SocketAddr, UpstreamError> {
    let bad = || UpstreamError::BadAddress(s.to_owned());
    let Some((ip, zone)) = s.split_once('%') else {
        return s.parse::<IpAddr>().map(|ip| (ip, DNS_PORT).into()).map_err(|_| bad());
    };
    let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
    let scope = match zone.parse::<u32>() {
        Ok(index) => index,
        Err(_) => nix::net::if_::if_nametoindex(zone)
            .map_err(|_| UpstreamError::NoInterface { address: s.to_owned(), interface: zone.to_owned() })?,
    };
    Ok(SocketAddrV6::new(ip, DNS_PORT, 0, scope).into())
}
