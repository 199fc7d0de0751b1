//! The readable form of a line: one line of text per record, coloured on a terminal.

use fence_common::{Operation, Verdict};

use super::line::Line;
use crate::events::{
    record::Record,
    summary::{ACTION_DROPPED, SummaryRecord},
};

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREY: &str = "\x1b[90m";
const RESET: &str = "\x1b[0m";

/// One readable line for a record:
/// `2026-11-25T17:16:53.178Z denied     connect      ci-runner  curl[19547] -> 127.0.0.1:443/tcp  rule=default-deny (cgroup/connect4)`.
/// With `color`: the verdict red (denied, killed) or yellow (would-deny), summaries grey.
pub fn format_text(line: &Line, color: bool) -> String {
    let time =
        line.time().map_or_else(|| line.timestamp().to_owned(), |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
    let paint = |code: &str, text: String| if color { format!("{code}{text}{RESET}") } else { text };
    match line {
        Line::Summary(s) => paint(GREY, summary_text(&time, s)),
        Line::Event(r) => {
            let padded = format!("{:<10}", r.fence.verdict.as_str());
            let verdict = match r.fence.verdict {
                Verdict::Denied | Verdict::Killed => paint(RED, padded),
                Verdict::WouldDeny => paint(YELLOW, padded),
            };
            event_text(&time, &verdict, r)
        }
    }
}

fn or_dash(v: &str) -> &str {
    if v.is_empty() { "-" } else { v }
}

fn number(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

fn summary_text(time: &str, s: &SummaryRecord) -> String {
    let f = &s.fence;
    if s.event.action == ACTION_DROPPED {
        return format!(
            "{time} {:<10} {} events dropped ({})",
            "dropped",
            number(f.dropped.as_ref().map(|d| d.count)),
            or_dash(f.dropped.as_ref().map_or("", |d| &d.cause))
        );
    }
    let similar = f.verdict.map_or_else(String::new, |v| format!(" {v}"));
    format!(
        "{time} {:<10} {:<12} {}: {} similar{similar} events suppressed",
        "suppressed",
        f.operation.map_or("-", Operation::as_str),
        or_dash(f.identity.as_deref().unwrap_or_default()),
        number(f.suppressed),
    )
}

/// `verdict`: padded, and painted if need be.
fn event_text(time: &str, verdict: &str, r: &Record) -> String {
    let mut line = format!(
        "{time} {verdict} {:<12} {}  {}[{}] -> {}",
        r.fence.operation.as_str(),
        or_dash(&r.fence.identity),
        or_dash(&r.process.name),
        r.process.pid,
        target(r),
    );
    if !r.fence.rule.is_empty() {
        line.push_str(&format!("  rule={}", r.fence.rule));
    }
    line.push_str(&format!(" ({})", r.fence.mechanism));
    line
}

/// What the event was about: a destination, a socket kind, a path, a process.
fn target(r: &Record) -> String {
    let transport = r.network.as_ref().map_or("", |n| n.transport.as_str());
    match (r.fence.operation, &r.destination) {
        (Operation::Connect | Operation::Sendmsg, Some(d)) => {
            let host =
                if d.ip.contains(':') { format!("[{}]:{}", d.ip, d.port) } else { format!("{}:{}", d.ip, d.port) };
            if transport.is_empty() { host } else { format!("{host}/{transport}") }
        }
        (Operation::Socket, _) => {
            format!("{} {transport} socket", r.network.as_ref().map_or("", |n| &n.family))
        }
        (Operation::Ptrace | Operation::Signal, _) => match r.fence.target.as_ref().and_then(|t| t.pid) {
            Some(pid) => format!("process {pid}"),
            None => "a process outside the identity".to_owned(),
        },
        (Operation::Bpf, _) => "bpf(2)".to_owned(),
        _ => {
            let target_path = r.fence.target.as_ref().map(|t| t.path.as_str());
            let file_path = r.file.as_ref().map(|f| f.path.as_str());
            let path = target_path.into_iter().chain(file_path).find(|p| !p.is_empty());
            path.unwrap_or(&r.event.reason).to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cmd::logs::fixtures::{self, line};

    #[test]
    fn text_lines_are_readable() {
        let text = |v: serde_json::Value| format_text(&line(&v), false);
        assert_eq!(
            text(fixtures::denied_connect()),
            "2026-11-25T17:16:53.178Z denied     connect      ci-runner  curl[19547] -> 127.0.0.1:443/tcp  rule=default-deny (cgroup/connect4)"
        );
        assert_eq!(
            text(fixtures::would_deny_exec()),
            "2026-11-25T17:20:00.000Z would-deny exec         model-runner  sh[7] -> /usr/bin/nc  rule=default-deny (lsm/bprm_check_security)"
        );
        assert_eq!(
            text(fixtures::suppressed()),
            "2026-11-25T17:21:00.000Z suppressed connect      ci-runner: 1234 similar denied events suppressed"
        );
        assert_eq!(
            text(fixtures::dropped()),
            "2026-11-25T17:22:00.000Z dropped    5 events dropped (ring-buffer-full)"
        );
        // Changed fixtures: each field that can be missing or empty.
        let event = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut v = fixtures::denied_connect();
            change(&mut v);
            text(v)
        };
        let v6 = event(&|v| {
            v["@timestamp"] = json!("x");
            v["fence"]["operation"] = json!("sendmsg");
            v["fence"]["mechanism"] = json!("cgroup/sendmsg6");
            v["fence"]["identity"] = json!("");
            v["fence"]["rule"] = json!("");
            v["process"]["name"] = json!("");
            v["destination"] = json!({"address":"::1","ip":"::1","port":53});
            v["network"] = json!({"type":"ipv6","transport":"udp","iana_number":"17"});
        });
        assert_eq!(v6, "x denied     sendmsg      -  -[19547] -> [::1]:53/udp (cgroup/sendmsg6)");
        let sock = event(&|v| {
            v["fence"]["operation"] = json!("socket");
            v.as_object_mut().unwrap().remove("destination");
            v["network"] = json!({"type":"ipv4","transport":"raw","iana_number":"255"});
        });
        assert!(sock.contains("-> ipv4 raw socket  rule="), "{sock}");
        let unix = event(&|v| {
            v["fence"]["operation"] = json!("unix-connect");
            v.as_object_mut().unwrap().remove("destination");
            v.as_object_mut().unwrap().remove("network");
            v["fence"]["target"] = json!({"kind":"socket","path":"/run/docker.sock"});
        });
        assert!(unix.contains("-> /run/docker.sock  rule="), "{unix}");
        let signal = event(&|v| {
            v["fence"]["operation"] = json!("signal");
            v.as_object_mut().unwrap().remove("destination");
            v["fence"]["target"] = json!({"kind":"process","pid":1,"detail":9});
        });
        assert!(signal.contains("-> process 1  rule="), "{signal}");
        let open = event(&|v| {
            v["fence"]["operation"] = json!("open");
            v.as_object_mut().unwrap().remove("destination");
        });
        assert!(open.contains("-> no egress rule allows"), "no path: the reason; {open}");
        // Colours: red denials, yellow would-deny, grey summaries.
        let color = |v: serde_json::Value| format_text(&line(&v), true);
        assert!(color(fixtures::denied_connect()).contains("\x1b[31mdenied    \x1b[0m"));
        assert!(color(fixtures::would_deny_exec()).contains("\x1b[33mwould-deny\x1b[0m"));
        assert!(color(fixtures::suppressed()).starts_with("\x1b[90m"));
        assert!(!text(fixtures::denied_connect()).contains('\x1b'));
    }
}
