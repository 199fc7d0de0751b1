//! Complete event lines, as the agent writes them, for the tests.

use serde_json::{Value, json};

use super::line::Line;

/// A denied TCP connect, as the network fence reports it.
pub fn denied_connect() -> Value {
    json!({"@timestamp":"2026-11-25T17:16:53.178883875Z",
        "ecs":{"version":"8.11.0"},
        "event":{"kind":"alert","category":["network"],"type":["connection","denied"],"action":"connect",
                 "outcome":"failure","module":"fence","dataset":"fence.enforcement",
                 "reason":"no egress rule allows tcp to 127.0.0.1:443"},
        "host":{"hostname":"host-a"},
        "process":{"pid":19547,"thread":{"id":19547},"name":"curl","executable":"/usr/bin/curl",
                   "user":{"id":"1000"},"group":{"id":"1000"}},
        "destination":{"address":"127.0.0.1","ip":"127.0.0.1","port":443},
        "network":{"type":"ipv4","transport":"tcp","iana_number":"6"},
        "fence":{"schema_version":1,"identity":"ci-runner","identity_id":3,"mode":"enforce","verdict":"denied",
                 "operation":"connect","mechanism":"cgroup/connect4","policy_version":"sha256:abcd",
                 "rule":"default-deny","reason":"no-matching-rule","cgroup":{"id":99,"path":"/fence/ci"}}})
}

/// An exec that audit mode would have denied.
pub fn would_deny_exec() -> Value {
    json!({"@timestamp":"2026-11-25T17:20:00Z",
        "ecs":{"version":"8.11.0"},
        "event":{"kind":"alert","category":["process"],"type":["start","allowed"],"action":"exec",
                 "outcome":"success","module":"fence","dataset":"fence.enforcement",
                 "reason":"would deny /usr/bin/nc: not in the identity's exec allow-list"},
        "host":{"hostname":"host-a"},
        "process":{"pid":7,"thread":{"id":7},"name":"sh","user":{"id":"0"},"group":{"id":"0"}},
        "file":{"path":"/usr/bin/nc","name":"nc","inode":"42","device":"8:1"},
        "fence":{"schema_version":1,"identity":"model-runner","identity_id":4,"mode":"audit",
                 "verdict":"would-deny","operation":"exec","mechanism":"lsm/bprm_check_security",
                 "policy_version":"sha256:abcd","rule":"default-deny","reason":"exec-not-allowed",
                 "cgroup":{"id":100},"target":{"kind":"program","path":"/usr/bin/nc"}}})
}

/// A summary of suppressed denied connects.
pub fn suppressed() -> Value {
    json!({"@timestamp":"2026-11-25T17:21:00Z",
        "ecs":{"version":"8.11.0"},
        "event":{"kind":"metric","category":["network"],"type":["info"],"action":"events-suppressed",
                 "outcome":"unknown","module":"fence","dataset":"fence.enforcement",
                 "reason":"1234 similar events suppressed (ci-runner, connect, denied) by the rate limit"},
        "host":{"hostname":"host-a"},
        "fence":{"schema_version":1,"identity":"ci-runner","identity_id":3,"operation":"connect",
                 "verdict":"denied","suppressed":1234,"interval_seconds":10.0}})
}

/// A summary of events lost to a full ring buffer.
pub fn dropped() -> Value {
    json!({"@timestamp":"2026-11-25T17:22:00Z",
        "ecs":{"version":"8.11.0"},
        "event":{"kind":"metric","category":["host"],"type":["info"],"action":"events-dropped",
                 "outcome":"failure","module":"fence","dataset":"fence.enforcement",
                 "reason":"5 events lost: ring-buffer-full"},
        "host":{"hostname":"host-a"},
        "fence":{"schema_version":1,"dropped":{"count":5,"cause":"ring-buffer-full"},"interval_seconds":10.0}})
}

/// A fixture (or a changed one) read back; panics if it is not a valid line.
pub fn line(v: &Value) -> Line {
    Line::parse(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("not a valid line ({e}): {v}"))
}

pub fn all() -> Vec<Line> {
    [denied_connect(), would_deny_exec(), suppressed(), dropped()].iter().map(line).collect()
}
