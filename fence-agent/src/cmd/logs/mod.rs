//! `fence-agent logs`: the event file with its rotated files, oldest first, so the output is
//! chronological; filtered by identity, verdict, operation and time; as readable lines or as
//! the JSON lines themselves. `-f` follows the live file across rotations without losing or
//! repeating a line (see [`Follower`]). Lines are read back through the record types they were
//! written from ([`Line`]); lines that are not records are skipped and counted.

mod filter;
#[cfg(test)]
pub(crate) mod fixtures;
mod follow;
mod format;
mod line;
pub mod verify;

use std::{
    collections::VecDeque,
    io::{self, BufWriter, IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use fence_common::Operation;
use jiff::Timestamp;

pub use self::{
    filter::{Filter, VerdictFilter, parse_since},
    follow::Follower,
    format::format_text,
    line::{Line, OCSF_ONLY, Skipped, Skips, is_checkpoint},
};
use crate::config::Config;

/// How often `-f` looks for more at the end of the live file.
const POLL_MS: u16 = 200;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    pub command: Option<LogsCommand>,
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
    #[arg(long, value_name = "VERDICT", value_parser = filter::verdict_parser())]
    pub verdict: Vec<VerdictFilter>,
    /// Only events of this operation. Repeatable: any of them.
    #[arg(long, value_name = "OPERATION", value_parser = filter::operation_parser())]
    pub operation: Vec<Operation>,
    /// Only events at or after TIME: an RFC 3339 time (2026-11-25T17:00:00Z) or a duration
    /// back from now (30s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Timestamp>,
    /// Print the matching JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// Check that log files hold the agent's lines, all of them, in order.
    ///
    /// Every line of the event file and of the audit log is linked to the one before it (its
    /// number and the SHA-256 of that line), across rotations and restarts, and the agent
    /// signs checkpoints with its own key (state directory, log-signing.key) every [audit]
    /// checkpoint_interval, at rotation and at stop. This checks every link, every checkpoint
    /// and its signature, a cut-short last line, and that the log reaches the newest
    /// checkpoint the agent kept in its state directory (lines cut off the end). It reports
    /// the first broken place and every other one (up to 20).
    #[command(after_long_help = crate::cmd::logs::VERIFY_HELP)]
    Verify(verify::VerifyArgs),
}

pub const VERIFY_HELP: &str = "\
Files:
  /var/lib/fence/log-signing.pub          the agent's public key (--key)
  /var/lib/fence/events-checkpoint.json   the event file's newest checkpoint (--checkpoint)
  /var/lib/fence/audit-checkpoint.json    the audit log's newest checkpoint

Exit status:
  0  every log checked is intact
  1  a log is broken: a line changed, removed, inserted, reordered, or cut off the end
  2  it could not be checked (no public key, a file that cannot be read, a kept
     checkpoint that does not verify)

Examples:
  fence-agent logs verify
  fence-agent logs verify /var/log/fence/events.jsonl*
  fence-agent logs verify --key ed25519:... --checkpoint events-checkpoint.json copy/events.jsonl*";

/// Turns matching lines into output.
struct Printer {
    filter: Filter,
    json: bool,
    color: bool,
    /// Lines read as events, and those skipped: OCSF lines (read through their ECS lines),
    /// and lines that were not event records (not JSON, or not one of the records).
    skips: Skips,
    /// Whether `-f` has said that the file holds OCSF lines only so far.
    warned_ocsf: bool,
}

impl Printer {
    fn new(filter: Filter, json: bool, color: bool) -> Printer {
        Printer { filter, json, color, skips: Skips::default(), warned_ocsf: false }
    }

    fn render(&mut self, raw: &[u8]) -> Option<String> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let Ok(line) = Line::parse(raw) else {
            // The log's own signed checkpoints are not events; OCSF lines are read through
            // the ECS line of the same event (format both).
            self.skips.skipped(raw);
            if self.skips.ocsf_only() && !std::mem::replace(&mut self.warned_ocsf, true) {
                eprintln!("fence-agent logs: {OCSF_ONLY}");
            }
            return None;
        };
        self.skips.events += 1;
        if !self.filter.matches(&line) {
            return None;
        }
        // Valid JSON is valid UTF-8: the line as it was read.
        Some(if self.json { String::from_utf8_lossy(raw).into_owned() } else { format_text(&line, self.color) })
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
    if let Some(LogsCommand::Verify(v)) = args.command {
        return verify::main(v);
    }
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
    let mut printer = Printer::new(filter, args.json, color);
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
    if printer.skips.not_events > 0 {
        eprintln!("fence-agent logs: {} line(s) were not JSON and were skipped", printer.skips.not_events);
    }
    // Nothing to show from a file of OCSF lines: an error, not an empty log.
    if printer.skips.ocsf_only() && !args.follow {
        return Err(anyhow!("{}: {OCSF_ONLY}", path.display()));
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
    use super::*;
    use crate::events::{
        build::build,
        decode::KernelEvent,
        directory::Directory,
        summary::{cause, dropped_record, suppressed_record},
    };

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        logs: LogsArgs,
    }

    fn cli(args: &[&str]) -> Result<LogsArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(["logs"].iter().chain(args)).map(|c| c.logs)
    }

    #[test]
    fn operations_are_those_events_name() {
        for &op in Operation::ALL {
            assert_eq!(cli(&["--operation", op.as_str()]).unwrap().operation, [op]);
        }
        let e = cli(&["--operation", "connect4"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert_eq!(e.exit_code(), 2);
        let listed = e.to_string();
        assert!(Operation::ALL.iter().all(|o| listed.contains(o.as_str())), "{listed}");
    }

    #[test]
    fn verdicts_are_those_events_name_and_the_summaries() {
        use fence_common::Verdict;
        for &v in Verdict::ALL {
            assert_eq!(cli(&["--verdict", v.as_str()]).unwrap().verdict, [VerdictFilter::Verdict(v)]);
        }
        let args = cli(&["--verdict", "suppressed", "--verdict", "dropped"]).unwrap();
        assert_eq!(args.verdict, [VerdictFilter::Suppressed, VerdictFilter::Dropped]);
        for bad in ["allowed-by-grant", "deny"] {
            let e = cli(&["--verdict", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
            assert_eq!(e.exit_code(), 2);
            let listed = e.to_string();
            for name in Verdict::ALL.iter().map(|v| v.as_str()).chain(["suppressed", "dropped"]) {
                assert!(listed.contains(name), "{name} not in: {listed}");
            }
            assert!(!listed.contains("allowed-by-grant]") && !listed.contains("allowed-by-grant,"), "{listed}");
        }
        let help = {
            use clap::CommandFactory as _;
            Cli::command().render_long_help().to_string()
        };
        assert!(help.contains("would-deny") && help.contains("`events-dropped` summaries"), "{help}");
        assert!(!help.contains("allowed-by-grant"), "{help}");
    }

    #[test]
    fn printer_skips_and_counts_lines_that_are_not_json() {
        let mut p = Printer::new(Filter::default(), true, false);
        let event = fixtures::denied_connect().to_string();
        assert_eq!(p.render(event.as_bytes()).as_deref(), Some(event.as_str()));
        let dropped = fixtures::dropped().to_string();
        assert_eq!(p.render(dropped.as_bytes()).as_deref(), Some(dropped.as_str()));
        assert_eq!(p.render(b"not json"), None);
        assert_eq!(p.render(b"[1,2]"), None);
        assert_eq!(p.render(b"{\"cut"), None);
        assert_eq!(p.render(b""), None);
        assert_eq!(p.render(b"  "), None);
        assert_eq!(p.skips.not_events, 3);
        // JSON, but not a record: skipped and counted the same way.
        assert_eq!(p.render(b"{\"a\":1}"), None);
        let mut unknown = fixtures::denied_connect();
        unknown["fence"]["verdict"] = "allowed-by-grant".into();
        assert_eq!(p.render(unknown.to_string().as_bytes()), None);
        assert_eq!(p.skips.not_events, 5);
        // The bytes as read, not re-serialised.
        let spaced = format!(" {} ", fixtures::suppressed());
        assert_eq!(p.render(spaced.as_bytes()).as_deref(), Some(spaced.as_str()));
        // Filtered out: not printed, not counted.
        p.filter.verdicts = vec![VerdictFilter::Dropped];
        assert_eq!(p.render(event.as_bytes()), None);
        assert_eq!(p.skips.not_events, 5);
        // An OCSF line (format both) is skipped apart: the ECS line of its event was shown.
        let Line::Event(r) = fixtures::line(&fixtures::denied_connect()) else { panic!("an event") };
        let ocsf = crate::events::ocsf::event_line(&r).unwrap();
        assert_eq!(p.render(ocsf.as_bytes()), None);
        assert_eq!((p.skips.ocsf, p.skips.not_events), (1, 5));
        assert!(!p.skips.ocsf_only() && !p.warned_ocsf, "ECS lines were read");
    }

    use crate::events::build::tests::FakeHost;

    /// What the event writer writes (the record builder, then `serde_json::to_string`) is what
    /// the reader reads, filters and prints.
    #[test]
    fn lines_the_agent_writes_read_back() {
        use fence_common::{EventHeader, EventKind, Mechanism, NetEvent, Reason, Verdict};
        let header = EventHeader {
            kind: EventKind::Net as u8,
            verdict: Verdict::Denied as u8,
            operation: Operation::Connect as u8,
            mechanism: Mechanism::CgroupConnect4 as u8,
            reason: Reason::NoMatchingRule as u8,
            identity: 7,
            tgid: 10,
            pid: 11,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let net = NetEvent { header, family: 2, port: 22, protocol: 6, sock_type: 1, addr };
        let record = build(&KernelEvent::Net(net), &Directory::default(), &FakeHost).unwrap();
        let written = serde_json::to_string(&record).unwrap();
        let read = Line::parse(written.as_bytes()).unwrap();
        assert_eq!(read, Line::Event(Box::new(record)));
        assert_eq!(read.identity(), Some("#7"), "an identity the directory does not know");
        assert_eq!(read.operation(), Some(Operation::Connect));
        assert_eq!(read.verdict(), Some(Verdict::Denied));
        assert_eq!(read.time(), Some("2027-01-15T08:00:00Z".parse().unwrap()));

        let at: Timestamp = "2027-01-15T08:00:10Z".parse().unwrap();
        let key = fence_common::RateKey {
            identity: 7,
            operation: Operation::Connect as u8,
            verdict: Verdict::Denied as u8,
            _pad: [0; 2],
        };
        let interval = std::time::Duration::from_secs(10);
        let summaries = [
            suppressed_record(at, "host-a", key, None, 12, interval),
            dropped_record(at, "host-a", cause::RING_BUFFER_FULL, 3, interval),
        ];
        let mut lines = vec![written];
        for s in &summaries {
            let text = serde_json::to_string(s).unwrap();
            assert_eq!(Line::parse(text.as_bytes()).unwrap(), Line::Summary(Box::new(s.clone())));
            lines.push(text);
        }

        let mut printer = Printer::new(Filter::default(), false, false);
        let mut shown = |filter: Filter| -> Vec<String> {
            printer.filter = filter;
            lines.iter().filter_map(|l| printer.render(l.as_bytes())).collect()
        };
        let denied = Filter {
            identities: vec!["#7".into()],
            verdicts: vec![VerdictFilter::Verdict(Verdict::Denied)],
            operations: vec![Operation::Connect],
            since: Some("2027-01-15T08:00:00Z".parse().unwrap()),
        };
        assert_eq!(
            shown(denied),
            [
                "2027-01-15T08:00:00.000Z denied     connect      #7  curl[10] -> 10.0.0.1:22/tcp  rule=default-deny (cgroup/connect4)",
                "2027-01-15T08:00:10.000Z suppressed connect      #7: 12 similar denied events suppressed",
            ]
        );
        let dropped = Filter { verdicts: vec![VerdictFilter::Dropped], ..Filter::default() };
        assert_eq!(shown(dropped), ["2027-01-15T08:00:10.000Z dropped    3 events dropped (ring-buffer-full)"]);
        let later = Filter { since: Some(at), ..Filter::default() };
        assert_eq!(shown(later).len(), 2);
        assert_eq!(printer.skips.not_events, 0);
    }
}
