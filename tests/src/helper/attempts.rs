//! The helper's bypass attempts: ways out of a fence that the kernel must refuse (a child
//! cloned into another cgroup, a program run from memory, a file through a bind mount, a
//! signal or a terminal's input sent to another process, source-routed packets).

use std::{
    fs, io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
};

use serde_json::{Value, json};

use super::net::local_any;

/// clone3(CLONE_INTO_CGROUP) a child straight into the cgroup `dir`; the child exits at once.
pub(super) fn clone_into_cgroup(dir: &str) -> io::Result<Value> {
    use std::os::fd::AsRawFd as _;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let cgroup = fs::File::open(dir)?;
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no stack runs the child on a copy of our stack, like fork; the child
    // only calls _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: in the child of clone3, which shares nothing it could corrupt: _exit ends it
        // at once without running destructors or atexit handlers.
        0 => unsafe { libc::_exit(0) },
        child => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
            Ok(json!({"child": child}))
        }
    }
}

/// Copies `src` into a memfd and executes it from there (fileless execution).
pub(super) fn memfd_exec(src: &str, args: &[&str]) -> io::Result<Value> {
    use std::ffi::CString;
    let fd =
        nix::sys::memfd::memfd_create(c"fence-test", nix::sys::memfd::MFdFlags::empty()).map_err(io::Error::from)?;
    let mut file = fs::File::from(fd);
    io::copy(&mut fs::File::open(src)?, &mut file)?;
    let argv: Vec<CString> = std::iter::once("memfd-program")
        .chain(args.iter().copied())
        .map(|a| CString::new(a).expect("argument"))
        .collect();
    let env: Vec<CString> = Vec::new();
    let err = nix::unistd::fexecve(&file, &argv, &env).map_err(io::Error::from).unwrap_err();
    Err(err)
}

/// In a private mount namespace (gone when this process exits), bind-mounts `src` onto
/// `target` and opens `target`.
pub(super) fn open_through_bind_mount(src: &str, target: &str) -> io::Result<Value> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(io::Error::from)?;
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)?;
    let mut f = fs::File::open(target)?;
    let mut b = [0u8; 1];
    io::Read::read(&mut f, &mut b).map(|_| json!({}))
}

/// F_SETOWN (or F_SETOWN_EX with F_OWNER_PID) of a pipe's read end to `pid`: where its SIGIO
/// would go.
pub(super) fn setown(ex: bool, pid: i32) -> io::Result<Value> {
    let (read, _write) = nix::unistd::pipe().map_err(io::Error::from)?;
    let r = if ex {
        #[repr(C)]
        struct OwnerEx {
            kind: i32,
            pid: i32,
        }
        const F_OWNER_PID: i32 = 1;
        const F_SETOWN_EX: i32 = 15;
        let owner = OwnerEx { kind: F_OWNER_PID, pid };
        // SAFETY: F_SETOWN_EX reads a struct f_owner_ex from the pointer.
        unsafe { libc::fcntl(read.as_raw_fd(), F_SETOWN_EX, &owner as *const OwnerEx) }
    } else {
        // SAFETY: plain fcntl on our own descriptor.
        unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETOWN, pid) }
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(json!({})) }
}

/// `sigio-from CGROUP [OWNER] [--setsig]`: asks (unfenced) for SIGIO on a pipe's read end, to
/// itself or to OWNER, then forks a child that enters CGROUP and writes into the pipe, which
/// raises the signal in the child's context; with `--setsig` the child first makes the file
/// send SIGUSR1 instead (F_SETSIG). Reports whether this process got its SIGIO (or SIGUSR1)
/// within two seconds (blocked, so that it waits pending: the kernel judges it when sent), and
/// the child's pid and exit code (0: wrote; 1: could not enter CGROUP; 2: could not write; 3:
/// F_SETSIG failed).
pub(super) fn sigio_from(cgroup: &str, owner: Option<i32>, setsig: bool) -> io::Result<Value> {
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    let me = std::process::id() as i32;
    let procs = std::ffi::CString::new(format!("{cgroup}/cgroup.procs")).map_err(io::Error::other)?;
    // SAFETY: plain fcntls on our own descriptor, and the signal mask of this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if libc::fcntl(read.as_raw_fd(), libc::F_SETOWN, owner.unwrap_or(me)) < 0
            || libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the child only makes system calls on memory prepared before the fork.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: async-signal-safe calls only, then _exit.
        unsafe {
            let mut pid = [0u8; 12];
            let mut n = 0;
            let mut v = libc::getpid() as u32;
            let mut digits = [0u8; 12];
            loop {
                digits[n] = b'0' + (v % 10) as u8;
                n += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            for i in 0..n {
                pid[i] = digits[n - 1 - i];
            }
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, pid.as_ptr().cast(), n) != n as isize {
                libc::_exit(1);
            }
            const F_SETSIG: libc::c_int = 10;
            if setsig && libc::fcntl(read.as_raw_fd(), F_SETSIG, libc::SIGUSR1) < 0 {
                libc::_exit(3);
            }
            let byte = *b"x";
            if libc::write(write.as_raw_fd(), byte.as_ptr().cast(), 1) != 1 {
                libc::_exit(2);
            }
            libc::_exit(0);
        }
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None).map_err(io::Error::from)?;
    let code = match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        other => return Err(io::Error::other(format!("the writer ended as {other:?}"))),
    };
    let got = owner.is_none() && {
        // SAFETY: waits for a blocked signal of this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let wait = libc::timespec { tv_sec: 2, tv_nsec: 0 };
            libc::sigtimedwait(&set, std::ptr::null_mut(), &wait) > 0
        }
    };
    // Closing the pipe raises SIGIO too (here, unfenced): the receiver is cleared first.
    // SAFETY: a plain fcntl on our own descriptor.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETOWN, 0) };
    Ok(json!({ "sigio": got, "child": child, "child_exit": code }))
}

/// `async-tty [--ioctl]`: turns on O_ASYNC (F_SETFL, or FIOASYNC) on a new terminal, which
/// makes its foreground process group the receiver of its SIGIO.
pub(super) fn async_tty(ioctl: bool) -> io::Result<Value> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let master =
        nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY).map_err(io::Error::from)?;
    nix::pty::grantpt(&master).map_err(io::Error::from)?;
    nix::pty::unlockpt(&master).map_err(io::Error::from)?;
    let name = nix::pty::ptsname_r(&master).map_err(io::Error::from)?;
    let slave = fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&name)?;
    let fd = slave.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: plain fcntl/ioctl on our own descriptor; FIOASYNC reads an int.
    let r = unsafe {
        if ioctl {
            libc::ioctl(fd, libc::FIOASYNC, &on as *const libc::c_int)
        } else {
            libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_ASYNC)
        }
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(json!({})) }
}

/// `tiocsti [--drop-cap] [TTY]`: pushes a character into the terminal TTY (a new pty when
/// none is given; fd 0 with `-`), as if typed. `--drop-cap` first drops CAP_SYS_ADMIN, with
/// which the kernel allows TIOCSTI on any terminal.
pub(super) fn tiocsti(args: &[&str]) -> io::Result<Value> {
    let drop_cap = args.contains(&"--drop-cap");
    let compat = args.contains(&"--compat");
    let target = args.iter().copied().find(|a| !a.starts_with("--"));
    let _pty;
    let fd = match target {
        Some("-") => 0,
        Some(path) => {
            let f = fs::OpenOptions::new().read(true).write(true).open(path)?;
            let fd = f.as_raw_fd();
            _pty = (f, None);
            fd
        }
        None => {
            let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
                .map_err(io::Error::from)?;
            nix::pty::grantpt(&master).map_err(io::Error::from)?;
            nix::pty::unlockpt(&master).map_err(io::Error::from)?;
            let name = nix::pty::ptsname_r(&master).map_err(io::Error::from)?;
            let slave = fs::OpenOptions::new().read(true).write(true).open(&name)?;
            let fd = slave.as_raw_fd();
            _pty = (slave, Some(master));
            fd
        }
    };
    if drop_cap {
        // CAP_SYS_ADMIN is capability 21.
        drop_capability(21)?;
    }
    if compat {
        return ioctl_32bit(fd, libc::TIOCSTI as u32, b'#');
    }
    let c: u8 = b'#';
    // SAFETY: TIOCSTI reads one byte from the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSTI, &c as *const u8) } == 0 {
        Ok(json!({}))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// ioctl(`fd`, `cmd`, &`byte`) through the 32-bit system call (`int 0x80`, i386's ioctl is 54),
/// which a 64-bit process may make where the kernel has 32-bit emulation: the kernel's compat
/// path. The byte sits below 4 GiB (MAP_32BIT), where a 32-bit pointer reaches it.
#[cfg(target_arch = "x86_64")]
fn ioctl_32bit(fd: i32, cmd: u32, byte: u8) -> io::Result<Value> {
    // SAFETY: an anonymous private mapping of one page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the page is ours and writable.
    unsafe { *page.cast::<u8>() = byte };
    let ret: i32;
    // SAFETY: the i386 system call ABI: eax the number, ebx, ecx, edx the arguments; rbx is
    // LLVM's, so it is swapped in and out around the call.
    unsafe {
        std::arch::asm!(
            "xchg {fd:r}, rbx",
            "int 0x80",
            "xchg {fd:r}, rbx",
            fd = inout(reg) u64::from(fd as u32) => _,
            inlateout("eax") 54i32 => ret,
            in("ecx") cmd,
            in("edx") page as u64 as u32,
        );
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(page, 4096) };
    if ret < 0 { Err(io::Error::from_raw_os_error(-ret)) } else { Ok(json!({"compat": true})) }
}

/// Drops `cap` from this process's effective and permitted sets (capset(2)).
fn drop_capability(cap: u32) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    // SAFETY: capset reads the header and two Data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A UDP datagram to `to` with a source route: an IPv6 segment routing header (type 4) set
/// with setsockopt(IPV6_RTHDR) or given as sendmsg ancillary data, or an IPv4 loose source
/// route (IP_OPTIONS LSRR). The route's hops are `to` itself: what matters is that a hook
/// judging only the destination would let it go.
pub(super) fn source_routed_send(action: &str, to: SocketAddr) -> io::Result<Value> {
    let s = UdpSocket::bind(local_any(&to))?;
    let fd = s.as_raw_fd();
    let setsockopt = |level: i32, name: i32, value: &[u8]| -> io::Result<()> {
        // SAFETY: the option value is a valid buffer of the given length.
        let r = unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    };
    match (action, to) {
        ("udp-lsrr", SocketAddr::V4(v4)) => {
            // NOP, then LSRR (type 131, length 7, pointer 4, one hop), padding to 4 bytes.
            let mut opt = vec![1u8, 131, 7, 4];
            opt.extend_from_slice(&v4.ip().octets());
            setsockopt(libc::IPPROTO_IP, libc::IP_OPTIONS, &opt)?;
            done_send(s.send_to(b"fence", to))
        }
        ("udp-rthdr", SocketAddr::V6(v6)) => {
            setsockopt(libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &srh(v6.ip()))?;
            done_send(s.send_to(b"fence", to))
        }
        ("udp-rthdr-cmsg", SocketAddr::V6(v6)) => {
            // As ancillary data the kernel takes only the type 2 (Mobile IPv6) header.
            let header = type2_routing_header(v6.ip());
            let dest = nix::sys::socket::SockaddrStorage::from(to);
            let iov = [io::IoSlice::new(b"fence")];
            // SAFETY: CMSG_SPACE of a small length.
            let space = unsafe { libc::CMSG_SPACE(header.len() as u32) } as usize;
            let mut control = vec![0u8; space];
            // SAFETY: the msghdr points at buffers that outlive the sendmsg call; the cmsg
            // header is written inside `control`, which CMSG_SPACE sized.
            let r = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = nix::sys::socket::SockaddrLike::as_ptr(&dest) as *mut _;
                msg.msg_namelen = nix::sys::socket::SockaddrLike::len(&dest);
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = space;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_RTHDR;
                (*cmsg).cmsg_len = libc::CMSG_LEN(header.len() as u32) as usize;
                std::ptr::copy_nonoverlapping(header.as_ptr(), libc::CMSG_DATA(cmsg), header.len());
                libc::sendmsg(fd, &msg, 0)
            };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(json!({})) }
        }
        _ => Err(io::Error::other(format!("{action} needs an address of the other family"))),
    }
}

fn done_send(r: io::Result<usize>) -> io::Result<Value> {
    r.map(|_| json!({}))
}

/// A type 2 routing header (RFC 6275): one address, one segment left.
fn type2_routing_header(hop: &std::net::Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0u8, 2, 2, 1, 0, 0, 0, 0];
    h.extend_from_slice(&hop.octets());
    h
}

/// A segment routing header (RFC 8754) with one segment, `hop`.
fn srh(hop: &std::net::Ipv6Addr) -> Vec<u8> {
    // next header (filled by the kernel), length in 8-octet units after the first 8 (2: one
    // 16-byte segment), type 4, segments left 0, last entry 0, flags 0, tag 0.
    let mut h = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
    h.extend_from_slice(&hop.octets());
    h
}

#[cfg(not(target_arch = "x86_64"))]
fn ioctl_32bit(_fd: i32, _cmd: u32, _byte: u8) -> io::Result<Value> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
