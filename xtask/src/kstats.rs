//! What each fence program costs, from the kernel itself: BPF run-time statistics (total run
//! time and run count per program), read through aya's program info.
//!
//! Only the programs of the agent under test are read (the ids it holds, from
//! /proc/PID/fdinfo): other fence agents may run on the same machine at the same time.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{ProgramInfo, loaded_programs};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run-time statistics on for as long as this lives.
///
/// Preferred: BPF_ENABLE_STATS (kernel >= 5.8), which keeps them on while its fd is open. It
/// leaves `kernel.bpf_stats_enabled` as it was, and the kernel turns the statistics off when
/// the fd closes, however this process ends (an error, a panic, SIGKILL). Older kernels: the
/// sysctl, set to 1 and restored to its previous value on drop.
pub struct StatsEnabled {
    _fd: Option<OwnedFd>,
    restore: Option<String>,
}

impl StatsEnabled {
    pub fn enable() -> Result<StatsEnabled> {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Ok(StatsEnabled { _fd: Some(fd), restore: None }),
            Err(e) => {
                let previous =
                    fs::read_to_string(SYSCTL).with_context(|| format!("BPF_ENABLE_STATS: {e}; {SYSCTL}"))?;
                let guard = StatsEnabled { _fd: None, restore: Some(previous.trim().to_owned()) };
                fs::write(SYSCTL, "1").with_context(|| format!("BPF_ENABLE_STATS: {e}; writing {SYSCTL}"))?;
                Ok(guard)
            }
        }
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Some(previous) = &self.restore
            && let Err(e) = fs::write(SYSCTL, previous)
        {
            eprintln!("xtask: restoring {SYSCTL} to {previous}: {e}");
        }
    }
}

/// Cumulative run time (ns) and run count of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub ns: u64,
    pub count: u64,
}

/// The programs a process holds, by id, with their full names.
#[derive(Debug, Clone)]
pub struct Programs {
    pub names: BTreeMap<u32, String>,
}

/// Calls and ns per call of one program over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub calls: u64,
    pub ns: u64,
}

impl Cost {
    pub fn ns_per_call(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.ns as f64 / self.calls as f64)
    }
}

impl Programs {
    /// The BPF programs `pid` holds (program and link fds), named.
    pub fn of(pid: u32) -> Result<Programs> {
        let ids = held_program_ids(pid)?;
        if ids.is_empty() {
            bail!("process {pid} holds no BPF programs");
        }
        let mut names = BTreeMap::new();
        for info in loaded_programs() {
            let info = info.context("listing BPF programs")?;
            if ids.contains(&info.id()) {
                names.insert(info.id(), full_name(&info));
            }
        }
        Ok(Programs { names })
    }

    /// The counters of these programs now.
    pub fn snapshot(&self) -> Result<BTreeMap<u32, Counter>> {
        let mut out = BTreeMap::new();
        for info in loaded_programs() {
            let info = info.context("listing BPF programs")?;
            if self.names.contains_key(&info.id()) {
                let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                out.insert(info.id(), Counter { ns, count: info.run_count() });
            }
        }
        Ok(out)
    }

    /// Per program name, what ran between two snapshots.
    pub fn delta(&self, before: &BTreeMap<u32, Counter>, after: &BTreeMap<u32, Counter>) -> BTreeMap<String, Cost> {
        let mut out = BTreeMap::new();
        for (id, name) in &self.names {
            let (Some(b), Some(a)) = (before.get(id), after.get(id)) else { continue };
            let c: &mut Cost = out.entry(name.clone()).or_default();
            c.calls += a.count.saturating_sub(b.count);
            c.ns += a.ns.saturating_sub(b.ns);
        }
        out
    }
}

/// Fence programs loaded on the machine that `ours` does not hold (another agent's).
pub fn foreign_fence_programs(ours: &Programs) -> usize {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|i| !ours.names.contains_key(&i.id()) && i.name_as_str().is_some_and(|n| n.starts_with("fence_")))
        .count()
}

/// Program ids in /proc/PID/fdinfo/* (`prog_id:` of program and link fds).
fn held_program_ids(pid: u32) -> Result<BTreeSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| dir.clone())? {
        let Ok(text) = fs::read_to_string(entry?.path()) else { continue };
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("prog_id:").and_then(|v| v.trim().parse().ok()) {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

/// The program's name. The kernel keeps 15 bytes of it (fence_lsm_task_alloc and
/// fence_lsm_task_kill are both `fence_lsm_task_`); the whole name is that of the program's
/// function in its BTF, found as bpftool does: func_info[0] names the BTF type.
fn full_name(info: &ProgramInfo) -> String {
    let short = info.name_as_str().unwrap_or("?").to_owned();
    if short.len() < 15 {
        return short;
    }
    match info.fd().map_err(anyhow::Error::from).and_then(|fd| btf_func_name(fd.as_fd())) {
        Ok(name) if name.starts_with(&short) => name,
        _ => format!("{short}…"),
    }
}

/// bpf(2) with an attribute struct of our own (the kernel accepts a shorter one than its union).
fn bpf<T>(cmd: aya_obj::generated::bpf_cmd, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, exclusively borrowed repr(C) struct of the size passed; the
    // commands used here read it and write only into buffers it points to, which the callers
    // keep alive and sized as they say.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// BPF_OBJ_GET_INFO_BY_FD's attribute.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// BPF_BTF_GET_FD_BY_ID's attribute.
#[repr(C)]
struct FdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn get_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> std::io::Result<()> {
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: std::ptr::from_mut(info) as u64,
    };
    bpf(aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

fn btf_func_name(prog: BorrowedFd<'_>) -> Result<String> {
    use aya_obj::generated::{bpf_btf_info, bpf_cmd, bpf_func_info, bpf_prog_info};
    let mut func = [bpf_func_info { insn_off: 0, type_id: 0 }];
    // SAFETY: bpf_prog_info is plain data (integers); all zeroes is its empty value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.nr_func_info = 1;
    info.func_info_rec_size = size_of::<bpf_func_info>() as u32;
    info.func_info = func.as_mut_ptr() as u64;
    get_info(prog, &mut info).context("program info")?;
    if info.btf_id == 0 || info.nr_func_info == 0 {
        bail!("no BTF func_info");
    }
    let mut attr = FdById { id: info.btf_id, next_id: 0, open_flags: 0 };
    let raw = bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr).context("BTF fd")?;
    // SAFETY: BPF_BTF_GET_FD_BY_ID returned a new fd that nothing else owns.
    let btf_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
    // SAFETY: as above, plain data.
    let mut btf_info: bpf_btf_info = unsafe { std::mem::zeroed() };
    get_info(btf_fd.as_fd(), &mut btf_info).context("BTF size")?;
    let mut data = vec![0u8; btf_info.btf_size as usize];
    // SAFETY: as above, plain data.
    btf_info = unsafe { std::mem::zeroed() };
    btf_info.btf = data.as_mut_ptr() as u64;
    btf_info.btf_size = data.len() as u32;
    get_info(btf_fd.as_fd(), &mut btf_info).context("BTF data")?;
    btf_type_name(&data, func[0].type_id)
}

/// The name of type `id` in raw (native-endian, standalone) BTF.
fn btf_type_name(data: &[u8], id: u32) -> Result<String> {
    let u32_at = |off: usize| -> Result<u32> {
        let b = data.get(off..off + 4).context("BTF truncated")?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != 0xeb9f {
        bail!("not BTF");
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let (mut off, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    let mut current = 1;
    while off < end {
        let (name_off, info) = (u32_at(off)?, u32_at(off + 4)?);
        if current == id {
            let start = hdr_len + str_off + name_off as usize;
            let tail = data.get(start..).context("BTF string out of range")?;
            let len = tail.iter().position(|&b| b == 0).context("BTF string unterminated")?;
            return Ok(String::from_utf8_lossy(&tail[..len]).into_owned());
        }
        let vlen = (info & 0xffff) as usize;
        let extra = match (info >> 24) & 0x1f {
            1 | 14 | 17 => 4,             // int, var, decl_tag
            3 => 12,                      // array
            4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
            6 | 13 => 8 * vlen,           // enum, func_proto
            _ => 0,                       // ptr, fwd, typedef, qualifiers, func, float, type_tag
        };
        off += 12 + extra;
        current += 1;
    }
    bail!("BTF has no type {id}")
}
