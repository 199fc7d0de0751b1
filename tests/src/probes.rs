//! Helper actions that watch how the kernel treats connections over time (`tcp-hold`,
//! `connect-until-denied`): for grants, whose end must close what was open and refuse what
//! comes next; and a caller of the agent's socket that is gone by the time it is asked
//! (`request-after-exit`).

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
        "request-after-exit" => Some(request_after_exit(args)),
        "secret-rtt" => Some(secret_rtt(args)),
        "euid-connect" => Some(euid_connect(args)),
        _ => None,
    }
}

/// `euid-connect UID ADDR`: a TCP connect with effective uid UID (real and saved uids kept),
/// as a set-user-id program would make it.
fn euid_connect(args: &[&str]) -> io::Result<Value> {
    use nix::unistd::{Uid, getresuid, setresuid};
    let uid: u32 = args.first().and_then(|u| u.parse().ok()).ok_or_else(|| io::Error::other("missing uid"))?;
    let ids = getresuid()?;
    setresuid(ids.real, Uid::from_raw(uid), ids.saved)?;
    TcpStream::connect_timeout(&addr(args.get(1))?, Duration::from_secs(5))?;
    Ok(json!({}))
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

/// `request-after-exit SOCKET LINE`: a child connects to the agent's socket (the socket's peer
/// credentials are the child's) and exits, leaving the connection to a grandchild; once the
/// child is reaped (its pid free for reuse), the grandchild sends LINE and reports the answer.
/// The agent must not take the request as the dead child's, nor as the grandchild's.
fn request_after_exit(args: &[&str]) -> io::Result<Value> {
    use nix::unistd::{ForkResult, fork};
    use std::io::{BufRead as _, Write as _};
    let (Some(socket), Some(line)) = (args.first(), args.get(1)) else {
        return Err(io::Error::other("request-after-exit SOCKET LINE"));
    };
    let (go_read, go_write) = nix::unistd::pipe().map_err(io::Error::from)?;
    let (answer_read, answer_write) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: this helper is single-threaded; the children only use async-signal-safe calls
    // and plain I/O before exiting.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let code = (|| -> io::Result<()> {
                let stream = std::os::unix::net::UnixStream::connect(socket)?;
                // SAFETY: as above.
                if let ForkResult::Child = unsafe { fork() }.map_err(io::Error::from)? {
                    let mut go = [0u8; 1];
                    let _ = nix::unistd::read(&go_read, &mut go);
                    (&stream).write_all(format!("{line}\n").as_bytes())?;
                    let mut answer = String::new();
                    io::BufReader::new(&stream).read_line(&mut answer)?;
                    let mut out = std::fs::File::from(answer_write);
                    out.write_all(answer.as_bytes())?;
                }
                Ok(())
            })();
            // SAFETY: exiting a forked child without running the parent's destructors.
            unsafe { libc::_exit(i32::from(code.is_err())) }
        }
        ForkResult::Parent { child } => {
            drop(answer_write);
            drop(go_read);
            nix::sys::wait::waitpid(child, None).map_err(io::Error::from)?;
            nix::unistd::write(&go_write, b"g").map_err(io::Error::from)?;
            let mut answer = String::new();
            io::Read::read_to_string(&mut std::fs::File::from(answer_read), &mut answer)?;
            Ok(json!({"exited": child.as_raw(), "answer": answer.trim()}))
        }
    }
}

/// `secret-rtt SOCKET NAME COUNT`: COUNT `secret-get` requests on the workload socket, one
/// after the other, each on a new connection; the milliseconds of each round trip (the value
/// itself is dropped unread beyond the answer's `ok`).
fn secret_rtt(args: &[&str]) -> io::Result<Value> {
    use std::io::{BufRead as _, Write as _};
    let (Some(socket), Some(name)) = (args.first(), args.get(1)) else {
        return Err(io::Error::other("secret-rtt SOCKET NAME COUNT"));
    };
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
    let line = format!("{}\n", json!({"op": "secret-get", "name": name}));
    let mut ms = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = std::os::unix::net::UnixStream::connect(socket)?;
        (&stream).write_all(line.as_bytes())?;
        let mut answer = String::new();
        io::BufReader::new(&stream).read_line(&mut answer)?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if !answer.starts_with("{\"ok\":true") {
            let why: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
            return Err(io::Error::other(format!("refused: {}", why["error"])));
        }
    }
    Ok(json!({"ms": ms}))
}
