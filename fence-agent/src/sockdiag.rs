//! Tearing down TCP connections through the kernel's sock_diag netlink interface
//! (NETLINK_SOCK_DIAG), as `ss -K` does: a dump of the host's TCP sockets (SOCK_DIAG_BY_FAMILY)
//! and the destruction of one of them (SOCK_DESTROY, which needs CAP_NET_ADMIN and a kernel
//! built with CONFIG_INET_DIAG_DESTROY). Used when a just-in-time egress grant ends: the
//! connections a fenced workload opened under the grant are closed, their owners see
//! ECONNABORTED and their peers a RST. Which sockets are the workload's is told by their inodes
//! (the "socket:[N]" links under /proc/PID/fd, [`socket_inodes_of`]).
//!
//! The sockets seen and destroyed are those of the network namespace the agent runs in.
//! Messages are built and parsed by hand, with bounds checks: no netlink crate, no `unsafe`.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    time::Duration,
};

use nix::sys::{
    socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt},
    time::TimeVal,
};
use thiserror::Error;

/// Netlink message types and flags (linux/netlink.h, linux/sock_diag.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

/// Sizes of struct nlmsghdr, inet_diag_sockid, inet_diag_req_v2 and inet_diag_msg.
const HDR_LEN: usize = 16;
const SOCKID_LEN: usize = 48;
const REQ_LEN: usize = 8 + SOCKID_LEN;
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// TCP states (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const TCP_MAX_STATE: u8 = 12;

/// How long a reply may take before a receive fails (the kernel answers at once).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: larger than the biggest datagram a dump sends (32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// What went wrong talking to the kernel's sock_diag interface.
#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] nix::Error),
    #[error("cannot send the sock_diag request ({what}): {source}")]
    Send { what: String, source: nix::Error },
    #[error("cannot receive the sock_diag reply ({what}): {source}")]
    Receive { what: String, source: nix::Error },
    #[error("the kernel refused the sock_diag request ({what}): {}", io::Error::from_raw_os_error(*errno))]
    Kernel { what: String, errno: i32 },
    #[error("truncated or malformed sock_diag message: {0}")]
    Malformed(&'static str),
    #[error("socket {src} -> {dst} has addresses of another family than its own ({family})")]
    Family { src: SocketAddr, dst: SocketAddr, family: u8 },
}

impl SockDiagError {
    /// The errno of a request the kernel refused. ENOENT from [`destroy`]: the socket is gone
    /// (closed meanwhile, or its 4-tuple is now another socket's: the cookie no longer matches).
    pub fn errno(&self) -> Option<i32> {
        match self {
            SockDiagError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// One TCP socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// The socket's family, `libc::AF_INET` or `libc::AF_INET6` (whose IPv4 connections have
    /// v4-mapped addresses, `::ffff:a.b.c.d`: see [`TcpSocket::peer`]).
    pub family: u8,
    /// Local address and port.
    pub src: SocketAddr,
    /// Remote address and port.
    pub dst: SocketAddr,
    /// TCP state (include/net/tcp_states.h: 1 ESTABLISHED, 2 SYN_SENT, 8 CLOSE_WAIT, ...).
    pub state: u8,
    /// Inode of the socket (0 for a connection not yet accepted).
    pub inode: u64,
    /// The kernel's cookie of the socket: [`destroy`] only destroys the socket that has it.
    pub cookie: [u32; 2],
    /// Owner's uid.
    pub uid: u32,
    /// Interface the socket is bound to (SO_BINDTODEVICE), 0 for none.
    pub interface: u32,
}

impl TcpSocket {
    /// The remote address, with a v4-mapped IPv6 address given as the IPv4 address it maps.
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.dst.ip().to_canonical(), self.dst.port())
    }
}

/// Every TCP socket of the host (IPv4 and IPv6), except listening ones and TIME_WAIT/CLOSE.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>, SockDiagError> {
    let mut diag = DiagSocket::open()?;
    let mut all = dump(&mut diag, libc::AF_INET as u8, 0, 0)?;
    all.extend(dump(&mut diag, libc::AF_INET6 as u8, 0, 0)?);
    Ok(all)
}

/// Destroys one socket (SOCK_DESTROY): the owner's next call fails with ECONNABORTED and the
/// peer gets a RST. Only the socket with this 4-tuple and cookie: a socket that is gone gives
/// [`SockDiagError::Kernel`] with ENOENT; a kernel without CONFIG_INET_DIAG_DESTROY gives
/// EOPNOTSUPP, a caller without CAP_NET_ADMIN EPERM.
pub fn destroy(sock: &TcpSocket) -> Result<(), SockDiagError> {
    let what = format!("destroy TCP socket {} -> {}", sock.src, sock.dst);
    let id = encode_id(sock)?;
    let mut diag = DiagSocket::open()?;
    let seq = diag.next_seq();
    let req = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, sock.family, 0, &id);
    diag.send(&req, &what)?;
    diag.receive(seq, &what, &mut |_| {})
}

/// The socket inodes ("socket:[N]" links under /proc/PID/fd) held by these processes. A
/// process that is gone, or whose descriptors cannot be read, adds nothing.
pub fn socket_inodes_of(pids: impl IntoIterator<Item = u32>) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else { continue };
            if let Some(inode) = link.to_str().and_then(socket_inode) {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// The inode of a "socket:[N]" descriptor link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether SOCK_DESTROY works on this kernel, as [`probe_destroy`] found.
#[derive(Debug)]
pub enum DestroySupport {
    /// SOCK_DESTROY closed the probe's connection.
    Available,
    /// It did not, for this reason.
    Unavailable(Unavailable),
}

impl DestroySupport {
    /// Whether SOCK_DESTROY can be relied on.
    pub fn is_available(&self) -> bool {
        matches!(self, DestroySupport::Available)
    }
}

/// Why SOCK_DESTROY cannot be used.
#[derive(Debug, Error)]
pub enum Unavailable {
    #[error("the kernel was built without CONFIG_INET_DIAG_DESTROY (SOCK_DESTROY: EOPNOTSUPP)")]
    NotBuiltIn,
    #[error("SOCK_DESTROY needs CAP_NET_ADMIN (EPERM)")]
    NotPermitted,
    #[error("sock_diag failed during the probe: {0}")]
    SockDiag(#[source] SockDiagError),
    #[error("cannot set up the probe's loopback connection: {0}")]
    Setup(#[source] io::Error),
    #[error("the probe's connection {0} is not in the kernel's TCP socket dump")]
    NotFound(String),
    #[error("SOCK_DESTROY was acknowledged but the probe's client socket {0}")]
    NotObserved(String),
}

/// Whether SOCK_DESTROY works on this kernel: tried on a throwaway loopback connection made
/// here (a listener on 127.0.0.1:0, a client connected to it): the client side is destroyed
/// and its next read must fail with ECONNABORTED.
pub fn probe_destroy() -> DestroySupport {
    match try_probe() {
        Ok(()) => DestroySupport::Available,
        Err(Unavailable::SockDiag(e)) if e.errno() == Some(libc::EOPNOTSUPP) => {
            DestroySupport::Unavailable(Unavailable::NotBuiltIn)
        }
        Err(Unavailable::SockDiag(e)) if e.errno() == Some(libc::EPERM) => {
            DestroySupport::Unavailable(Unavailable::NotPermitted)
        }
        Err(why) => DestroySupport::Unavailable(why),
    }
}

fn try_probe() -> Result<(), Unavailable> {
    let (_listener, mut client, _server) = probe_connection().map_err(Unavailable::Setup)?;
    let (src, dst) =
        (client.local_addr().map_err(Unavailable::Setup)?, client.peer_addr().map_err(Unavailable::Setup)?);
    let mut diag = DiagSocket::open().map_err(Unavailable::SockDiag)?;
    let found = dump(&mut diag, libc::AF_INET as u8, src.port(), dst.port()).map_err(Unavailable::SockDiag)?;
    let sock = found
        .into_iter()
        .find(|s| s.src == src && s.dst == dst)
        .ok_or(Unavailable::NotFound(format!("{src} -> {dst}")))?;
    destroy(&sock).map_err(Unavailable::SockDiag)?;
    match client.read(&mut [0u8; 1]) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        Err(e) => Err(Unavailable::NotObserved(format!("failed a read with {e}, not ECONNABORTED"))),
        Ok(n) => Err(Unavailable::NotObserved(format!("read {n} bytes, not ECONNABORTED"))),
    }
}

/// A loopback connection for the probe: the listener, the client (reads time out) and the
/// server side.
fn probe_connection() -> io::Result<(TcpListener, TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    client.set_read_timeout(Some(RECV_TIMEOUT))?;
    let (server, _) = listener.accept()?;
    Ok((listener, client, server))
}

/// The TCP sockets of one family, all but LISTEN, TIME_WAIT and CLOSE, with this local and
/// remote port (0: any).
fn dump(diag: &mut DiagSocket, family: u8, sport: u16, dport: u16) -> Result<Vec<TcpSocket>, SockDiagError> {
    let states = (1..=TCP_MAX_STATE)
        .filter(|s| ![TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE].contains(s))
        .fold(0u32, |mask, s| mask | (1 << s));
    let mut id = [0u8; SOCKID_LEN];
    id[0..2].copy_from_slice(&sport.to_be_bytes());
    id[2..4].copy_from_slice(&dport.to_be_bytes());
    let what = format!("dump {} TCP sockets", if family == libc::AF_INET as u8 { "IPv4" } else { "IPv6" });
    let seq = diag.next_seq();
    diag.send(&request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, family, states, &id), &what)?;
    let mut found = Vec::new();
    diag.receive(seq, &what, &mut |s| found.push(s))?;
    Ok(found)
}

/// A netlink message carrying an inet_diag_req_v2 for TCP.
fn request(kind: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    const TOTAL: u32 = (HDR_LEN + REQ_LEN) as u32;
    let mut msg = Vec::with_capacity(HDR_LEN + REQ_LEN);
    msg.extend_from_slice(&TOTAL.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(id);
    msg
}

/// The inet_diag_sockid of a socket: ports and addresses in network order, interface and
/// cookie as the kernel gave them.
fn encode_id(sock: &TcpSocket) -> Result<[u8; SOCKID_LEN], SockDiagError> {
    let octets = |a: SocketAddr| -> Option<Vec<u8>> {
        match (a.ip(), i32::from(sock.family)) {
            (IpAddr::V4(ip), libc::AF_INET) => Some(ip.octets().to_vec()),
            (IpAddr::V6(ip), libc::AF_INET6) => Some(ip.octets().to_vec()),
            _ => None,
        }
    };
    let bad = || SockDiagError::Family { src: sock.src, dst: sock.dst, family: sock.family };
    let (src, dst) = (octets(sock.src).ok_or_else(bad)?, octets(sock.dst).ok_or_else(bad)?);
    let mut id = [0u8; SOCKID_LEN];
    id[0..2].copy_from_slice(&sock.src.port().to_be_bytes());
    id[2..4].copy_from_slice(&sock.dst.port().to_be_bytes());
    id[4..4 + src.len()].copy_from_slice(&src);
    id[20..20 + dst.len()].copy_from_slice(&dst);
    id[36..40].copy_from_slice(&sock.interface.to_ne_bytes());
    id[40..44].copy_from_slice(&sock.cookie[0].to_ne_bytes());
    id[44..48].copy_from_slice(&sock.cookie[1].to_ne_bytes());
    Ok(id)
}

/// One message of a reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Socket(TcpSocket),
    /// NLMSG_DONE, or NLMSG_ERROR with error 0 (the acknowledgement).
    Done,
    /// The kernel's errno (positive).
    Error(i32),
    /// A message of another request, or of a type that carries nothing for us.
    Other,
}

/// The messages of one netlink datagram, those of other sequence numbers as [`Reply::Other`].
fn parse_datagram(mut buf: &[u8], seq: u32) -> Result<Vec<Reply>, SockDiagError> {
    let mut replies = Vec::new();
    while !buf.is_empty() {
        let len = read_u32(buf, 0).ok_or(SockDiagError::Malformed("netlink header shorter than 16 bytes"))?;
        let len = usize::try_from(len).map_err(|_| SockDiagError::Malformed("netlink message length"))?;
        if len < HDR_LEN || len > buf.len() {
            return Err(SockDiagError::Malformed("netlink message length out of the datagram's bounds"));
        }
        let kind = read_u16(buf, 4).ok_or(SockDiagError::Malformed("netlink header"))?;
        let msg_seq = read_u32(buf, 8).ok_or(SockDiagError::Malformed("netlink header"))?;
        let body = buf.get(HDR_LEN..len).ok_or(SockDiagError::Malformed("netlink message body"))?;
        replies.push(if msg_seq == seq { parse_message(kind, body)? } else { Reply::Other });
        let next = len.checked_next_multiple_of(4).unwrap_or(len).min(buf.len());
        buf = buf.get(next..).unwrap_or_default();
    }
    Ok(replies)
}

fn parse_message(kind: u16, body: &[u8]) -> Result<Reply, SockDiagError> {
    let errno =
        |code: i32| if code == 0 { Reply::Done } else { Reply::Error(code.checked_neg().unwrap_or(libc::EINVAL)) };
    match kind {
        NLMSG_ERROR => {
            let code = read_i32(body, 0).ok_or(SockDiagError::Malformed("NLMSG_ERROR without its error code"))?;
            Ok(errno(code))
        }
        // A dump's NLMSG_DONE carries the dump's status (0, or a negative errno).
        NLMSG_DONE => Ok(errno(read_i32(body, 0).unwrap_or(0))),
        SOCK_DIAG_BY_FAMILY => parse_socket(body).map(Reply::Socket),
        _ => Ok(Reply::Other),
    }
}

/// An inet_diag_msg (its attributes, if any, are not read).
fn parse_socket(body: &[u8]) -> Result<TcpSocket, SockDiagError> {
    let short = || SockDiagError::Malformed("inet_diag_msg shorter than 72 bytes");
    if body.len() < MSG_LEN {
        return Err(short());
    }
    let family = *body.first().ok_or_else(short)?;
    let state = *body.get(1).ok_or_else(short)?;
    let id = body.get(4..4 + SOCKID_LEN).ok_or_else(short)?;
    let sport = read_be16(id, 0).ok_or_else(short)?;
    let dport = read_be16(id, 2).ok_or_else(short)?;
    let src = parse_ip(family, id.get(4..20).ok_or_else(short)?)?;
    let dst = parse_ip(family, id.get(20..36).ok_or_else(short)?)?;
    Ok(TcpSocket {
        family,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        state,
        interface: read_u32(id, 36).ok_or_else(short)?,
        cookie: [read_u32(id, 40).ok_or_else(short)?, read_u32(id, 44).ok_or_else(short)?],
        uid: read_u32(body, 64).ok_or_else(short)?,
        inode: u64::from(read_u32(body, 68).ok_or_else(short)?),
    })
}

/// An address of an inet_diag_sockid (16 bytes, of which IPv4 uses the first 4).
fn parse_ip(family: u8, raw: &[u8]) -> Result<IpAddr, SockDiagError> {
    let wrong = SockDiagError::Malformed("inet_diag_msg of a family other than AF_INET/AF_INET6");
    match i32::from(family) {
        libc::AF_INET => Ok(Ipv4Addr::from(read_array::<4>(raw, 0).ok_or(wrong)?).into()),
        libc::AF_INET6 => Ok(Ipv6Addr::from(read_array::<16>(raw, 0).ok_or(wrong)?).into()),
        _ => Err(wrong),
    }
}

fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    read_array(buf, at).map(u16::from_ne_bytes)
}

fn read_be16(buf: &[u8], at: usize) -> Option<u16> {
    read_array(buf, at).map(u16::from_be_bytes)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    read_array(buf, at).map(u32::from_ne_bytes)
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    read_array(buf, at).map(i32::from_ne_bytes)
}

/// A NETLINK_SOCK_DIAG socket and the sequence number of its last request.
struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocket {
    fn open() -> Result<DiagSocket, SockDiagError> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(SockDiagError::Open)?;
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs().try_into().unwrap_or(5), 0);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(SockDiagError::Open)?;
        Ok(DiagSocket { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8], what: &str) -> Result<(), SockDiagError> {
        let kernel = NetlinkAddr::new(0, 0);
        socket::sendto(self.fd.as_raw_fd(), msg, &kernel, MsgFlags::empty())
            .map_err(|source| SockDiagError::Send { what: what.to_owned(), source })?;
        Ok(())
    }

    /// Reads the reply to request `seq` up to its end (NLMSG_DONE or the acknowledgement),
    /// handing each socket to `found`.
    fn receive(&self, seq: u32, what: &str, found: &mut dyn FnMut(TcpSocket)) -> Result<(), SockDiagError> {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = loop {
                match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
                    Err(nix::Error::EINTR) => continue,
                    r => break r.map_err(|source| SockDiagError::Receive { what: what.to_owned(), source })?,
                }
            };
            let datagram = buf.get(..n).ok_or(SockDiagError::Malformed("datagram larger than the receive buffer"))?;
            for reply in parse_datagram(datagram, seq)? {
                match reply {
                    Reply::Socket(s) => found(s),
                    Reply::Done => return Ok(()),
                    Reply::Error(errno) => return Err(SockDiagError::Kernel { what: what.to_owned(), errno }),
                    Reply::Other => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
