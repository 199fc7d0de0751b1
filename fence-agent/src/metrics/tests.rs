use std::{net::SocketAddr, time::Duration};

use hyper::Method;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    http::{LIMITS, Limits, Route, route, serve_limited},
    *,
};

/// Every family, in the order they are registered (and rendered once they have a series).
const FAMILIES: [&str; 27] = [
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
    "fence_grants",
    "fence_grants_ended_total",
    "fence_vault_sync_running",
    "fence_policy_source",
    "fence_vault_sync_failures",
    "fence_vault_sync_failures_total",
    "fence_vault_policy_refused",
    "fence_vault_last_success_timestamp_seconds",
    "fence_vault_index_version",
    "fence_dns_queries_total",
    "fence_dns_answers_held_total",
    "fence_dns_evictions_total",
    "fence_dns_answer_hold_seconds_total",
    "fence_dns_answer_hold_max_seconds",
    "fence_dns_learned_addresses",
];

const COUNTERS: [&str; 11] = [
    "fence_grants_ended_total",
    "fence_events_total",
    "fence_events_suppressed_total",
    "fence_events_dropped_total",
    "fence_policy_applies_total",
    "fence_policy_rejections_total",
    "fence_vault_sync_failures_total",
    "fence_dns_queries_total",
    "fence_dns_answers_held_total",
    "fence_dns_evictions_total",
    "fence_dns_answer_hold_seconds_total",
];

/// The sample lines of `family`, sorted (a family's series come in no particular order).
fn sample_lines(text: &str, family: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(family))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The families named by `# TYPE` lines, in order.
fn typed_families(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

fn identities(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

/// Metrics with a series in every family; label values that need escaping where `weird`.
fn populated(weird: &str) -> Metrics {
    let m = Metrics::new();
    m.event("ci", "connect", "denied");
    m.event("ci", "exec", "killed");
    m.event(weird, "connect", "denied");
    m.suppressed(weird, "open", "would-deny", 7);
    m.dropped("queue-full", 2);
    m.policy_applied(&identities(&[("ci", "sha256:1", "enforce"), (weird, "sha256:2", "audit")]), 1_700_000_000.5);
    m.policy_rejected();
    m.map_occupancy("IDENTITY_BY_CGROUP", 3, 4096);
    m.map_occupancy(weird, 1, 2);
    let mut rows = without_btf_plan().report(None);
    rows.push(crate::fences::FenceReport::not_enforced("weird", "w"));
    rows.last_mut().unwrap().mechanism = weird.to_owned();
    m.mechanisms(&rows);
    m.vault_sync_running(true);
    m.policy_source("vault");
    m.vault_sync_failed();
    m.vault_sync_failures(1);
    m.vault_policy_refused(false);
    m.vault_last_success(1_700_000_050.0);
    m.vault_index_version(12);
    m.dns(std::sync::Arc::new(|| dns::DnsReading {
        allowed: 5,
        refused: 3,
        answers_held: 5,
        hold_seconds_total: 0.004,
        hold_seconds_max: 0.0015,
        learned_addresses: 7,
        evictions: 1,
        ..dns::DnsReading::default()
    }));
    m
}

#[test]
fn dns_families_come_from_the_reader() {
    assert!(!Metrics::new().render().contains("fence_dns_"), "absent until egress by name runs");
    let text = populated("x").render();
    assert!(text.contains("fence_dns_queries_total{verdict=\"refused\"} 3\n"), "{text}");
    assert!(text.contains("fence_dns_learned_addresses 7\n"), "{text}");
    assert!(text.contains("fence_dns_evictions_total 1\n"), "{text}");
}

#[test]
fn help_and_type_once_per_family_in_a_stable_order() {
    let m = populated("weird");
    let text = m.render();
    let seen = typed_families(&text);
    for name in &seen {
        assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "TYPE twice for {name}:\n{text}");
        assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
        assert!(!sample_lines(&text, name).is_empty(), "{name} has no sample:\n{text}");
    }
    assert_eq!(seen, FAMILIES);
    for counter in COUNTERS {
        assert!(text.contains(&format!("# TYPE {counter} counter\n")), "{counter}:\n{text}");
    }
    for gauge in FAMILIES.iter().filter(|f| !COUNTERS.contains(f)) {
        assert!(text.contains(&format!("# TYPE {gauge} gauge\n")), "{gauge}:\n{text}");
    }
    assert!(text.contains("\nfence_up 1\n"));
    assert!(text.contains("# HELP fence_up 1 while the fence agent answers.\n"), "one final period:\n{text}");
    assert!(text.contains(&format!("fence_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
    assert!(text.ends_with('\n'));
    assert_eq!(text, m.render(), "rendering is stable");
    // Every sample line is `name{labels} value` or `name value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(!text.contains("# EOF"), "not OpenMetrics:\n{text}");
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
    assert!(text.contains("fence_policy_applied_timestamp_seconds 0.0\n"), "{text}");
    assert!(sample_lines(&text, "fence_events_total").is_empty());
    assert!(!text.contains("fence_events_total"), "a family without series is not rendered:\n{text}");

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
    assert_eq!(sample_lines(&text, "fence_events_dropped_total").len(), DROP_CAUSES.len() + 1);
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
    assert!(text.contains("fence_policy_applied_timestamp_seconds 1700000000.5\n"), "{text}");
    m.policy_applied(&identities(&[("b", "sha256:3", "enforce"), ("b", "sha256:3", "enforce")]), 1_700_000_100.0);
    let text = m.render();
    assert_eq!(
        sample_lines(&text, "fence_identity_info"),
        ["fence_identity_info{identity=\"b\",policy_version=\"sha256:3\",mode=\"enforce\"} 1"]
    );
    assert!(text.contains("fence_policy_applies_total 2\n"));
    assert!(text.contains("fence_policy_applied_timestamp_seconds 1700000100.0\n"), "{text}");
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
    m.map_occupancy("a\"}\n# TYPE x counter", 1, 2);
    let text = m.render();
    assert!(text.contains("fence_map_entries{map=\"a\\\"}\\n# TYPE x counter\"} 1\n"), "{text}");
    assert_eq!(typed_families(&text).iter().filter(|f| *f == "x").count(), 0, "{text}");
    // Non-finite values as Prometheus writes them.
    m.vault_last_success(f64::NAN);
    assert!(m.render().contains("fence_vault_last_success_timestamp_seconds NaN\n"));
    m.vault_last_success(f64::INFINITY);
    assert!(m.render().contains("fence_vault_last_success_timestamp_seconds +Inf\n"));
}

#[test]
fn mechanism_labels_are_the_event_values() {
    let m = Metrics::new();
    let rows = without_btf_plan().report(None);
    m.mechanisms(&rows);
    let lines = sample_lines(&m.render(), "fence_mechanism_active");
    // A fence that logs events: one series per value its events carry in fence.mechanism.
    for value in ["cgroup/connect4", "cgroup/sendmsg6", "cgroup/sock_create", "cgroup_skb/egress"] {
        let line = format!("fence_mechanism_active{{fence=\"egress\",mechanism=\"{value}\"}} 1");
        assert!(lines.contains(&line), "{line} in {lines:#?}");
    }
    assert!(
        lines.contains(
            &"fence_mechanism_active{fence=\"credential-files\",mechanism=\"fanotify/open_perm\"} 1".to_owned()
        )
    );
    // Not enforced, or no events: the doctor's mechanism.
    assert!(lines.contains(&"fence_mechanism_active{fence=\"unix-sockets\",mechanism=\"unavailable\"} 0".to_owned()));
    // Every series is replaced by the next report.
    m.mechanisms(&rows[..1]);
    let lines = sample_lines(&m.render(), "fence_mechanism_active");
    assert!(lines.iter().all(|l| l.contains(&format!("fence=\"{}\"", rows[0].fence))), "{lines:#?}");
}

#[test]
fn bad_gauges_are_ignored() {
    let m = Metrics::new();
    let before = m.render();
    for family in &FAMILIES[14..] {
        assert!(!before.contains(family), "{family} before the vault sync set it:\n{before}");
    }
    m.policy_source("elsewhere");
    m.policy_source("");
    assert_eq!(m.render(), before);
    m.policy_source("cache");
    m.policy_source("vault");
    assert_eq!(
        sample_lines(&m.render(), "fence_policy_source"),
        [
            "fence_policy_source{source=\"cache\"} 0",
            "fence_policy_source{source=\"local\"} 0",
            "fence_policy_source{source=\"vault\"} 1",
        ]
    );
    m.policy_source("nowhere");
    assert_eq!(sample_lines(&m.render(), "fence_policy_source").iter().filter(|l| l.ends_with(" 1")).count(), 1);
}

#[test]
fn vault_families_appear_once_set() {
    let m = Metrics::new();
    m.vault_sync_running(true);
    let text = m.render();
    assert!(text.contains("# TYPE fence_vault_sync_running gauge\nfence_vault_sync_running 1\n"), "{text}");
    assert!(!text.contains("fence_vault_sync_failures"), "{text}");

    // A successful poll, then two failed ones, then a success.
    m.vault_sync_failures(0);
    m.vault_policy_refused(false);
    m.vault_last_success(1_700_000_000.0);
    m.vault_index_version(3);
    let text = m.render();
    assert!(text.contains("\nfence_vault_sync_failures 0\n"), "{text}");
    assert!(text.contains("\nfence_vault_sync_failures_total 0\n"), "present at 0 from the first poll:\n{text}");
    assert!(text.contains("\nfence_vault_policy_refused 0\n"));
    assert!(text.contains("\nfence_vault_last_success_timestamp_seconds 1700000000.0\n"), "{text}");
    assert!(text.contains("\nfence_vault_index_version 3\n"));
    for n in 1..=2 {
        m.vault_sync_failed();
        m.vault_sync_failures(n);
    }
    m.vault_policy_refused(true);
    let text = m.render();
    assert!(text.contains("\nfence_vault_sync_failures 2\n"), "{text}");
    assert!(text.contains("\nfence_vault_sync_failures_total 2\n"), "{text}");
    assert!(text.contains("\nfence_vault_policy_refused 1\n"));
    m.vault_sync_failures(0);
    m.vault_sync_running(false);
    let text = m.render();
    assert!(text.contains("\nfence_vault_sync_failures 0\n"));
    assert!(text.contains("\nfence_vault_sync_failures_total 2\n"), "a counter does not go back:\n{text}");
    assert!(text.contains("\nfence_vault_sync_running 0\n"));
}

#[test]
fn shared_between_threads() {
    let m = Metrics::new();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || {
                for j in 0..1000 {
                    m.event("ci", "connect", "denied");
                    m.dropped("queue-full", 1);
                    if j % 100 == 0 {
                        m.policy_applied(&identities(&[("ci", &format!("v{i}"), "enforce")]), 1.0);
                        let _ = m.render();
                    }
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
    assert!(text.contains("fence_policy_applies_total 80\n"));
    assert_eq!(sample_lines(&text, "fence_identity_info").len(), 1, "one apply's set, not a mix:\n{text}");
}

/// promtool (Debian's `prometheus` package, installed by `./x setup`) parses and lints the
/// exposition: no error, and no problem reported for any of our families.
#[test]
fn promtool_accepts_the_exposition() {
    let text = populated("we\"ird\\name\nx \u{e9}").scrape();
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    assert!(text.contains(r#"identity="we\"ird\\name\nx é""#), "{text}");
    let (ok, out) = promtool_check(&text);
    assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}\non:\n{text}");
    assert!(text.lines().filter(|l| !l.starts_with('#')).count() > FAMILIES.len());

    // The check does see problems: a counter without `_total` and a metric without help.
    let (ok, out) = promtool_check("# TYPE fence_bad counter\nfence_bad 1\n");
    assert!(!ok && out.contains("fence_bad") && out.contains("_total"), "promtool on a bad exposition:\n{out}");
}

/// Runs `promtool check metrics` on `text`: (success, stdout and stderr).
fn promtool_check(text: &str) -> (bool, String) {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the /metrics output ({e}); run `./x setup` \
             (it installs Debian's `prometheus` package, which ships promtool)"
        ),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut printed = String::from_utf8_lossy(&out.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

#[test]
fn routes() {
    assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
    assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
    assert_eq!(route(&Method::GET, "/"), Route::Index);
    assert_eq!(route(&Method::HEAD, "/"), Route::Index);
    assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
    assert_eq!(route(&Method::GET, "/metrics/"), Route::NotFound);
    assert_eq!(route(&Method::GET, "*"), Route::NotFound);
    assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
    assert_eq!(route(&Method::DELETE, "/"), Route::MethodNotAllowed);
    assert_eq!(route(&Method::OPTIONS, "/nope"), Route::MethodNotAllowed);
    assert_eq!(route(&Method::from_bytes(b"BREW").unwrap(), "/metrics"), Route::MethodNotAllowed);
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
    assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
    assert!(body.contains("fence_events_total{identity=\"ci\",operation=\"connect\",verdict=\"denied\"} 1\n"));
    assert!(body.contains("fence_up 1\n"));

    // Later counts show in the next scrape; the query is ignored.
    m.event("ci", "connect", "denied");
    let r = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(r.contains("verdict=\"denied\"} 2\n"), "{r}");

    let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 200 OK");
    assert!(r.ends_with("\r\n\r\n") && !r.contains("fence_up"), "{r}");

    let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 200 OK");
    assert!(r.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"), "{r}");
    assert!(r.contains("href=\"/metrics\""));

    let r = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 404 Not Found");

    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(status(&r), "HTTP/1.1 405 Method Not Allowed");
    assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");

    // Garbage gets a 400.
    let r = exchange(addr, b"\x00\xff\x16\x03\x01 garbage\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 400 Bad Request");
    let r = exchange(addr, b"GET  /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 400 Bad Request");

    // A head cut short by the client's close gets a 400; a connection that sends nothing and
    // closes gets nothing.
    for (request, answer) in
        [(&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], "HTTP/1.1 400 Bad Request"), (b"", "")]
    {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        assert_eq!(status(&String::from_utf8_lossy(&out)), answer);
    }

    // A head over 8 KiB.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = exchange(addr, &big).await;
    assert_eq!(status(&r), "HTTP/1.1 431 Request Header Fields Too Large");

    // A large exposition comes whole.
    for i in 0..2000 {
        m.event(&format!("identity-{i}"), "connect", "denied");
    }
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 200 OK");
    let (_, body) = r.split_once("\r\n\r\n").unwrap();
    assert_eq!(sample_lines(body, "fence_events_total").len(), 2001);
    server.abort();
}

#[tokio::test]
async fn slow_clients_time_out_and_connections_are_capped() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits { head_timeout: Duration::from_millis(300), max_connections: 1, ..LIMITS };
    let server = tokio::spawn(serve_limited(listener, Metrics::new(), limits));

    // A client that sends half a head holds the only slot until it times out; then hyper
    // closes its connection without an answer.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&r), "HTTP/1.1 200 OK");
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));

    // So does one that sends nothing at all.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(out.is_empty() && started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    server.abort();
}

#[tokio::test]
async fn only_loopback_is_served() {
    let e = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
    assert_eq!(e.to_string(), "metrics: 0.0.0.0:0 is not a loopback address (metrics are served only on loopback)");
    let e = bind("[::]:0".parse().unwrap()).await.unwrap_err();
    assert!(matches!(e, MetricsError::NotLoopback(_)), "{e}");
    let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let e = start(addr, Metrics::new()).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("metrics: cannot listen on {addr}: ")), "{e}");
    // `allow_remote`: any address (bound only; no traffic leaves loopback).
    let remote = crate::metrics::start_remote("0.0.0.0:0".parse().unwrap(), Metrics::new()).await.unwrap();
    remote.abort();
}

/// What a host without BTF reports: egress by cgroup hooks, file opens by fanotify, nothing else.
fn without_btf_plan() -> crate::fences::Plan {
    use crate::fences::{Availability, Plan, UNITS};
    Plan {
        mechanisms: UNITS
            .iter()
            .map(|u| {
                let a = match u.name {
                    "egress" => Availability::CgroupHooks,
                    "credential-files" => Availability::Fanotify,
                    _ => Availability::Unavailable("needs the kernel's BTF".into()),
                };
                (u.name, a)
            })
            .collect(),
        lsm_refusal: None,
    }
}
