//! Prometheus metrics: counters and gauges kept in memory and served in the text exposition
//! format 0.0.4 on a loopback address (`[metrics] listen = "127.0.0.1:9477"`; off when absent).
//!
//! Metric families, in the order they are rendered:
//!
//! | family                                   | type    | labels                              | meaning |
//! |------------------------------------------|---------|-------------------------------------|---------|
//! | `fence_up`                               | gauge   |                                     | always 1 while the agent answers |
//! | `fence_build_info`                       | gauge   | `version`                           | always 1; the agent's version |
//! | `fence_events_total`                     | counter | `identity`, `operation`, `verdict`  | events written to the sinks |
//! | `fence_events_suppressed_total`          | counter | `identity`, `operation`, `verdict`  | events not written because of rate limiting or deduplication |
//! | `fence_events_dropped_total`             | counter | `cause`                             | events lost: `ring-buffer-full`, `queue-full`, `rate-table-full`, `sink-error`, `undecodable` (all present from the start, at 0) |
//! | `fence_policy_applies_total`             | counter |                                     | policies applied |
//! | `fence_policy_rejections_total`          | counter |                                     | policies rejected (the previous one stays in force) |
//! | `fence_policy_applied_timestamp_seconds` | gauge   |                                     | Unix time of the last apply; 0 before the first |
//! | `fence_identity_info`                    | gauge   | `identity`, `policy_version`, `mode`| 1 per identity of the policy in force (the set is replaced on each apply) |
//! | `fence_map_entries`                      | gauge   | `map`                               | entries in a BPF map |
//! | `fence_map_capacity`                     | gauge   | `map`                               | the map's maximum number of entries |
//! | `fence_mechanism_active`                 | gauge   | `fence`, `mechanism`                | 1 if the fence is enforced by that mechanism, 0 if not (one series per fence) |
//!
//! followed by the gauges set with [`Metrics::set_gauge`], by name.
//!
//! [`Metrics`] is a cheap handle (an `Arc`) shared by the event writer, the policy manager and
//! the HTTP server; every update takes one short lock. [`start`] (or [`bind`] then [`serve`])
//! answers `GET /metrics` with a small HTTP/1.1 responder: request heads up to 8 KiB, read
//! within 5 s, at most 16 connections at a time, `Connection: close`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};

use crate::mechanisms::FenceReport;

/// The causes of `fence_events_dropped_total`, present at 0 from the start.
pub const DROP_CAUSES: [&str; 5] = ["ring-buffer-full", "queue-full", "rate-table-full", "sink-error", "undecodable"];

/// The families rendered by [`Metrics::render`] itself; [`Metrics::set_gauge`] refuses them.
const BUILTIN_FAMILIES: [&str; 12] = [
    "fence_up",
    "fence_build_info",
    "fence_events_total",
    "fence_events_suppressed_total",
    "fence_events_dropped_total",
    "fence_policy_applies_total",
    "fence_policy_rejections_total",
    "fence_policy_applied_timestamp_seconds",
    "fence_identity_info",
    "fence_map_entries",
    "fence_map_capacity",
    "fence_mechanism_active",
];

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics: {0} is not a loopback address (metrics are served only on loopback)")]
    NotLoopback(SocketAddr),
    #[error("metrics: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

/// (identity, operation, verdict)
type EventKey = (String, String, String);

#[derive(Debug, Default)]
struct Gauge {
    help: String,
    /// Label pairs sorted by name.
    series: BTreeMap<Vec<(String, String)>, f64>,
}

#[derive(Debug)]
struct State {
    events: BTreeMap<EventKey, u64>,
    suppressed: BTreeMap<EventKey, u64>,
    dropped: BTreeMap<String, u64>,
    policy_applies: u64,
    policy_rejections: u64,
    policy_applied_at: f64,
    /// (identity, policy_version, mode)
    identities: BTreeSet<(String, String, String)>,
    /// map -> (entries, capacity)
    maps: BTreeMap<String, (u64, u64)>,
    /// fence -> (mechanism, active)
    mechanisms: BTreeMap<String, (String, bool)>,
    gauges: BTreeMap<String, Gauge>,
}

impl Default for State {
    fn default() -> Self {
        State {
            events: BTreeMap::new(),
            suppressed: BTreeMap::new(),
            dropped: DROP_CAUSES.iter().map(|c| (c.to_string(), 0)).collect(),
            policy_applies: 0,
            policy_rejections: 0,
            policy_applied_at: 0.0,
            identities: BTreeSet::new(),
            maps: BTreeMap::new(),
            mechanisms: BTreeMap::new(),
            gauges: BTreeMap::new(),
        }
    }
}

/// The agent's metrics. Clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A poisoned lock only means another thread panicked while counting: the counts are
    /// still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One event written: `fence_events_total{identity,operation,verdict}`.
    pub fn event(&self, identity: &str, operation: &str, verdict: &str) {
        let key = (identity.to_owned(), operation.to_owned(), verdict.to_owned());
        *self.lock().events.entry(key).or_default() += 1;
    }

    /// `n` events not written (rate limiting, deduplication):
    /// `fence_events_suppressed_total{identity,operation,verdict}`.
    pub fn suppressed(&self, identity: &str, operation: &str, verdict: &str, n: u64) {
        let key = (identity.to_owned(), operation.to_owned(), verdict.to_owned());
        let mut s = self.lock();
        let c = s.suppressed.entry(key).or_default();
        *c = c.saturating_add(n);
    }

    /// `n` events lost: `fence_events_dropped_total{cause}`, `cause` one of [`DROP_CAUSES`].
    pub fn dropped(&self, cause: &str, n: u64) {
        let mut s = self.lock();
        match s.dropped.get_mut(cause) {
            Some(c) => *c = c.saturating_add(n),
            None => {
                s.dropped.insert(cause.to_owned(), n);
            }
        }
    }

    /// A policy was applied at `at_unix_seconds`: `identities` are (name, policy version, mode)
    /// and replace the whole `fence_identity_info` set.
    pub fn policy_applied(&self, identities: &[(String, String, String)], at_unix_seconds: f64) {
        let set: BTreeSet<_> = identities.iter().cloned().collect();
        let mut s = self.lock();
        s.identities = set;
        s.policy_applies += 1;
        s.policy_applied_at = at_unix_seconds;
    }

    /// [`Metrics::policy_applied`] at the current time.
    pub fn policy_applied_now(&self, identities: &[(String, String, String)]) {
        self.policy_applied(identities, unix_now());
    }

    /// A policy was rejected: `fence_policy_rejections_total`.
    pub fn policy_rejected(&self) {
        self.lock().policy_rejections += 1;
    }

    /// `fence_map_entries{map}` and `fence_map_capacity{map}`.
    pub fn map_occupancy(&self, map: &str, entries: u64, capacity: u64) {
        self.lock().maps.insert(map.to_owned(), (entries, capacity));
    }

    /// `fence_mechanism_active{fence,mechanism}`: one series per fence, so a fence whose
    /// mechanism changes does not leave the old one behind.
    pub fn mechanism(&self, fence: &str, mechanism: &str, active: bool) {
        self.lock().mechanisms.insert(fence.to_owned(), (mechanism.to_owned(), active));
    }

    /// Every row of a [`crate::mechanisms::report`], replacing the previous set.
    pub fn mechanisms(&self, rows: &[FenceReport]) {
        let set = rows.iter().map(|r| (r.fence.to_owned(), (r.mechanism.clone(), r.enforced))).collect();
        self.lock().mechanisms = set;
    }

    /// Sets a gauge of a family of its own (e.g. the vault's sync state). `name` must be a
    /// valid metric name that is not one of the built-in families, label names valid and
    /// distinct; otherwise the call is ignored with a warning. The family's help is the last
    /// one given.
    pub fn set_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if let Err(why) = check_gauge(name, labels) {
            tracing::warn!(metric = name, "metrics: gauge ignored: {why}");
            return;
        }
        let mut key: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        key.sort();
        let mut s = self.lock();
        let g = s.gauges.entry(name.to_owned()).or_default();
        if g.help != help {
            g.help = help.to_owned();
        }
        g.series.insert(key, value);
    }

    /// The metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = Out(String::with_capacity(4096));
        out.family("fence_up", "gauge", "1 while the fence agent answers.");
        out.sample("fence_up", &[], 1);
        out.family("fence_build_info", "gauge", "The fence agent's version.");
        out.sample("fence_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

        let s = self.lock();
        let events = |out: &mut Out, name: &str, map: &BTreeMap<EventKey, u64>| {
            for ((identity, operation, verdict), n) in map {
                out.sample(name, &[("identity", identity), ("operation", operation), ("verdict", verdict)], n);
            }
        };
        out.family("fence_events_total", "counter", "Events written, by identity, operation and verdict.");
        events(&mut out, "fence_events_total", &s.events);
        out.family(
            "fence_events_suppressed_total",
            "counter",
            "Events not written because of rate limiting or deduplication.",
        );
        events(&mut out, "fence_events_suppressed_total", &s.suppressed);
        out.family("fence_events_dropped_total", "counter", "Events lost, by cause.");
        for (cause, n) in &s.dropped {
            out.sample("fence_events_dropped_total", &[("cause", cause)], n);
        }

        out.family("fence_policy_applies_total", "counter", "Policies applied.");
        out.sample("fence_policy_applies_total", &[], s.policy_applies);
        out.family("fence_policy_rejections_total", "counter", "Policies rejected (the previous one stays in force).");
        out.sample("fence_policy_rejections_total", &[], s.policy_rejections);
        out.family(
            "fence_policy_applied_timestamp_seconds",
            "gauge",
            "Unix time of the last policy apply (0 before the first).",
        );
        out.sample("fence_policy_applied_timestamp_seconds", &[], F(s.policy_applied_at));
        out.family("fence_identity_info", "gauge", "The identities of the policy in force.");
        for (identity, version, mode) in &s.identities {
            out.sample(
                "fence_identity_info",
                &[("identity", identity), ("policy_version", version), ("mode", mode)],
                1,
            );
        }

        out.family("fence_map_entries", "gauge", "Entries in a BPF map.");
        for (map, (entries, _)) in &s.maps {
            out.sample("fence_map_entries", &[("map", map)], entries);
        }
        out.family("fence_map_capacity", "gauge", "Maximum entries of a BPF map.");
        for (map, (_, capacity)) in &s.maps {
            out.sample("fence_map_capacity", &[("map", map)], capacity);
        }

        out.family("fence_mechanism_active", "gauge", "1 if the fence is enforced by the mechanism, 0 if not.");
        for (fence, (mechanism, active)) in &s.mechanisms {
            out.sample("fence_mechanism_active", &[("fence", fence), ("mechanism", mechanism)], u8::from(*active));
        }

        for (name, g) in &s.gauges {
            out.family(name, "gauge", &g.help);
            for (labels, value) in &g.series {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                out.sample(name, &labels, F(*value));
            }
        }
        drop(s);
        out.0
    }
}

/// Seconds since the Unix epoch, as a gauge value.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn check_gauge(name: &str, labels: &[(&str, &str)]) -> Result<(), String> {
    let valid = |s: &str, colon: bool| {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
        };
        let mut chars = s.chars();
        chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
    };
    if !valid(name, true) {
        return Err(format!("{name:?} is not a valid metric name"));
    }
    if BUILTIN_FAMILIES.contains(&name) {
        return Err(format!("{name:?} is a built-in family"));
    }
    for (i, (k, _)) in labels.iter().enumerate() {
        if !valid(k, false) || k.starts_with("__") {
            return Err(format!("{k:?} is not a valid label name"));
        }
        if labels[..i].iter().any(|(other, _)| other == k) {
            return Err(format!("label {k:?} given twice"));
        }
    }
    Ok(())
}

/// A float sample value as Prometheus writes it.
struct F(f64);

impl std::fmt::Display for F {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

// --- HTTP ---------------------------------------------------------------------------------

/// Limits of the HTTP responder.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest request head (request line and headers).
    max_head: usize,
    /// Time allowed to send the request head.
    head_timeout: Duration,
    /// Time allowed to take the response.
    write_timeout: Duration,
    /// Time the client has to close its side after the response.
    linger: Duration,
    /// Connections served at once; more wait in the listen backlog.
    max_connections: usize,
}

const LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    head_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(10),
    linger: Duration::from_millis(500),
    max_connections: 16,
};

/// Binds `addr`, which must be a loopback address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Listen { addr, source })
}

/// Binds `addr` (so that a bind error is reported at start) and serves the metrics on it in
/// a task of its own; abort the handle to stop.
pub async fn start(addr: SocketAddr, metrics: Metrics) -> Result<JoinHandle<()>, MetricsError> {
    let listener = bind(addr).await?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %local, "metrics served on http://{local}/metrics");
    Ok(tokio::spawn(serve(listener, metrics)))
}

/// Accepts connections until the task is cancelled; one task per connection, at most 16 at
/// a time.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    serve_limited(listener, metrics, LIMITS).await
}

async fn serve_limited(listener: TcpListener, metrics: Metrics, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics, limits).await {
                tracing::debug!(error = %e, "metrics connection");
            }
            drop(slot);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Parses the request line of `head`; `head_only` is set for HEAD requests.
fn route(head: &[u8]) -> (Route, bool) {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return (Route::BadRequest, false) };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token(method) || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return (Route::BadRequest, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Route::MethodNotAllowed, false);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    };
    (route, head_only)
}

/// Reads the request head: `Ok(None)` when the peer closed without sending anything,
/// `Err(status)` when it is too long or incomplete.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Result<Option<Vec<u8>>, &'static str>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if head.is_empty() { Ok(None) } else { Err("400 Bad Request") });
        }
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let window = &head[scan_from..];
        let end = window
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| scan_from + p + 4)
            .or_else(|| window.windows(2).position(|w| w == b"\n\n").map(|p| scan_from + p + 2));
        match end {
            Some(end) if end <= max => {
                head.truncate(end);
                return Ok(Ok(Some(head)));
            }
            _ if head.len() > max => return Ok(Err("431 Request Header Fields Too Large")),
            _ => {}
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, limits: Limits) -> io::Result<()> {
    let head = match tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.max_head)).await {
        Err(_) => Err("408 Request Timeout"),
        Ok(r) => r?,
    };
    let (status, content_type, body, head_only) = match head {
        Ok(None) => return Ok(()),
        Err(status) => (status, "text/plain; charset=utf-8", format!("{status}\n"), false),
        Ok(Some(head)) => match route(&head) {
            (Route::Metrics, head_only) => ("200 OK", CONTENT_TYPE, metrics.render(), head_only),
            (Route::Index, head_only) => (
                "200 OK",
                "text/html; charset=utf-8",
                "<html><head><title>fence-agent</title></head><body><h1>fence-agent</h1>\
                 <p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                    .to_owned(),
                head_only,
            ),
            (Route::NotFound, head_only) => {
                ("404 Not Found", "text/plain; charset=utf-8", "404 Not Found: try /metrics\n".into(), head_only)
            }
            (Route::MethodNotAllowed, _) => {
                ("405 Method Not Allowed", "text/plain; charset=utf-8", "405 Method Not Allowed\n".into(), false)
            }
            (Route::BadRequest, _) => {
                ("400 Bad Request", "text/plain; charset=utf-8", "400 Bad Request\n".into(), false)
            }
        },
    };
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not take the response")),
    }
    // Read what the client may still send (a request body) before closing, so that the close
    // does not reset the connection before the client has read the answer; clients close
    // their side once they have it.
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(limits.linger, drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_lines(text: &str, family: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(family))
            .map(str::to_owned)
            .collect()
    }

    fn identities(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
    }

    #[test]
    fn help_and_type_once_per_family_in_a_stable_order() {
        let m = Metrics::new();
        m.event("ci", "connect", "denied");
        m.event("ci", "exec", "killed");
        m.set_gauge("fence_vault_synced", "1 if the vault is in sync.", &[("vault", "a")], 1.0);
        m.set_gauge("fence_vault_synced", "1 if the vault is in sync.", &[("vault", "b")], 0.0);
        let text = m.render();
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap().to_owned();
            assert!(!seen.contains(&name), "TYPE twice for {name}:\n{text}");
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
            seen.push(name);
        }
        let mut expected: Vec<String> = BUILTIN_FAMILIES.iter().map(|s| s.to_string()).collect();
        expected.push("fence_vault_synced".into());
        assert_eq!(seen, expected);
        assert!(text.contains("# TYPE fence_events_total counter\n"));
        assert!(text.contains("# TYPE fence_map_entries gauge\n"));
        assert!(text.contains("\nfence_up 1\n"));
        assert!(text.contains(&format!("fence_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("fence_vault_synced{vault=\"a\"} 1\nfence_vault_synced{vault=\"b\"} 0\n"));
        assert!(text.ends_with('\n'));
        assert_eq!(text, m.render(), "rendering is stable");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn counters_add_up_and_dropped_causes_start_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        for cause in DROP_CAUSES {
            assert!(text.contains(&format!("fence_events_dropped_total{{cause=\"{cause}\"}} 0\n")), "{text}");
        }
        assert!(text.contains("fence_policy_applies_total 0\n"));
        assert!(text.contains("fence_policy_rejections_total 0\n"));
        assert!(text.contains("fence_policy_applied_timestamp_seconds 0\n"));
        assert!(sample_lines(&text, "fence_events_total").is_empty());

        for _ in 0..3 {
            m.event("ci", "connect", "denied");
        }
        m.event("ci", "connect", "would-deny");
        m.suppressed("ci", "connect", "denied", 40);
        m.suppressed("ci", "connect", "denied", 2);
        m.dropped("ring-buffer-full", 5);
        m.dropped("ring-buffer-full", 1);
        m.dropped("something-new", 1);
        m.policy_rejected();
        m.map_occupancy("IDENTITY_BY_CGROUP", 3, 4096);
        m.map_occupancy("IDENTITY_BY_CGROUP", 4, 4096);
        let text = m.render();
        assert_eq!(
            sample_lines(&text, "fence_events_total"),
            [
                "fence_events_total{identity=\"ci\",operation=\"connect\",verdict=\"denied\"} 3",
                "fence_events_total{identity=\"ci\",operation=\"connect\",verdict=\"would-deny\"} 1",
            ]
        );
        assert_eq!(
            sample_lines(&text, "fence_events_suppressed_total"),
            ["fence_events_suppressed_total{identity=\"ci\",operation=\"connect\",verdict=\"denied\"} 42"]
        );
        assert!(text.contains("fence_events_dropped_total{cause=\"ring-buffer-full\"} 6\n"));
        assert!(text.contains("fence_events_dropped_total{cause=\"queue-full\"} 0\n"));
        assert!(text.contains("fence_events_dropped_total{cause=\"something-new\"} 1\n"));
        assert!(text.contains("fence_policy_rejections_total 1\n"));
        assert!(text.contains("fence_map_entries{map=\"IDENTITY_BY_CGROUP\"} 4\n"));
        assert!(text.contains("fence_map_capacity{map=\"IDENTITY_BY_CGROUP\"} 4096\n"));
    }

    #[test]
    fn identity_info_is_replaced_on_each_apply() {
        let m = Metrics::new();
        m.policy_applied(&identities(&[("a", "sha256:1", "enforce"), ("b", "sha256:2", "audit")]), 1_700_000_000.5);
        let text = m.render();
        assert_eq!(
            sample_lines(&text, "fence_identity_info"),
            [
                "fence_identity_info{identity=\"a\",policy_version=\"sha256:1\",mode=\"enforce\"} 1",
                "fence_identity_info{identity=\"b\",policy_version=\"sha256:2\",mode=\"audit\"} 1",
            ]
        );
        assert!(text.contains("fence_policy_applied_timestamp_seconds 1700000000.5\n"));
        m.policy_applied(&identities(&[("b", "sha256:3", "enforce")]), 1_700_000_100.0);
        let text = m.render();
        assert_eq!(
            sample_lines(&text, "fence_identity_info"),
            ["fence_identity_info{identity=\"b\",policy_version=\"sha256:3\",mode=\"enforce\"} 1"]
        );
        assert!(text.contains("fence_policy_applies_total 2\n"));
        assert!(text.contains("fence_policy_applied_timestamp_seconds 1700000100\n"));
        m.policy_applied(&[], 1_700_000_200.0);
        assert!(sample_lines(&m.render(), "fence_identity_info").is_empty());
        assert!(unix_now() > 1_700_000_000.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.event("we\"ird\\name\nx", "connect", "denied");
        let text = m.render();
        assert!(
            text.contains(r#"fence_events_total{identity="we\"ird\\name\nx",operation="connect",verdict="denied"} 1"#),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.contains("ird")).count(), 1);
        m.set_gauge("fence_x", "two\nlines \\ here", &[], f64::NAN);
        let text = m.render();
        assert!(text.contains("# HELP fence_x two\\nlines \\\\ here\n"), "{text}");
        assert!(text.contains("fence_x NaN\n"));
        m.set_gauge("fence_x", "h", &[], f64::INFINITY);
        assert!(m.render().contains("fence_x +Inf\n"));
    }

    #[test]
    fn mechanism_gauge_one_series_per_fence() {
        use crate::mechanisms::{Availability, KernelPlan, report};
        let m = Metrics::new();
        m.mechanism("exec", "tp_btf/sched_process_exec + SIGKILL", true);
        m.mechanism("exec", "lsm/bprm_check_security", true);
        m.mechanism("unix-sockets", "unavailable", false);
        let text = m.render();
        assert_eq!(
            sample_lines(&text, "fence_mechanism_active"),
            [
                "fence_mechanism_active{fence=\"exec\",mechanism=\"lsm/bprm_check_security\"} 1",
                "fence_mechanism_active{fence=\"unix-sockets\",mechanism=\"unavailable\"} 0",
            ]
        );
        let rows = report(&KernelPlan::without_btf(), &Availability::Fanotify, None);
        m.mechanisms(&rows);
        let lines = sample_lines(&m.render(), "fence_mechanism_active");
        assert_eq!(lines.len(), rows.len());
        assert!(lines.iter().any(|l| l.contains("fence=\"egress\"") && l.ends_with(" 1")));
        assert!(lines.iter().any(|l| l.contains("fence=\"unix-sockets\"") && l.ends_with(" 0")));
        assert!(lines.iter().any(|l| l.contains("fence=\"credential-files\",mechanism=\"fanotify")));
    }

    #[test]
    fn bad_gauges_are_ignored() {
        let m = Metrics::new();
        let before = m.render();
        m.set_gauge("fence_events_total", "h", &[], 1.0);
        m.set_gauge("9lives", "h", &[], 1.0);
        m.set_gauge("fence-x", "h", &[], 1.0);
        m.set_gauge("fence_x", "h", &[("__name__", "y")], 1.0);
        m.set_gauge("fence_x", "h", &[("a:b", "y")], 1.0);
        m.set_gauge("fence_x", "h", &[("a", "y"), ("a", "z")], 1.0);
        assert_eq!(m.render(), before);
        m.set_gauge("fence_x", "h", &[("b", "2"), ("a", "1")], 1.0);
        m.set_gauge("fence_x", "h", &[("a", "1"), ("b", "2")], 3.0);
        assert_eq!(sample_lines(&m.render(), "fence_x"), ["fence_x{a=\"1\",b=\"2\"} 3"]);
    }

    #[test]
    fn shared_between_threads() {
        let m = Metrics::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.event("ci", "connect", "denied");
                        m.dropped("queue-full", 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        assert!(text.contains("verdict=\"denied\"} 8000\n"));
        assert!(text.contains("fence_events_dropped_total{cause=\"queue-full\"} 8000\n"));
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), (Route::Metrics, false));
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), (Route::Metrics, false));
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), (Route::Metrics, true));
        assert_eq!(route(b"GET / HTTP/1.1\n\n"), (Route::Index, false));
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n"), (Route::NotFound, false));
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), (Route::MethodNotAllowed, false));
        assert_eq!(route(b"DELETE / HTTP/1.1\r\n\r\n"), (Route::MethodNotAllowed, false));
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"",
            b"\r\n\r\n",
        ] {
            assert_eq!(route(bad).0, Route::BadRequest, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn status(response: &str) -> &str {
        response.lines().next().unwrap_or("")
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Metrics::new();
        m.event("ci", "connect", "denied");
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, m.clone()));

        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"));
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
        assert!(body.contains("fence_events_total{identity=\"ci\",operation=\"connect\",verdict=\"denied\"} 1\n"));
        assert!(body.contains("fence_up 1\n"));

        // Later counts show in the next scrape.
        m.event("ci", "connect", "denied");
        let r = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.contains("verdict=\"denied\"} 2\n"));

        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.ends_with("\r\n\r\n") && !r.contains("fence_up"), "{r}");

        let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(r.contains("href=\"/metrics\""));

        let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 404 Not Found");

        let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").await;
        assert_eq!(status(&r), "HTTP/1.1 405 Method Not Allowed");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"));

        // Garbage, with or without a head terminator.
        let r = exchange(addr, b"\x00\xff\x16\x03\x01 garbage\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 400 Bad Request");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));

        // A connection that sends nothing and closes gets nothing.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());

        // A head over 8 KiB.
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        big.extend_from_slice(b"\r\n\r\n");
        let r = exchange(addr, &big).await;
        assert_eq!(status(&r), "HTTP/1.1 431 Request Header Fields Too Large");

        // The server still answers.
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        server.abort();
    }

    #[tokio::test]
    async fn slow_clients_time_out_and_connections_are_capped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits { head_timeout: Duration::from_millis(300), max_connections: 1, ..LIMITS };
        let server = tokio::spawn(serve_limited(listener, Metrics::new(), limits));

        // A client that sends half a head holds the only slot until it times out.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
        let mut out = Vec::new();
        slow.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
        server.abort();
    }

    #[tokio::test]
    async fn only_loopback_is_served() {
        let e = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert_eq!(e.to_string(), "metrics: 0.0.0.0:0 is not a loopback address (metrics are served only on loopback)");
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = start(addr, Metrics::new()).await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("metrics: cannot listen on {addr}: ")), "{e}");
    }
}
