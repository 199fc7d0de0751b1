//! The helper's benchmark workloads: loops of one operation, timed by the caller.

use std::{
    fs, io,
    net::{SocketAddr, TcpStream, UdpSocket},
};

use super::net::local_any;

/// `n` TCP connects, each closed with RST (SO_LINGER 0) so that no TIME_WAIT state eats the
/// ephemeral ports.
pub(super) fn bench_tcp(to: SocketAddr, n: u64) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    for _ in 0..n {
        let s = TcpStream::connect(to)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger).map_err(io::Error::from)?;
    }
    Ok(())
}

/// `n` TCP connects, each to another of the 65,535 addresses after `base` (an IPv4 address
/// and a port where nothing listens): every connect is to a destination not seen for the last
/// 65,534, and the loopback refuses it at once. A connect the fence refuses fails the run.
pub(super) fn bench_tcp_spread(base: SocketAddr, n: u64) -> io::Result<()> {
    let SocketAddr::V4(base) = base else { return Err(io::Error::other("an IPv4 base address")) };
    let first = u32::from(*base.ip());
    for i in 0..n {
        // The 65,535 addresses after `base` in a scattered order (48,271 is prime to 65,535:
        // each once per 65,535 connects), as destinations come, not in address order, whose
        // neighbours share the CPU cache lines of the kernel's lookups.
        let ip = std::net::Ipv4Addr::from(first + 1 + ((i * 48_271) % 65_535) as u32);
        match TcpStream::connect((ip, base.port())) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(io::Error::other(format!("connect to {ip}: {e}"))),
            Ok(_) => return Err(io::Error::other(format!("{ip}:{} accepted a connection", base.port()))),
        }
    }
    Ok(())
}

/// `n` opens and closes of one file.
pub(super) fn bench_open(path: &str, n: u64) -> io::Result<()> {
    for _ in 0..n {
        drop(fs::File::open(path)?);
    }
    Ok(())
}

/// `n` fork+exec+wait of one program (no arguments).
pub(super) fn bench_exec(program: &str, n: u64) -> io::Result<()> {
    for _ in 0..n {
        let status = std::process::Command::new(program).status()?;
        if !status.success() {
            return Err(io::Error::other(format!("{program} exited with {status}")));
        }
    }
    Ok(())
}

/// `n` unconnected UDP sends from one socket.
pub(super) fn bench_udp(to: SocketAddr, n: u64) -> io::Result<()> {
    let s = UdpSocket::bind(local_any(&to))?;
    for _ in 0..n {
        s.send_to(b"fence-bench", to)?;
    }
    Ok(())
}
