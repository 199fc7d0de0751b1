//! Workloads: `fence-tests helper [--cgroup DIR] ACTION ARGS...` moves itself into the cgroup
//! (as `fence-agent exec` would), performs one action and prints one JSON line:
//! `{"pid":N,"ok":true}` or `{"pid":N,"ok":false,"errno":1,"error":"..."}`.

use std::{
    fs, io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, ExitCode},
    time::Duration,
};

use serde_json::{Value, json};

use crate::env::TestCgroup;

mod attempts;
mod bench;
mod net;

use attempts::{
    async_tty, clone_into_cgroup, memfd_exec, open_through_bind_mount, setown, sigio_from, source_routed_send, tiocsti,
};
use bench::{bench_exec, bench_open, bench_tcp, bench_tcp_spread, bench_udp};
use net::{dns_query, local_any, sendmmsg_two, tcp_fastopen, unix_connect, unix_send};

/// What a helper reported.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub pid: u32,
    pub errno: Option<i32>,
    /// The signal that killed the helper (it then reports nothing).
    pub signal: Option<i32>,
    pub raw: Value,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.errno.is_none() && self.signal.is_none()
    }

    #[track_caller]
    pub fn assert_ok(&self, what: &str) {
        assert!(self.ok(), "{what}: expected success, got {}", self.raw);
    }

    #[track_caller]
    pub fn assert_eperm(&self, what: &str) {
        assert_eq!(self.errno, Some(libc::EPERM), "{what}: expected EPERM, got {}", self.raw);
    }

    #[track_caller]
    pub fn assert_killed(&self, what: &str) {
        assert_eq!(self.signal, Some(libc::SIGKILL), "{what}: expected death by SIGKILL, got {}", self.raw);
    }
}

/// Runs one helper action, in `cgroup` if given.
pub fn run(cgroup: Option<&TestCgroup>, action: &[&str]) -> Outcome {
    try_run(cgroup.map(|cg| cg.dir.as_path()), action).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs one helper action, in the cgroup `cgroup` if given (else in this process's); an error
/// if it cannot start or reports nothing readable.
fn try_run(cgroup: Option<&std::path::Path>, action: &[&str]) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("helper");
    if let Some(dir) = cgroup {
        cmd.arg("--cgroup").arg(dir);
    }
    let child = cmd
        .args(action)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running the helper {action:?}: {e}"))?;
    let pid = child.id();
    let out = child.wait_with_output().map_err(|e| format!("waiting for the helper {action:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
    let Some(line) = stdout.lines().last() else {
        if signal.is_some() {
            return Ok(Outcome { pid, errno: None, signal, raw: json!({"pid": pid, "signal": signal}) });
        }
        return Err(format!(
            "helper {action:?} printed nothing ({}); stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    let raw: Value = serde_json::from_str(line).map_err(|e| format!("helper output {line:?}: {e}"))?;
    Ok(Outcome {
        pid: raw["pid"].as_u64().map_or(pid, |p| p as u32),
        errno: raw["errno"].as_i64().map(|e| e as i32),
        signal,
        raw,
    })
}

/// One attempt of a `chaos-loop` operation (`connect:ADDR`, `exec:PATH`, `open:PATH`) in a
/// child process of its own: its progress line `OP PID OUTCOME DETAIL`, where OUTCOME is `d`
/// (denied: EPERM, or killed by SIGKILL, the exec fallback's answer), `s` (succeeded) or `o`
/// (anything else, said in DETAIL).
fn chaos_attempt(op: &str) -> (char, String) {
    let (kind, target) = op.split_once(':').unwrap_or((op, ""));
    let action: Vec<&str> = match kind {
        "connect" => vec!["tcp-connect", target],
        "exec" => vec!["exec", target, "helper", "noop"],
        "open" => vec!["open", target],
        other => return ('o', format!("{other} 0 o unknown-operation")),
    };
    match try_run(None, &action) {
        Ok(o) if o.ok() => ('s', format!("{kind} {} s ok", o.pid)),
        Ok(o) if o.errno == Some(libc::EPERM) => ('d', format!("{kind} {} d errno=1", o.pid)),
        // Only an exec is answered with SIGKILL (the fallback's); for the others it would be the
        // helper itself killed on its way in, which is no denial of the operation.
        Ok(o) if kind == "exec" && o.signal == Some(libc::SIGKILL) => ('d', format!("{kind} {} d signal=9", o.pid)),
        Ok(o) => ('o', format!("{kind} {} o {}", o.pid, o.raw.to_string().replace(' ', "_"))),
        Err(e) => ('o', format!("{kind} 0 o {}", e.replace([' ', '\n'], "_"))),
    }
}

/// Entry point of the helper process.
pub fn main(args: &[String]) -> ExitCode {
    let mut args = args.iter().map(String::as_str);
    let mut action = args.next();
    if action == Some("--cgroup") {
        let dir = args.next().expect("--cgroup DIR");
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        if let Err(e) = fs::write(&procs, std::process::id().to_string()) {
            eprintln!("joining {}: {e}", procs.display());
            return ExitCode::from(3);
        }
        action = args.next();
    }
    // Steps separated by `then` run in order; the first failure is reported with its index.
    let Some(first) = action else {
        println!("{}", json!({"ok": false, "error": "no action"}));
        return ExitCode::SUCCESS;
    };
    let mut words: Vec<&str> = vec![first];
    words.extend(args);
    let pid = std::process::id();
    let mut line = json!({});
    for (step, chunk) in words.split(|w| *w == "then").enumerate() {
        let Some((action, rest)) = chunk.split_first() else { continue };
        match perform(action, rest) {
            Ok(extra) => {
                if let Value::Object(m) = extra {
                    for (k, v) in m {
                        line[k] = v;
                    }
                }
            }
            Err(e) => {
                line =
                    json!({"pid": pid, "ok": false, "errno": e.raw_os_error(), "error": e.to_string(), "step": step});
                println!("{line}");
                return ExitCode::SUCCESS;
            }
        }
    }
    line["pid"] = json!(pid);
    line["ok"] = json!(true);
    println!("{line}");
    ExitCode::SUCCESS
}

fn addr(a: Option<&&str>) -> io::Result<SocketAddr> {
    a.ok_or_else(|| io::Error::other("missing address"))?
        .parse()
        .map_err(|e| io::Error::other(format!("bad address: {e}")))
}

/// Performs `action`; returns extra fields for the report (an empty object for most).
fn perform(action: &str, args: &[&str]) -> io::Result<Value> {
    if let Some(r) = crate::probes::perform(action, args) {
        return r;
    }
    let done = |r: io::Result<()>| r.map(|()| json!({}));
    match action {
        "tcp-connect" => done(TcpStream::connect_timeout(&addr(args.first())?, Duration::from_secs(5)).map(drop)),
        // dns-query SERVER NAME TYPE [tcp]: one DNS question; the answer's rcode, addresses and
        // the address the answer came from (as recvfrom/getpeername say).
        "dns-query" => {
            let server = addr(args.first())?;
            let name = args.get(1).ok_or_else(|| io::Error::other("missing name"))?;
            let qtype = args.get(2).copied().unwrap_or("A");
            dns_query(server, name, qtype, args.get(3) == Some(&"tcp"))
        }
        // resolve NAME: the C library's getaddrinfo (std's ToSocketAddrs), as most programs do.
        "resolve" => {
            use std::net::ToSocketAddrs as _;
            let name = args.first().ok_or_else(|| io::Error::other("missing name"))?;
            let addrs: Vec<String> = (*name, 0u16).to_socket_addrs()?.map(|a| a.ip().to_string()).collect();
            Ok(json!({"addrs": addrs}))
        }
        "udp-connect" => {
            let to = addr(args.first())?;
            let s = UdpSocket::bind(local_any(&to))?;
            s.connect(to)?;
            done(s.send(b"fence").map(drop))
        }
        "udp-sendto" => {
            let to = addr(args.first())?;
            done(UdpSocket::bind(local_any(&to))?.send_to(b"fence", to).map(drop))
        }
        "udp-sendmsg" => {
            let to = addr(args.first())?;
            let s = UdpSocket::bind(local_any(&to))?;
            let dest = nix::sys::socket::SockaddrStorage::from(to);
            let iov = [io::IoSlice::new(b"fence")];
            done(
                nix::sys::socket::sendmsg(s.as_raw_fd(), &iov, &[], nix::sys::socket::MsgFlags::empty(), Some(&dest))
                    .map(drop)
                    .map_err(io::Error::from),
            )
        }
        "udp-sendmmsg" => {
            let to = addr(args.first())?;
            let s = UdpSocket::bind(local_any(&to))?;
            done(sendmmsg_two(&s, to))
        }
        "tcp-fastopen" => {
            let to = addr(args.first())?;
            done(tcp_fastopen(to))
        }
        "socket" => {
            let family = match args.first().copied() {
                Some("inet") => libc::AF_INET,
                Some("inet6") => libc::AF_INET6,
                Some("vsock" | "xdp" | "packet") => 0,
                other => return Err(io::Error::other(format!("family {other:?}"))),
            };
            let family = match args.first().copied() {
                Some("vsock") => libc::AF_VSOCK,
                Some("xdp") => libc::AF_XDP,
                Some("packet") => libc::AF_PACKET,
                _ => family,
            };
            let (ty, proto) = match args.get(1).copied() {
                Some("raw") => (libc::SOCK_RAW, libc::IPPROTO_ICMP),
                Some("icmp") => {
                    (libc::SOCK_DGRAM, if family == libc::AF_INET { libc::IPPROTO_ICMP } else { libc::IPPROTO_ICMPV6 })
                }
                Some("sctp") => (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
                Some("mptcp") => (libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
                Some("udplite") => (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
                Some("tcp") => (libc::SOCK_STREAM, 0),
                Some("udp") => (libc::SOCK_DGRAM, 0),
                Some("stream") => (libc::SOCK_STREAM, 0),
                Some("dgram") => (libc::SOCK_DGRAM, 0),
                Some("raw0") => (libc::SOCK_RAW, 0),
                other => return Err(io::Error::other(format!("socket kind {other:?}"))),
            };
            // SAFETY: plain syscall; the fd is owned and closed at once.
            let fd = unsafe { libc::socket(family, ty, proto) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2).
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(json!({}))
        }
        "bench-tcp" | "bench-tcp-spread" | "bench-udp" | "bench-open" | "bench-exec" => {
            let target = args.first().copied().ok_or_else(|| io::Error::other("target"))?;
            let n: u64 = args.get(1).and_then(|n| n.parse().ok()).ok_or_else(|| io::Error::other("count"))?;
            let started = std::time::Instant::now();
            match action {
                "bench-tcp" => bench_tcp(addr(Some(&target))?, n)?,
                "bench-tcp-spread" => bench_tcp_spread(addr(Some(&target))?, n)?,
                "bench-udp" => bench_udp(addr(Some(&target))?, n)?,
                "bench-open" => bench_open(target, n)?,
                _ => bench_exec(target, n)?,
            }
            Ok(json!({"ns": started.elapsed().as_nanos() as u64, "count": n}))
        }
        // bench-dns SERVER NAME COUNT: COUNT questions one after the other over UDP; the
        // latency of each, as percentiles.
        "bench-dns" => {
            let server = addr(args.first())?;
            let name = args.get(1).ok_or_else(|| io::Error::other("missing name"))?;
            let n: usize = args.get(2).and_then(|n| n.parse().ok()).ok_or_else(|| io::Error::other("count"))?;
            let started = std::time::Instant::now();
            let mut each: Vec<u64> = Vec::with_capacity(n);
            for _ in 0..n {
                let t = std::time::Instant::now();
                let v = dns_query(server, name, "A", false)?;
                if v["rcode"] != 0 {
                    return Err(io::Error::other(format!("answered {v}")));
                }
                each.push(t.elapsed().as_nanos() as u64);
            }
            each.sort_unstable();
            let pct =
                |p: usize| each.get((each.len() * p / 100).min(each.len().saturating_sub(1))).copied().unwrap_or(0);
            Ok(json!({"ns": started.elapsed().as_nanos() as u64, "count": n, "p50_ns": pct(50), "p99_ns": pct(99)}))
        }
        "noop" => Ok(json!({})),
        "connect-paced" => {
            // Denied connects at RATE per second for SECS seconds (a storm of known rate):
            // paced per millisecond; reports what it achieved.
            let to = addr(args.first())?;
            let rate: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            let started = std::time::Instant::now();
            let total = (rate as f64 * secs) as u64;
            let (mut attempts, mut denied) = (0u64, 0u64);
            while attempts < total {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                if attempts >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for _ in 0..(due - attempts).min(total - attempts) {
                    attempts += 1;
                    if let Err(e) = TcpStream::connect(to)
                        && e.raw_os_error() == Some(libc::EPERM)
                    {
                        denied += 1;
                    }
                }
            }
            let elapsed = started.elapsed().as_secs_f64();
            Ok(json!({"attempts": attempts, "denied": denied, "seconds": elapsed, "rate": attempts as f64 / elapsed}))
        }
        "connect-loop" => {
            // N connects as fast as they go (a denial storm); counts the outcomes.
            let to = addr(args.first())?;
            let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let (mut denied, mut other, mut succeeded) = (0u64, 0u64, 0u64);
            for _ in 0..n {
                match TcpStream::connect(to) {
                    Ok(_) => succeeded += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
                    Err(_) => other += 1,
                }
            }
            Ok(json!({"attempts": n, "denied": denied, "succeeded": succeeded, "other": other}))
        }
        "probe-connect" => {
            // Connects again and again for SECONDS, or until STOPFILE exists; counts what
            // happened. With PROGRESS, appends a line per attempt made to that file (`d`
            // denied, `s` succeeded, `o` other), so that a test can wait for attempts.
            let to = addr(args.first())?;
            let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            let stop = args.get(2).map(std::path::Path::new);
            let mut progress = match args.get(3) {
                Some(p) => Some(fs::OpenOptions::new().create(true).append(true).open(p)?),
                None => None,
            };
            let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
            let (mut attempts, mut denied, mut succeeded, mut other) = (0u64, 0u64, 0u64, 0u64);
            while std::time::Instant::now() < until && !stop.is_some_and(|p| p.exists()) {
                attempts += 1;
                let outcome = match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                    Ok(_) => {
                        succeeded += 1;
                        b"s\n"
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        denied += 1;
                        b"d\n"
                    }
                    Err(_) => {
                        other += 1;
                        b"o\n"
                    }
                };
                if let Some(f) = &mut progress {
                    io::Write::write_all(f, outcome)?;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(json!({"attempts": attempts, "denied": denied, "succeeded": succeeded, "other": other}))
        }
        "chaos-loop" => {
            // Tries each OP in turn (`connect:ADDR`, `exec:PATH`, `open:PATH`), each attempt in
            // a child process of its own (its pid names the attempt in the events), until
            // STOPFILE exists or SECS pass; appends one line per attempt to PROGRESS (see
            // `chaos_attempt`), written once the attempt is over.
            let (Some(stop), Some(progress), Some(secs)) = (args.first(), args.get(1), args.get(2)) else {
                return Err(io::Error::other("chaos-loop STOPFILE PROGRESS SECS OP..."));
            };
            let ops = &args[3..];
            if ops.is_empty() {
                return Err(io::Error::other("chaos-loop: no operation"));
            }
            let secs: f64 = secs.parse().map_err(|e| io::Error::other(format!("SECS: {e}")))?;
            let mut progress = fs::OpenOptions::new().create(true).append(true).open(progress)?;
            let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
            let (mut attempts, mut denied, mut succeeded, mut other) = (0u64, 0u64, 0u64, 0u64);
            'outer: loop {
                for op in ops {
                    if std::time::Instant::now() >= until || std::path::Path::new(stop).exists() {
                        break 'outer;
                    }
                    let (outcome, line) = chaos_attempt(op);
                    attempts += 1;
                    match outcome {
                        'd' => denied += 1,
                        's' => succeeded += 1,
                        _ => other += 1,
                    }
                    io::Write::write_all(&mut progress, format!("{line}\n").as_bytes())?;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(json!({"attempts": attempts, "denied": denied, "succeeded": succeeded, "other": other}))
        }
        "sleep" => {
            let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            std::thread::sleep(Duration::from_secs(secs));
            Ok(json!({}))
        }
        "move-to" => {
            // Writes this process's pid into DIR/cgroup.procs (leaving its cgroup).
            let dir = args.first().ok_or_else(|| io::Error::other("move-to DIR"))?;
            fs::write(std::path::Path::new(dir).join("cgroup.procs"), std::process::id().to_string())
                .map(|()| json!({}))
        }
        "mkdir" => {
            let dir = args.first().ok_or_else(|| io::Error::other("mkdir DIR"))?;
            fs::create_dir(dir).map(|()| json!({}))
        }
        "clone-into-cgroup" => {
            let dir = args.first().ok_or_else(|| io::Error::other("clone-into-cgroup DIR"))?;
            clone_into_cgroup(dir)
        }
        "kill" => {
            let pid: i32 = args.first().and_then(|p| p.parse().ok()).ok_or_else(|| io::Error::other("kill PID SIG"))?;
            let sig: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            // SAFETY: plain syscall.
            if unsafe { libc::kill(pid, sig) } == 0 { Ok(json!({})) } else { Err(io::Error::last_os_error()) }
        }
        "ptrace-attach" => {
            let pid: i32 =
                args.first().and_then(|p| p.parse().ok()).ok_or_else(|| io::Error::other("ptrace-attach PID"))?;
            let pid = nix::unistd::Pid::from_raw(pid);
            nix::sys::ptrace::attach(pid).map_err(io::Error::from)?;
            let _ = nix::sys::wait::waitpid(pid, None);
            nix::sys::ptrace::detach(pid, None).map(|()| json!({})).map_err(io::Error::from)
        }
        "bpf" => {
            // BPF_PROG_GET_NEXT_ID with start_id 0: any program id (harmless, needs bpf(2)).
            let mut attr = [0u32; 4];
            // SAFETY: bpf(2) reads the attribute buffer of the given size.
            let r = unsafe { libc::syscall(libc::SYS_bpf, 11, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
            if r >= 0 { Ok(json!({})) } else { Err(io::Error::last_os_error()) }
        }
        "unshare-cgroupns" => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map(|()| json!({})).map_err(io::Error::from)
        }
        "exec" => {
            // Replaces this process; only a failure comes back here.
            let path = args.first().ok_or_else(|| io::Error::other("exec PATH ARGS..."))?;
            let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(path).args(&args[1..]));
            Err(err)
        }
        "memfd-exec" => {
            let src = args.first().ok_or_else(|| io::Error::other("memfd-exec SRC ARGS..."))?;
            memfd_exec(src, &args[1..])
        }
        "open" => {
            let path = args.first().ok_or_else(|| io::Error::other("open PATH"))?;
            let mut f = fs::File::open(path)?;
            let mut b = [0u8; 1];
            io::Read::read(&mut f, &mut b).map(|_| json!({}))
        }
        "open-bind" => {
            let (src, target) = (args.first(), args.get(1));
            let (Some(src), Some(target)) = (src, target) else { return Err(io::Error::other("open-bind SRC TARGET")) };
            open_through_bind_mount(src, target)
        }
        "unix-connect" => unix_connect(args.first().copied().unwrap_or_default()).map(|()| json!({})),
        "unix-send" => unix_send(args.first().copied().unwrap_or_default()).map(|()| json!({})),
        "link" | "rename" => {
            let (Some(from), Some(to)) = (args.first(), args.get(1)) else { return Err(io::Error::other("FROM TO")) };
            done(if action == "link" { fs::hard_link(from, to) } else { fs::rename(from, to) })
        }
        "unlink" => done(fs::remove_file(args.first().ok_or_else(|| io::Error::other("unlink PATH"))?)),
        "truncate" => {
            let path = args.first().ok_or_else(|| io::Error::other("truncate PATH"))?;
            let c = std::ffi::CString::new(*path).map_err(io::Error::other)?;
            // SAFETY: a valid C string; plain syscall.
            if unsafe { libc::truncate(c.as_ptr(), 0) } == 0 { Ok(json!({})) } else { Err(io::Error::last_os_error()) }
        }
        "open-write" => {
            let path = args.first().ok_or_else(|| io::Error::other("open-write PATH"))?;
            done(fs::OpenOptions::new().write(true).open(path).map(drop))
        }
        "write-file" => {
            // Writes VALUE into FILE (a sysctl, a cgroup file), as `echo VALUE > FILE`.
            let (Some(file), Some(value)) = (args.first(), args.get(1)) else {
                return Err(io::Error::other("write-file FILE VALUE"));
            };
            done(fs::write(file, value))
        }
        "sysctl-rewrite" => {
            // Writes a sysctl's current value back (a write the kernel sees, no change).
            let file = std::path::Path::new("/proc/sys").join(args.first().ok_or_else(|| io::Error::other("NAME"))?);
            let value = fs::read(&file)?;
            done(fs::write(&file, value))
        }
        "setown" | "setown-ex" => {
            let pid: i32 = args.first().and_then(|p| p.parse().ok()).ok_or_else(|| io::Error::other("PID"))?;
            setown(action == "setown-ex", pid)
        }
        "sigio-from" => {
            let setsig = args.contains(&"--setsig");
            let args: Vec<&str> = args.iter().copied().filter(|a| *a != "--setsig").collect();
            let cgroup = args.first().ok_or_else(|| io::Error::other("sigio-from CGROUP [OWNER] [--setsig]"))?;
            let owner = args.get(1).map(|p| p.parse().map_err(io::Error::other)).transpose()?;
            sigio_from(cgroup, owner, setsig)
        }
        "tiocsti" => tiocsti(args),
        "async-tty" => async_tty(args.contains(&"--ioctl")),
        "udp-rthdr" | "udp-rthdr-cmsg" | "udp-lsrr" => {
            let to = addr(args.first())?;
            source_routed_send(action, to)
        }
        "procs-fd-leave" => {
            // Opens OUTSIDE/cgroup.procs for writing while unfenced, enters INSIDE, then writes
            // its pid through the early descriptor (leaving the fence with it).
            let (Some(outside), Some(inside)) = (args.first(), args.get(1)) else {
                return Err(io::Error::other("procs-fd-leave OUTSIDE INSIDE"));
            };
            let mut early =
                fs::OpenOptions::new().write(true).open(std::path::Path::new(outside).join("cgroup.procs"))?;
            fs::write(std::path::Path::new(inside).join("cgroup.procs"), std::process::id().to_string())?;
            done(io::Write::write_all(&mut early, std::process::id().to_string().as_bytes()))
        }
        other => Err(io::Error::other(format!("unknown action {other}"))),
    }
}
