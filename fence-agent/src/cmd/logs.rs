//! `fence-agent logs`: the event file with its rotated files, oldest first, so the output is
//! chronological; filtered by identity, verdict, operation and time; as readable lines or as
//! the JSON lines themselves. `-f` follows the live file across rotations without losing or
//! repeating a line (see [`Follower`]).

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, BufWriter, IsTerminal as _, Read as _, Write as _},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum, builder::PossibleValuesParser};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::{config::Config, events::sink::rotated_path};

/// Every `fence.operation` an event can carry.
pub const OPERATIONS: &[&str] = &[
    "connect",
    "sendmsg",
    "socket",
    "exec",
    "open",
    "unix-connect",
    "unix-send",
    "cgroup-migrate",
    "clone-into-cgroup",
    "ptrace",
    "signal",
    "bpf",
];

/// `event.action` of the summary records.
pub const ACTION_SUPPRESSED: &str = "events-suppressed";
pub const ACTION_DROPPED: &str = "events-dropped";

/// How often `-f` looks for more at the end of the live file.
const POLL_MS: u16 = 200;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The event file. Default: `[events] file` of the configuration.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Agent configuration (TOML) to read `[events] file` from. Default: /etc/fence/agent.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Follow the live file as it grows and rotates, until SIGINT or SIGTERM.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N matching events (default: all; with -f, 10).
    #[arg(long = "lines", short = 'n', value_name = "N")]
    pub lines: Option<usize>,
    /// Only events of this identity. Repeatable: any of them.
    #[arg(long, value_name = "NAME")]
    pub identity: Vec<String>,
    /// Only events with this verdict. Repeatable: any of them. `suppressed` and `dropped`
    /// select the rate limiter's and the pipeline's summary records; `denied` (and the other
    /// verdicts) also selects the suppression summaries of that verdict.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub verdict: Vec<Verdict>,
    /// Only events of this operation. Repeatable: any of them.
    #[arg(long, value_name = "OPERATION", value_parser = PossibleValuesParser::new(OPERATIONS))]
    pub operation: Vec<String>,
    /// Only events at or after TIME: an RFC 3339 time (2026-11-25T17:00:00Z) or a duration
    /// back from now (30s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Timestamp>,
    /// Print the matching JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    Denied,
    Killed,
    WouldDeny,
    AllowedByGrant,
    /// `events-suppressed` summaries.
    Suppressed,
    /// `events-dropped` summaries.
    Dropped,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Denied => "denied",
            Verdict::Killed => "killed",
            Verdict::WouldDeny => "would-deny",
            Verdict::AllowedByGrant => "allowed-by-grant",
            Verdict::Suppressed => "suppressed",
            Verdict::Dropped => "dropped",
        }
    }

    fn matches(self, record: &Value) -> bool {
        let action = str_at(record, &["event", "action"]);
        match self {
            Verdict::Suppressed => action == ACTION_SUPPRESSED,
            Verdict::Dropped => action == ACTION_DROPPED,
            // Events, and the suppression summaries of events with this verdict.
            v => action != ACTION_DROPPED && str_at(record, &["fence", "verdict"]) == v.name(),
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration back from now (`30s`, `10m`, `2h`, `1d`).
pub fn parse_since(text: &str) -> Result<Timestamp, String> {
    parse_since_at(text, Timestamp::now())
}

fn parse_since_at(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let bad = || {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-11-25T17:00:00Z) nor a duration back from now \
             (a number and s, m, h or d: 30s, 10m, 2h, 1d)"
        )
    };
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let back = n.checked_mul(seconds).map(SignedDuration::from_secs).ok_or_else(bad)?;
    now.checked_sub(back).map_err(|_| format!("{text:?} reaches back before the earliest representable time"))
}

/// The filters of the command line; all must match (each repeated one: any of its values).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub identities: Vec<String>,
    pub verdicts: Vec<Verdict>,
    pub operations: Vec<String>,
    pub since: Option<Timestamp>,
}

impl Filter {
    pub fn matches(&self, record: &Value) -> bool {
        let any = |wanted: &[String], field: &str| wanted.is_empty() || wanted.iter().any(|w| w == field);
        any(&self.identities, str_at(record, &["fence", "identity"]))
            && any(&self.operations, str_at(record, &["fence", "operation"]))
            && (self.verdicts.is_empty() || self.verdicts.iter().any(|v| v.matches(record)))
            && self.since.is_none_or(|since| timestamp(record).is_some_and(|t| t >= since))
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

fn timestamp(record: &Value) -> Option<Timestamp> {
    record["@timestamp"].as_str()?.parse().ok()
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREY: &str = "\x1b[90m";
const RESET: &str = "\x1b[0m";

/// One readable line for a record:
/// `2026-11-25T17:16:53.178Z denied     connect      ci-runner  curl[19547] -> 127.0.0.1:443/tcp  rule=default-deny (cgroup/connect4)`.
/// With `color`: the verdict red (denied, killed) or yellow (would-deny), summaries grey.
pub fn format_text(record: &Value, color: bool) -> String {
    let s = |path: &[&str]| str_at(record, path);
    let time = timestamp(record)
        .map_or_else(|| s(&["@timestamp"]).to_owned(), |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
    let or_dash = |v: &str| if v.is_empty() { "-".to_owned() } else { v.to_owned() };
    let paint = |code: &str, text: String| if color { format!("{code}{text}{RESET}") } else { text };
    let fence = &record["fence"];
    match s(&["event", "action"]) {
        ACTION_SUPPRESSED => {
            let verdict = s(&["fence", "verdict"]);
            let similar = if verdict.is_empty() { String::new() } else { format!(" {verdict}") };
            paint(
                GREY,
                format!(
                    "{time} {:<10} {:<12} {}: {} similar{similar} events suppressed",
                    "suppressed",
                    or_dash(s(&["fence", "operation"])),
                    or_dash(s(&["fence", "identity"])),
                    number(&fence["suppressed"]),
                ),
            )
        }
        ACTION_DROPPED => paint(
            GREY,
            format!(
                "{time} {:<10} {} events dropped ({})",
                "dropped",
                number(&fence["dropped"]["count"]),
                or_dash(s(&["fence", "dropped", "cause"]))
            ),
        ),
        _ => {
            let verdict = or_dash(s(&["fence", "verdict"]));
            let padded = format!("{verdict:<10}");
            let verdict = match verdict.as_str() {
                "denied" | "killed" => paint(RED, padded),
                "would-deny" => paint(YELLOW, padded),
                _ => padded,
            };
            let pid = record["process"]["pid"].as_u64().map_or_else(|| "?".to_owned(), |p| p.to_string());
            let mut line = format!(
                "{time} {verdict} {:<12} {}  {}[{pid}] -> {}",
                or_dash(s(&["fence", "operation"])),
                or_dash(s(&["fence", "identity"])),
                or_dash(s(&["process", "name"])),
                target(record),
            );
            let rule = s(&["fence", "rule"]);
            if !rule.is_empty() {
                line.push_str(&format!("  rule={rule}"));
            }
            let mechanism = s(&["fence", "mechanism"]);
            if !mechanism.is_empty() {
                line.push_str(&format!(" ({mechanism})"));
            }
            line
        }
    }
}

fn number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => "?".to_owned(),
    }
}

/// What the event was about: a destination, a socket kind, a path, a process.
fn target(record: &Value) -> String {
    let s = |path: &[&str]| str_at(record, path);
    let path = [s(&["fence", "target", "path"]), s(&["file", "path"])].into_iter().find(|p| !p.is_empty());
    match s(&["fence", "operation"]) {
        "connect" | "sendmsg" if record["destination"].is_object() => {
            let ip = s(&["destination", "ip"]);
            let port = number(&record["destination"]["port"]);
            let host = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
            match s(&["network", "transport"]) {
                "" => host,
                transport => format!("{host}/{transport}"),
            }
        }
        "socket" => format!("{} {} socket", s(&["network", "type"]), s(&["network", "transport"])),
        "ptrace" | "signal" => match record["fence"]["target"]["pid"].as_u64() {
            Some(pid) => format!("process {pid}"),
            None => "a process outside the identity".to_owned(),
        },
        "bpf" => "bpf(2)".to_owned(),
        _ => path.map_or_else(|| s(&["event", "reason"]).to_owned(), str::to_owned),
    }
}

/// A file's identity, to tell the live file from what a rotation left under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId { dev: m.dev(), ino: m.ino() }
    }
}

/// Reads an event file and its rotated files (`<file>.N`, N = 1 the newest) in order, each
/// line once: starts at the oldest file; at the end of a file that is no longer the live one
/// it moves on to the next newer one. Files are told apart by device and inode, and held open
/// once seen, so a rotation while reading loses nothing; a line without its newline yet stays
/// buffered until the rest arrives.
pub struct Follower {
    path: PathBuf,
    file: File,
    id: FileId,
    /// Newer files already opened, oldest first.
    queue: VecDeque<(FileId, File)>,
    pending: Vec<u8>,
    /// Times the files rotated so fast that one was removed before it was seen: events may be
    /// missing.
    pub gaps: u64,
}

impl Follower {
    /// Opens the set of files of `path`, at the start of the oldest.
    pub fn open(path: &Path) -> io::Result<Follower> {
        let mut chain: VecDeque<_> = chain(path)?.into();
        let Some((id, file)) = chain.pop_front() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file (nor rotated files of it)"));
        };
        Ok(Follower { path: path.to_owned(), file, id, queue: chain, pending: Vec::new(), gaps: 0 })
    }

    /// Reads every complete line there is now, up to the end of the live file, and gives each
    /// (without its newline) to `line`; stops early when `line` returns false.
    pub fn read_available(&mut self, line: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
        loop {
            if !self.read_to_end(line)? {
                return Ok(());
            }
            if self.queue.is_empty() {
                if !self.look_for_newer()? {
                    return Ok(());
                }
                // Rotated since the read above: what the writer put there before it rotated.
                if !self.read_to_end(line)? {
                    return Ok(());
                }
            }
            // The current file was rotated before the newer ones were seen, and has been read
            // since: it is complete. A last line without its newline will not get one.
            if !self.pending.is_empty() {
                let keep_going = line(&self.pending);
                self.pending.clear();
                if !keep_going {
                    return Ok(());
                }
            }
            if let Some((id, file)) = self.queue.pop_front() {
                self.id = id;
                self.file = file;
            }
        }
    }

    /// The unterminated last line, if any (for a reader that stops at the end).
    pub fn take_partial(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    /// Reads the current file to its end; false if `line` asked to stop.
    fn read_to_end(&mut self, line: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut chunk = &buf[..n];
            while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                let keep_going = if self.pending.is_empty() {
                    line(&chunk[..end])
                } else {
                    self.pending.extend_from_slice(&chunk[..end]);
                    let go = line(&self.pending);
                    self.pending.clear();
                    go
                };
                chunk = &chunk[end + 1..];
                if !keep_going {
                    return Ok(false);
                }
            }
            self.pending.extend_from_slice(chunk);
        }
    }

    /// Queues the files newer than the current one, if it has been rotated; true if any.
    fn look_for_newer(&mut self) -> io::Result<bool> {
        if fs::metadata(&self.path).is_ok_and(|m| FileId::of(&m) == self.id) {
            return Ok(false);
        }
        let mut chain = chain(&self.path)?;
        match chain.iter().position(|(id, _)| *id == self.id) {
            Some(i) => self.queue.extend(chain.drain(i + 1..)),
            None => {
                // Removed (rotated past `keep`): every file written since it was last changed
                // is newer; some between may have gone with it.
                let changed = self.file.metadata()?.modified()?;
                let newer = chain
                    .into_iter()
                    .filter(|(_, f)| f.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= changed));
                let before = self.queue.len();
                self.queue.extend(newer);
                if self.queue.len() > before {
                    self.gaps += 1;
                }
            }
        }
        Ok(!self.queue.is_empty())
    }
}

/// The files of `path`, oldest first (`<file>.N` … `<file>.1`, then `<file>`), opened, as one
/// consistent view: retried while a rotation renames them under the reader.
fn chain(path: &Path) -> io::Result<Vec<(FileId, File)>> {
    for attempt in 0..200u64 {
        let names = chain_names(path)?;
        let mut opened = Vec::with_capacity(names.len());
        for name in &names {
            match File::open(name) {
                Ok(f) => {
                    let id = FileId::of(&f.metadata()?);
                    opened.push((id, f));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", name.display()))),
            }
        }
        let same = opened.len() == names.len()
            && chain_names(path)? == names
            && names.iter().zip(&opened).all(|(n, (id, _))| fs::metadata(n).is_ok_and(|m| FileId::of(&m) == *id));
        if same {
            return Ok(opened);
        }
        std::thread::sleep(Duration::from_millis(1 + attempt.min(20)));
    }
    Err(io::Error::other("the files keep being renamed while they are read"))
}

/// The names of `path` and its rotated files that exist, oldest first.
fn chain_names(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?.as_bytes();
    let mut rotated = Vec::new();
    let mut live = false;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.as_bytes();
        if name == base {
            live = true;
        } else if let Some(n) =
            name.strip_prefix(base).and_then(|rest| rest.strip_prefix(b".")).and_then(rotation_index)
        {
            rotated.push(n);
        }
    }
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let mut names: Vec<PathBuf> = rotated.into_iter().map(|n| rotated_path(path, n)).collect();
    if live {
        names.push(path.to_owned());
    }
    Ok(names)
}

/// `N` of a rotated file's suffix: a positive number without leading zeros.
fn rotation_index(suffix: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(suffix).ok()?;
    let n: u32 = text.parse().ok()?;
    (n >= 1 && n.to_string() == text).then_some(n)
}

/// Turns matching lines into output.
struct Printer {
    filter: Filter,
    json: bool,
    color: bool,
    /// Lines that were not JSON objects (skipped).
    not_json: u64,
}

impl Printer {
    fn render(&mut self, raw: &[u8]) -> Option<String> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let record: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.not_json += 1;
                return None;
            }
        };
        if !self.filter.matches(&record) {
            return None;
        }
        Some(if self.json { String::from_utf8_lossy(raw).into_owned() } else { format_text(&record, self.color) })
    }
}

/// The output, and the first error writing it.
struct Output {
    out: BufWriter<io::StdoutLock<'static>>,
    error: Option<io::Error>,
}

impl Output {
    fn line(&mut self, text: &str) -> bool {
        if self.error.is_none()
            && let Err(e) = writeln!(self.out, "{text}")
        {
            self.error = Some(e);
        }
        self.error.is_none()
    }

    fn flush(&mut self) -> bool {
        if self.error.is_none()
            && let Err(e) = self.out.flush()
        {
            self.error = Some(e);
        }
        self.error.is_none()
    }
}

pub fn main(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let path = match &args.file {
        Some(p) => p.clone(),
        None => {
            let config = Config::load(args.config.as_deref())?;
            config.events.file.ok_or_else(|| {
                let from = args.config.as_deref().map_or_else(
                    || format!("{} (absent or without it)", crate::config::DEFAULT_PATH),
                    |p| p.display().to_string(),
                );
                anyhow!("no event file: [events] file is not set in {from}; give --file PATH")
            })?
        }
    };
    let color = !args.json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let filter = Filter {
        identities: args.identity.clone(),
        verdicts: args.verdict.clone(),
        operations: args.operation.clone(),
        since: args.since,
    };
    let mut printer = Printer { filter, json: args.json, color, not_json: 0 };
    // Signals are read between polls, so that -f ends with everything written out.
    let signals = if args.follow { Some(block_stop_signals()?) } else { None };
    let mut follower =
        Follower::open(&path).with_context(|| format!("cannot read the event file {}", path.display()))?;
    let mut out = Output { out: BufWriter::new(io::stdout().lock()), error: None };
    let read_err = |e: io::Error| anyhow!("reading the event file {}: {e}", path.display());
    let mut gaps = 0;

    // History: all of it, or the last N matching lines.
    let last = if args.follow { Some(args.lines.unwrap_or(10)) } else { args.lines };
    match last {
        None => {
            follower
                .read_available(&mut |raw| printer.render(raw).is_none_or(|text| out.line(&text)))
                .map_err(read_err)?;
        }
        Some(n) => {
            let mut tail = VecDeque::with_capacity(n.min(4096));
            let mut keep = |text: String| {
                if n > 0 {
                    if tail.len() == n {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
            };
            follower
                .read_available(&mut |raw| {
                    if let Some(text) = printer.render(raw) {
                        keep(text);
                    }
                    true
                })
                .map_err(read_err)?;
            if !args.follow
                && let Some(text) = follower.take_partial().and_then(|raw| printer.render(&raw))
            {
                keep(text);
            }
            for text in tail {
                out.line(&text);
            }
        }
    }
    if !args.follow
        && last.is_none()
        && let Some(text) = follower.take_partial().and_then(|raw| printer.render(&raw))
    {
        out.line(&text);
    }
    out.flush();
    report_gaps(&follower, &mut gaps);

    if let Some(signals) = signals {
        while out.error.is_none() && !wait(&signals)? {
            follower
                .read_available(&mut |raw| printer.render(raw).is_none_or(|text| out.line(&text)))
                .map_err(read_err)?;
            out.flush();
            report_gaps(&follower, &mut gaps);
        }
    }
    if printer.not_json > 0 {
        eprintln!("fence-agent logs: {} line(s) were not JSON and were skipped", printer.not_json);
    }
    match out.error {
        // The reader went away (`| head`): that is the end, not an error.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Some(e) => Err(anyhow!("writing the output: {e}")),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn report_gaps(follower: &Follower, reported: &mut u64) {
    if follower.gaps > *reported {
        *reported = follower.gaps;
        eprintln!(
            "fence-agent logs: the event file rotated faster than it was read (more than `keep` rotations); \
             events may be missing"
        );
    }
}

/// Blocks SIGINT and SIGTERM and returns a signalfd that reports them.
fn block_stop_signals() -> anyhow::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("blocking SIGINT and SIGTERM")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")
}

/// Waits up to one poll interval; true when it is time to stop (a signal, or stdout closed).
fn wait(signals: &nix::sys::signalfd::SignalFd) -> anyhow::Result<bool> {
    use std::os::fd::AsFd as _;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdout = io::stdout();
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN), PollFd::new(stdout.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::from(POLL_MS)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(anyhow!("poll: {e}")),
    }
    let signalled = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
    let closed = fds[1].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP));
    Ok(signalled || closed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn denied_connect() -> Value {
        json!({"@timestamp":"2026-11-25T17:16:53.178883875Z",
            "event":{"kind":"alert","action":"connect","reason":"no egress rule allows tcp to 127.0.0.1:443"},
            "process":{"pid":19547,"name":"curl"},
            "destination":{"address":"127.0.0.1","ip":"127.0.0.1","port":443},
            "network":{"type":"ipv4","transport":"tcp"},
            "fence":{"identity":"ci-runner","verdict":"denied","operation":"connect",
                     "mechanism":"cgroup/connect4","rule":"default-deny"}})
    }

    fn would_deny_exec() -> Value {
        json!({"@timestamp":"2026-11-25T17:20:00Z",
            "event":{"action":"exec"},
            "process":{"pid":7,"name":"sh"},
            "file":{"path":"/usr/bin/nc"},
            "fence":{"identity":"model-runner","verdict":"would-deny","operation":"exec",
                     "mechanism":"lsm/bprm_check_security","rule":"default-deny",
                     "target":{"kind":"program","path":"/usr/bin/nc"}}})
    }

    fn suppressed() -> Value {
        json!({"@timestamp":"2026-11-25T17:21:00Z","event":{"action":"events-suppressed"},
            "fence":{"identity":"ci-runner","operation":"connect","verdict":"denied","suppressed":1234}})
    }

    fn dropped() -> Value {
        json!({"@timestamp":"2026-11-25T17:22:00Z","event":{"action":"events-dropped"},
            "fence":{"dropped":{"count":5,"cause":"ring-buffer-full"}}})
    }

    fn all() -> Vec<Value> {
        vec![denied_connect(), would_deny_exec(), suppressed(), dropped()]
    }

    fn selected(f: &Filter) -> Vec<usize> {
        all().iter().enumerate().filter(|(_, r)| f.matches(r)).map(|(i, _)| i).collect()
    }

    #[test]
    fn operations_are_those_events_name() {
        let named: Vec<&str> = fence_common::Operation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(named, OPERATIONS);
    }

    #[test]
    fn filters_combine() {
        assert_eq!(selected(&Filter::default()), [0, 1, 2, 3]);
        let f = |identities: &[&str], verdicts: &[Verdict], operations: &[&str]| Filter {
            identities: identities.iter().map(|s| s.to_string()).collect(),
            verdicts: verdicts.to_vec(),
            operations: operations.iter().map(|s| s.to_string()).collect(),
            since: None,
        };
        assert_eq!(selected(&f(&["ci-runner"], &[], &[])), [0, 2]);
        assert_eq!(selected(&f(&["ci-runner", "model-runner"], &[], &[])), [0, 1, 2]);
        assert_eq!(selected(&f(&[], &[Verdict::Denied], &[])), [0, 2], "denied includes its suppression summaries");
        assert_eq!(selected(&f(&[], &[Verdict::WouldDeny], &[])), [1]);
        assert_eq!(selected(&f(&[], &[Verdict::Suppressed], &[])), [2]);
        assert_eq!(selected(&f(&[], &[Verdict::Dropped], &[])), [3]);
        assert_eq!(selected(&f(&[], &[Verdict::Dropped, Verdict::WouldDeny], &[])), [1, 3]);
        assert_eq!(selected(&f(&[], &[Verdict::Killed], &[])), Vec::<usize>::new());
        assert_eq!(selected(&f(&[], &[], &["exec"])), [1]);
        assert_eq!(selected(&f(&[], &[], &["connect"])), [0, 2]);
        assert_eq!(selected(&f(&["ci-runner"], &[Verdict::Suppressed], &["connect"])), [2]);
        assert_eq!(selected(&f(&["model-runner"], &[Verdict::Denied], &[])), Vec::<usize>::new());
        let since = |t: &str| Filter { since: Some(t.parse().unwrap()), ..Filter::default() };
        assert_eq!(selected(&since("2026-11-25T17:20:00Z")), [1, 2, 3], "at or after");
        assert_eq!(selected(&since("2026-11-25T17:16:53.178883876Z")), [1, 2, 3]);
        assert_eq!(selected(&since("2030-01-01T00:00:00Z")), Vec::<usize>::new());
        assert!(!since("2020-01-01T00:00:00Z").matches(&json!({"fence": {}})), "no time: not after anything");
    }

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let at = |t: &str| parse_since_at(t, now).map(|t| t.to_string());
        assert_eq!(at("2026-11-25T17:00:00Z").unwrap(), "2026-11-25T17:00:00Z");
        assert_eq!(at("2026-11-25T18:00:00+01:00").unwrap(), "2026-11-25T17:00:00Z");
        assert_eq!(at("30s").unwrap(), "2026-11-25T11:59:30Z");
        assert_eq!(at("10m").unwrap(), "2026-11-25T11:50:00Z");
        assert_eq!(at("2h").unwrap(), "2026-11-25T10:00:00Z");
        assert_eq!(at("1d").unwrap(), "2026-11-24T12:00:00Z");
        for bad in ["", "10", "m", "10x", "-5m", "1.5h", "yesterday", "2026-11-25", "99999999999999999999d"] {
            let e = at(bad).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains("earliest"), "{bad}: {e}");
        }
    }

    #[test]
    fn text_lines_are_readable() {
        assert_eq!(
            format_text(&denied_connect(), false),
            "2026-11-25T17:16:53.178Z denied     connect      ci-runner  curl[19547] -> 127.0.0.1:443/tcp  rule=default-deny (cgroup/connect4)"
        );
        assert_eq!(
            format_text(&would_deny_exec(), false),
            "2026-11-25T17:20:00.000Z would-deny exec         model-runner  sh[7] -> /usr/bin/nc  rule=default-deny (lsm/bprm_check_security)"
        );
        assert_eq!(
            format_text(&suppressed(), false),
            "2026-11-25T17:21:00.000Z suppressed connect      ci-runner: 1234 similar denied events suppressed"
        );
        assert_eq!(
            format_text(&dropped(), false),
            "2026-11-25T17:22:00.000Z dropped    5 events dropped (ring-buffer-full)"
        );
        let v6 = json!({"@timestamp":"x","fence":{"operation":"sendmsg","verdict":"denied"},
            "destination":{"ip":"::1","port":53},"network":{"transport":"udp"}});
        assert_eq!(format_text(&v6, false), "x denied     sendmsg      -  -[?] -> [::1]:53/udp");
        let sock =
            json!({"fence":{"operation":"socket","verdict":"denied"},"network":{"type":"ipv4","transport":"raw"}});
        assert!(format_text(&sock, false).ends_with("-> ipv4 raw socket"));
        let unix =
            json!({"fence":{"operation":"unix-connect","verdict":"denied","target":{"path":"/run/docker.sock"}}});
        assert!(format_text(&unix, false).ends_with("-> /run/docker.sock"));
        // Colours: red denials, yellow would-deny, grey summaries.
        assert!(format_text(&denied_connect(), true).contains("\x1b[31mdenied    \x1b[0m"));
        assert!(format_text(&would_deny_exec(), true).contains("\x1b[33mwould-deny\x1b[0m"));
        assert!(format_text(&suppressed(), true).starts_with("\x1b[90m"));
        assert!(!format_text(&denied_connect(), false).contains('\x1b'));
    }

    #[test]
    fn printer_skips_and_counts_lines_that_are_not_json() {
        let mut p = Printer { filter: Filter::default(), json: true, color: false, not_json: 0 };
        assert_eq!(p.render(b"{\"a\":1}").as_deref(), Some("{\"a\":1}"));
        assert_eq!(p.render(b"not json"), None);
        assert_eq!(p.render(b"[1,2]"), None);
        assert_eq!(p.render(b"{\"cut"), None);
        assert_eq!(p.render(b""), None);
        assert_eq!(p.not_json, 3);
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fence-logs-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write as _;
        fs::OpenOptions::new().append(true).create(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    /// What the sink does: `.keep` removed, `.N` -> `.N+1`, live -> `.1`, a new live file.
    fn rotate(path: &Path, keep: u32) {
        let _ = fs::remove_file(rotated_path(path, keep));
        for n in (1..keep).rev() {
            let _ = fs::rename(rotated_path(path, n), rotated_path(path, n + 1));
        }
        fs::rename(path, rotated_path(path, 1)).unwrap();
        append(path, "");
    }

    fn read(f: &mut Follower) -> Vec<String> {
        let mut lines = Vec::new();
        f.read_available(&mut |l| {
            lines.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        lines
    }

    #[test]
    fn follower_reads_every_line_once_across_rotations() {
        let dir = Dir::new("follow");
        let path = dir.0.join("events.jsonl");
        append(&path, "a1\na2\n");
        rotate(&path, 10);
        append(&path, "b1\n");
        let mut f = Follower::open(&path).unwrap();
        assert_eq!(read(&mut f), ["a1", "a2", "b1"], "history, oldest first");
        assert_eq!(read(&mut f), Vec::<String>::new());
        // A line split across two writes waits for its newline.
        append(&path, "b2\nb3-par");
        assert_eq!(read(&mut f), ["b2"]);
        append(&path, "tial\n");
        assert_eq!(read(&mut f), ["b3-partial"]);
        // Written, then rotated, before the reader looks: read from the old file first.
        append(&path, "b4\n");
        rotate(&path, 10);
        append(&path, "c1\n");
        assert_eq!(read(&mut f), ["b4", "c1"]);
        // Several rotations between two reads.
        for r in 0..4 {
            append(&path, &format!("d{r}\n"));
            rotate(&path, 10);
        }
        append(&path, "e1\n");
        assert_eq!(read(&mut f), ["d0", "d1", "d2", "d3", "e1"]);
        // Mid-rotation: the live file renamed to `.1`, the new one not created yet: wait.
        append(&path, "e2\n");
        rotate(&path, 10);
        fs::remove_file(&path).unwrap();
        assert_eq!(read(&mut f), ["e2"]);
        assert_eq!(read(&mut f), Vec::<String>::new());
        append(&path, "e3\n");
        assert_eq!(read(&mut f), ["e3"]);
        assert_eq!(f.gaps, 0);
    }

    #[test]
    fn follower_holds_what_it_has_seen_and_reports_gaps() {
        let dir = Dir::new("gaps");
        let path = dir.0.join("events.jsonl");
        append(&path, "a\n");
        rotate(&path, 2);
        append(&path, "b\n");
        rotate(&path, 2);
        append(&path, "c\n");
        // Opened: all three files are held; rotating them away does not lose them.
        let mut f = Follower::open(&path).unwrap();
        for n in 0..4 {
            rotate(&path, 2);
            append(&path, &format!("x{n}\n"));
        }
        // a, b and c were seen (held); x0's file was removed before the reader looked.
        assert_eq!(read(&mut f), ["a", "b", "c", "x1", "x2", "x3"]);
        assert_eq!(f.gaps, 1);
    }

    #[test]
    fn follower_keeps_up_with_the_sink() {
        use crate::events::sink::{LineFields, Rotation, Sinks};
        let dir = Dir::new("sink");
        let path = dir.0.join("events.jsonl");
        let mut sinks = Sinks::open_rotating(false, Some(&path), Rotation { max_bytes: 64, keep: 50 }).unwrap();
        let mut f = Follower::open(&path).unwrap();
        let mut got = Vec::new();
        let mut written = Vec::new();
        for n in 0..500 {
            let line = format!("{{\"n\":{n}}}");
            sinks.write_event(&line, &LineFields::default()).unwrap();
            written.push(line);
            if n % 37 == 0 {
                got.extend(read(&mut f));
            }
        }
        got.extend(read(&mut f));
        assert_eq!(got, written);
        assert!(rotated_path(&path, 50).exists());
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = Dir::new("missing");
        let e = Follower::open(&dir.0.join("events.jsonl")).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(rotation_index(b"3"), Some(3));
        assert_eq!(rotation_index(b"03"), None);
        assert_eq!(rotation_index(b"0"), None);
        assert_eq!(rotation_index(b"gz"), None);
    }
}
