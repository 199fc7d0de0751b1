//! sock_diag against the real kernel, on loopback only.
use std::io::Write as _;

use super::*;

const TCP_ESTABLISHED: u8 = 1;
/// The cookie that tells the kernel not to check it (INET_DIAG_NOCOOKIE).
const NO_COOKIE: [u32; 2] = [u32::MAX; 2];

/// SOCK_DESTROY needs CAP_NET_ADMIN: these tests run as root.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test destroys sockets (SOCK_DESTROY needs CAP_NET_ADMIN): run it as root"
    );
}

/// A loopback connection: (listener, client, server side).
fn connection(ip: IpAddr) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback listener");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect over loopback");
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    (listener, client, server)
}

/// The inode of one of our descriptors, from its /proc/self/fd link.
fn inode_of(stream: &TcpStream) -> u64 {
    let link = fs::read_link(format!("/proc/self/fd/{}", stream.as_raw_fd())).unwrap();
    socket_inode(link.to_str().unwrap()).unwrap()
}

fn finds_and_destroys_a_client_socket(ip: IpAddr, family: i32) {
    require_root();
    let (listener, mut client, mut server) = connection(ip);
    let (src, dst) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let all = tcp_sockets().unwrap();
    assert!(all.iter().all(|s| ![TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE].contains(&s.state)));
    assert!(!all.iter().any(|s| s.src == listener.local_addr().unwrap() && s.state == TCP_LISTEN));
    let sock = all.iter().find(|s| s.src.port() == src.port() && s.dst.port() == dst.port()).expect("client socket");
    assert_eq!((sock.src, sock.dst, i32::from(sock.family)), (src, dst, family));
    assert_eq!(sock.state, TCP_ESTABLISHED);
    assert_eq!(sock.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(sock.inode, inode_of(&client));
    assert!(socket_inodes_of([std::process::id()]).contains(&sock.inode));

    destroy(sock).unwrap();
    let mut buf = [0u8; 16];
    match server.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "server read: {e}"),
        Ok(n) => panic!("the server read {n} bytes from a destroyed connection"),
    }
    let err = client.read(&mut buf).expect_err("the client's read after SOCK_DESTROY");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "client read: {err}");
    assert!(client.write_all(b"x").is_err(), "the client's write after SOCK_DESTROY");
    // Gone now: a second destroy finds nothing.
    assert_eq!(destroy(sock).unwrap_err().errno(), Some(libc::ENOENT));
}

#[test]
fn sockdiag_destroys_an_ipv4_connection() {
    finds_and_destroys_a_client_socket(Ipv4Addr::LOCALHOST.into(), libc::AF_INET);
}

#[test]
fn sockdiag_destroys_an_ipv6_connection() {
    finds_and_destroys_a_client_socket(Ipv6Addr::LOCALHOST.into(), libc::AF_INET6);
}

/// A dual-stack listener's accepted IPv4 connection is an AF_INET6 socket with v4-mapped
/// addresses, which the kernel looks up among the IPv4 sockets.
#[test]
fn sockdiag_destroys_a_v4_mapped_connection() {
    require_root();
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("net.ipv6.bindv6only must be 0");
    let (server, _) = listener.accept().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sock = tcp_sockets().unwrap().into_iter().find(|s| s.inode == inode_of(&server)).expect("server socket");
    assert_eq!(i32::from(sock.family), libc::AF_INET6);
    assert_eq!(sock.src, SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), port));
    assert_eq!(sock.peer(), client.local_addr().unwrap());
    destroy(&sock).unwrap();
    match client.read(&mut [0u8; 4]) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "client read: {e}"),
        Ok(n) => panic!("the client read {n} bytes from a destroyed connection"),
    }
}

#[test]
fn sockdiag_destroy_spares_a_socket_with_another_cookie() {
    require_root();
    let (_listener, mut client, mut server) = connection(Ipv4Addr::LOCALHOST.into());
    let src = client.local_addr().unwrap();
    let mut sock = tcp_sockets().unwrap().into_iter().find(|s| s.src == src).expect("client socket");
    sock.cookie[0] ^= 1;
    assert_eq!(destroy(&sock).unwrap_err().errno(), Some(libc::ENOENT));
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn sockdiag_destroy_refuses_addresses_of_another_family() {
    let sock = TcpSocket {
        family: libc::AF_INET as u8,
        src: "[::1]:1".parse().unwrap(),
        dst: "127.0.0.1:2".parse().unwrap(),
        state: TCP_ESTABLISHED,
        inode: 0,
        cookie: NO_COOKIE,
        uid: 0,
        interface: 0,
    };
    assert!(matches!(destroy(&sock), Err(SockDiagError::Family { .. })));
}

#[test]
fn sockdiag_probe_finds_destroy_available() {
    require_root();
    let support = probe_destroy();
    assert!(support.is_available(), "{support:?}");
}

#[test]
fn sockdiag_socket_inodes_of_reads_descriptor_links() {
    let (_listener, client, server) = connection(Ipv4Addr::LOCALHOST.into());
    let mine = socket_inodes_of([std::process::id()]);
    assert!(mine.contains(&inode_of(&client)) && mine.contains(&inode_of(&server)));
    assert!(socket_inodes_of([u32::MAX]).is_empty());
    assert_eq!(socket_inode("socket:[42]"), Some(42));
    assert_eq!(socket_inode("pipe:[42]"), None);
    assert_eq!(socket_inode("socket:[x]"), None);
}

/// A netlink message of this type and sequence number around `body`.
fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(HDR_LEN + body.len()).unwrap();
    let mut m = [len.to_ne_bytes(), [0; 4], seq.to_ne_bytes(), [0; 4]].concat();
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(m.len().next_multiple_of(4), 0);
    m
}

fn diag_msg(sock: &TcpSocket) -> Vec<u8> {
    let mut body = vec![sock.family, sock.state, 0, 0];
    body.extend_from_slice(&encode_id(sock).unwrap());
    body.extend_from_slice(&[0u8; 12]);
    body.extend_from_slice(&sock.uid.to_ne_bytes());
    body.extend_from_slice(&u32::try_from(sock.inode).unwrap().to_ne_bytes());
    body
}

fn sample() -> TcpSocket {
    TcpSocket {
        family: libc::AF_INET6 as u8,
        src: "[::ffff:10.0.0.1]:40000".parse().unwrap(),
        dst: "[::ffff:93.184.216.34]:443".parse().unwrap(),
        state: TCP_ESTABLISHED,
        inode: 1234,
        cookie: [7, 9],
        uid: 1000,
        interface: 3,
    }
}

#[test]
fn sockdiag_parses_a_dump_datagram() {
    let sock = sample();
    assert_eq!(sock.peer(), "93.184.216.34:443".parse().unwrap());
    let datagram = [
        message(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(&sock)),
        message(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(&sock)),
        message(NLMSG_DONE, 5, &0i32.to_ne_bytes()),
    ]
    .concat();
    let replies = parse_datagram(&datagram, 5).unwrap();
    assert_eq!(replies, vec![Reply::Socket(sock), Reply::Other, Reply::Done]);
    let refused = message(NLMSG_ERROR, 5, &(-libc::EPERM).to_ne_bytes());
    assert_eq!(parse_datagram(&refused, 5).unwrap(), vec![Reply::Error(libc::EPERM)]);
    let ack = message(NLMSG_ERROR, 5, &[0u8; 20]);
    assert_eq!(parse_datagram(&ack, 5).unwrap(), vec![Reply::Done]);
}

#[test]
fn sockdiag_truncated_or_malformed_messages_are_errors() {
    let good = [message(SOCK_DIAG_BY_FAMILY, 1, &diag_msg(&sample())), message(NLMSG_DONE, 1, &[0; 4])].concat();
    // Every cut of a valid datagram fails without a panic, but those between messages.
    for cut in 0..good.len() {
        let result = parse_datagram(&good[..cut], 1);
        assert_eq!(result.is_ok(), cut == 0 || cut == HDR_LEN + MSG_LEN, "cut at {cut}: {result:?}");
    }
    let mut short = message(SOCK_DIAG_BY_FAMILY, 1, &[0u8; 30]);
    assert!(matches!(parse_datagram(&short, 1), Err(SockDiagError::Malformed(_))));
    short[0..4].copy_from_slice(&8u32.to_ne_bytes()); // shorter than a header
    assert!(parse_datagram(&short, 1).is_err());
    short[0..4].copy_from_slice(&u32::MAX.to_ne_bytes()); // longer than the datagram
    assert!(parse_datagram(&short, 1).is_err());
    let mut other_family = diag_msg(&sample());
    other_family[0] = libc::AF_UNIX as u8;
    assert!(parse_datagram(&message(SOCK_DIAG_BY_FAMILY, 1, &other_family), 1).is_err());
    assert!(parse_datagram(&message(NLMSG_ERROR, 1, &[0u8; 2]), 1).is_err());
    assert_eq!(parse_datagram(&[], 1).unwrap(), vec![]);
}
