//! Helper actions that watch how the kernel treats connections over time (`tcp-hold`,
//! `connect-until-denied`): for grants, whose end must close what was open and refuse what
//! comes next.

use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The action's report, or `None` when `action` is not one of these.
pub fn perform(action: &str, args: &[&str]) -> Option<io::Result<Value>> {
    match action {
        "tcp-hold" => Some(tcp_hold(args)),
        "connect-until-denied" => Some(connect_until_denied(args)),
        _ => None,
    }
}

fn addr(a: Option<&&str>) -> io::Result<SocketAddr> {
    a.ok_or_else(|| io::Error::other("missing address"))?
        .parse()
        .map_err(|e| io::Error::other(format!("bad address: {e}")))
}

/// `tcp-hold ADDR SECS`: connects, prints "connected", then reads until the connection ends or
/// SECS pass: how it ended ("eof", "error" with the errno, or "timeout") and after how long.
fn tcp_hold(args: &[&str]) -> io::Result<Value> {
    let stream = TcpStream::connect_timeout(&addr(args.first())?, Duration::from_secs(5))?;
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    println!("connected");
    stream.set_read_timeout(Some(Duration::from_secs(secs)))?;
    let started = Instant::now();
    let mut out = match io::Read::read(&mut &stream, &mut [0u8; 64]) {
        Ok(_) => json!({"ended": "eof"}),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            json!({"ended": "timeout"})
        }
        Err(e) => json!({"ended": "error", "ended_errno": e.raw_os_error()}),
    };
    out["held_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(out)
}

/// `connect-until-denied ADDR SECS [udp]`: connects again and again (no pause) until one is
/// refused with EPERM or SECS pass: the boot-clock time of that first refusal (`bench grants`:
/// a grant's end to the first denied connect). With `udp`, UDP connects: the kernel's verdict
/// without a handshake that could stall the loop.
fn connect_until_denied(args: &[&str]) -> io::Result<Value> {
    let to = addr(args.first())?;
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let udp = args.get(2) == Some(&"udp");
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        let attempt = if udp {
            UdpSocket::bind(("0.0.0.0", 0)).and_then(|s| s.connect(to))
        } else {
            TcpStream::connect(to).map(drop)
        };
        if let Err(e) = attempt
            && e.raw_os_error() == Some(libc::EPERM)
        {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_err(io::Error::from)?;
            let ns =
                u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0);
            return Ok(json!({"denied_boot_ns": ns}));
        }
    }
    Err(io::Error::other("never denied"))
}
