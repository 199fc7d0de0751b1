//! The standard `process_*` families (as Prometheus client libraries export them), for the
//! agent itself: CPU time, resident and virtual memory, open and maximum descriptors, start
//! time. Read from /proc at each scrape; a value that cannot be read is left out.

use std::fmt::Write as _;

/// Appends the `process_*` families of this process to `out`.
pub fn append(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let sysconf = |v| nix::unistd::sysconf(v).ok().flatten().and_then(|n| u64::try_from(n).ok());
    let tick = sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096);
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| open_files_limit(&s));
    render(out, &stat, Host { btime, tick, page, fds, max_fds });
}

/// What /proc/self/stat does not say.
struct Host {
    /// Boot time, Unix seconds (/proc/stat `btime`).
    btime: Option<u64>,
    /// Clock ticks per second.
    tick: u64,
    page: u64,
    fds: Option<usize>,
    max_fds: Option<u64>,
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in /proc/self/limits.
fn open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn render(out: &mut String, stat: &str, h: Host) {
    // The fields after the command name (which may hold spaces and parentheses): state is
    // field 3 of proc(5), so field N is at index N - 3.
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let field = |n: usize| f.get(n - 3).copied();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
        }
    };
    let tick = h.tick.max(1) as f64;
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) as f64 / tick);
    family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu);
    let rss = field(24).map(|pages| (pages * h.page) as f64);
    family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss);
    family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23).map(|b| b as f64));
    family("process_open_fds", "gauge", "Number of open file descriptors.", h.fds.map(|n| n as f64));
    family("process_max_fds", "gauge", "Maximum number of open file descriptors.", h.max_fds.map(|n| n as f64));
    let start = h.btime.zip(field(22)).map(|(b, ticks)| b as f64 + ticks as f64 / tick);
    family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_families_come_from_proc_stat() {
        // pid (comm with ") spaces") state ppid ... utime=300 stime=100 ... starttime=5000
        // vsize=8192000 rss=250
        let mut fields = vec!["0"; 50];
        fields[0] = "S";
        fields[14 - 3] = "300";
        fields[15 - 3] = "100";
        fields[22 - 3] = "5000";
        fields[23 - 3] = "8192000";
        fields[24 - 3] = "250";
        let stat = format!("42 (fence) agent) {}", fields.join(" "));
        let mut out = String::new();
        render(
            &mut out,
            &stat,
            Host { btime: Some(1_700_000_000), tick: 100, page: 4096, fds: Some(9), max_fds: Some(1024) },
        );
        for line in [
            "process_cpu_seconds_total 4\n",
            "process_resident_memory_bytes 1024000\n",
            "process_virtual_memory_bytes 8192000\n",
            "process_open_fds 9\n",
            "process_max_fds 1024\n",
            "process_start_time_seconds 1700000050\n",
            "# TYPE process_cpu_seconds_total counter\n",
        ] {
            assert!(out.contains(line), "{line:?} in\n{out}");
        }
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(open_files_limit(limits), Some(1024));
        // The real process: every family present.
        let mut real = String::new();
        append(&mut real);
        assert_eq!(real.matches("# TYPE process_").count(), 6, "{real}");
    }
}
