//! The helper's network operations beyond one std call: unix sockets by path or abstract
//! name, a DNS question, sendmmsg, TCP Fast Open.

use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use serde_json::{Value, json};

fn unix_addr(name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    match name.strip_prefix('@') {
        Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(name),
    }
}

pub(super) fn unix_connect(name: &str) -> io::Result<()> {
    std::os::unix::net::UnixStream::connect_addr(&unix_addr(name)?).map(drop)
}

pub(super) fn unix_send(name: &str) -> io::Result<()> {
    let s = std::os::unix::net::UnixDatagram::unbound()?;
    s.send_to_addr(b"fence", &unix_addr(name)?).map(drop)
}

/// One DNS question to `server` over UDP or TCP (built and read with hickory-proto).
pub(super) fn dns_query(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> io::Result<Value> {
    use std::io::{Read as _, Write as _};

    use fence_agent::dns::testing::{Message, MessageType, Name, OpCode, Query, RecordType};
    let bad = |e: String| io::Error::other(e);
    let qtype: RecordType = qtype.parse().map_err(|e| bad(format!("bad type: {e}")))?;
    let mut m = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).map_err(|e| bad(e.to_string()))?, qtype));
    let bytes = m.to_vec().map_err(|e| bad(e.to_string()))?;
    let timeout = Some(Duration::from_secs(5));
    let (reply, from) = if tcp {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        s.set_read_timeout(timeout)?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut reply)?;
        (reply, s.peer_addr()?)
    } else {
        let s = UdpSocket::bind(local_any(&server))?;
        s.set_read_timeout(timeout)?;
        s.send_to(&bytes, server)?;
        let mut buf = vec![0u8; 4096];
        let (n, from) = s.recv_from(&mut buf)?;
        buf.truncate(n);
        (buf, from)
    };
    let answer = Message::from_vec(&reply).map_err(|e| bad(format!("the answer does not parse: {e}")))?;
    let addrs: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            fence_agent::dns::testing::RData::A(a) => Some(a.0.to_string()),
            fence_agent::dns::testing::RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    Ok(json!({"rcode": u16::from(answer.metadata.response_code), "addrs": addrs, "from": from.to_string()}))
}

pub(super) fn local_any(to: &SocketAddr) -> SocketAddr {
    if to.is_ipv4() { "0.0.0.0:0".parse().expect("addr") } else { "[::]:0".parse().expect("addr") }
}

/// sendmmsg(2) of two datagrams: the first one's result decides.
pub(super) fn sendmmsg_two(s: &UdpSocket, to: SocketAddr) -> io::Result<()> {
    let dest = nix::sys::socket::SockaddrStorage::from(to);
    let payload = [io::IoSlice::new(b"one")];
    let payload2 = [io::IoSlice::new(b"two")];
    let mut data = nix::sys::socket::MultiHeaders::<nix::sys::socket::SockaddrStorage>::preallocate(2, None);
    let iovs = [payload, payload2];
    let addrs = [Some(dest), Some(dest)];
    let sent =
        nix::sys::socket::sendmmsg(s.as_raw_fd(), &mut data, &iovs, addrs, [], nix::sys::socket::MsgFlags::empty())
            .map_err(io::Error::from)?;
    let n = sent.count();
    if n == 2 { Ok(()) } else { Err(io::Error::other(format!("sendmmsg sent {n} of 2"))) }
}

/// A TCP Fast Open connect: sendto(MSG_FASTOPEN) on an unconnected socket.
pub(super) fn tcp_fastopen(to: SocketAddr) -> io::Result<()> {
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dest = nix::sys::socket::SockaddrStorage::from(to);
    use nix::sys::socket::SockaddrLike as _;
    // SAFETY: dest is a valid sockaddr of the given length; the buffer is valid.
    let r = unsafe {
        libc::sendto(fd.as_raw_fd(), b"fence".as_ptr().cast(), 5, libc::MSG_FASTOPEN, dest.as_ptr(), dest.len())
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
