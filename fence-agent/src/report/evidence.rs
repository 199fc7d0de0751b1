//! What the logs say happened in the report's period: denials by identity and kind (the event
//! file, suppressed ones included), the grants' lives and the broker's deliveries (the audit
//! log). Pure over the lines: the caller finds and reads the files.

use std::collections::BTreeMap;

use fence_common::Verdict;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cmd::logs::{Line, Skipped};

/// Operations of one kind: refused by the kernel (denied, or the task killed) and, in audit
/// mode, allowed but logged as would-deny.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub denied: u64,
    pub would_deny: u64,
}

/// One grant as the audit log tells its life.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantLife {
    pub id: String,
    pub identity: String,
    pub target: String,
    pub ttl_seconds: u64,
    pub approval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// When it came into force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// When it ended (expired, revoked) or was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Its last state: requested, active, expired, revoked, denied.
    pub state: String,
    /// Operations the kernel allowed through it (at its end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
}

/// One secret the broker delivered to one identity.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretUse {
    pub name: String,
    pub kind: String,
    /// Deliveries (new leases, cached reads and renewals).
    pub issued: u64,
    /// The longest lease ttl given, seconds (dynamic secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl_seconds: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvidence {
    /// identity -> operation -> counts.
    pub denials: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Events lost before they were written (summaries of `events-dropped`).
    pub dropped: u64,
    pub grants: Vec<GrantLife>,
    /// identity -> the secrets it obtained.
    pub secrets: BTreeMap<String, Vec<SecretUse>>,
    /// Broker refusals.
    pub secrets_refused: u64,
    /// The oldest line of the period that the logs hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
    /// Lines that were neither events nor audit records (skipped).
    pub unreadable: u64,
    /// Event lines read (ECS), and OCSF lines skipped (`[events] file_format`).
    #[serde(default)]
    pub event_lines: u64,
    #[serde(default)]
    pub ocsf_lines: u64,
}

impl LogEvidence {
    /// Whether a line's time is in the period (lines without a readable time are).
    fn in_period(since: Option<Timestamp>, time: &str) -> bool {
        since.is_none_or(|s| time.parse::<Timestamp>().is_ok_and(|t| t >= s))
    }

    fn saw(&mut self, time: &str) {
        if self.oldest.as_deref().is_none_or(|o| time < o) {
            self.oldest = Some(time.to_owned());
        }
    }

    /// One line of the event file.
    pub fn event_line(&mut self, raw: &[u8], since: Option<Timestamp>) {
        let line = match Line::parse(raw) {
            Ok(l) => l,
            Err(_) => {
                match Skipped::of(raw) {
                    Skipped::Checkpoint => {}
                    Skipped::Ocsf => self.ocsf_lines += 1,
                    Skipped::NotEvent => self.unreadable += 1,
                }
                return;
            }
        };
        self.event_lines += 1;
        if !Self::in_period(since, line.timestamp()) {
            return;
        }
        self.saw(line.timestamp());
        let (n, verdict) = match &line {
            Line::Event(r) => (1, Some(r.fence.verdict)),
            Line::Summary(s) => {
                if let Some(d) = &s.fence.dropped {
                    self.dropped = self.dropped.saturating_add(d.count);
                }
                (s.fence.suppressed.unwrap_or(0), s.fence.verdict)
            }
        };
        let (Some(identity), Some(op), Some(verdict)) = (line.identity(), line.operation(), verdict) else { return };
        if n == 0 || identity.is_empty() {
            return;
        }
        let c = self.denials.entry(identity.to_owned()).or_default().entry(op.as_str().to_owned()).or_default();
        match verdict {
            Verdict::WouldDeny => c.would_deny = c.would_deny.saturating_add(n),
            _ => c.denied = c.denied.saturating_add(n),
        }
    }

    /// One line of the audit log: grant and broker lines count; identity lines and
    /// checkpoints are read elsewhere.
    pub fn audit_line(&mut self, raw: &[u8], since: Option<Timestamp>) {
        let Ok(v) = serde_json::from_slice::<Value>(raw) else {
            self.unreadable += 1;
            return;
        };
        let time = v["@timestamp"].as_str().unwrap_or_default();
        if !Self::in_period(since, time) {
            return;
        }
        self.saw(time);
        let action = v["event"]["action"].as_str().unwrap_or_default();
        let identity = v["fence"]["identity"].as_str().unwrap_or_default();
        if let Some(state) = action.strip_prefix("grant-") {
            self.grant_line(state, time, identity, &v["fence"]["grant"]);
        } else if action == "secret-issued" {
            self.secret_issued(identity, &v["fence"]["secret"]);
        } else if action == "secret-refused" {
            self.secrets_refused += 1;
        }
    }

    fn grant_line(&mut self, state: &str, time: &str, identity: &str, g: &Value) {
        let Some(id) = g["id"].as_str() else { return };
        if state == "decision-refused" {
            return;
        }
        let text = |k: &str| g[k].as_str().map(str::to_owned);
        let at = self.grants.iter().position(|l| l.id == id).unwrap_or_else(|| {
            self.grants.push(GrantLife {
                id: id.to_owned(),
                identity: identity.to_owned(),
                target: text("target").unwrap_or_default(),
                ttl_seconds: g["ttl_seconds"].as_u64().unwrap_or(0),
                approval: text("approval").unwrap_or_default(),
                ..GrantLife::default()
            });
            self.grants.len() - 1
        });
        let life = &mut self.grants[at];
        life.state = state.to_owned();
        match state {
            "requested" => life.requested = Some(time.to_owned()),
            "approved" | "active" => {
                life.approver = text("approver").or(life.approver.take());
                if state == "active" {
                    life.active = Some(time.to_owned());
                }
            }
            _ => {
                life.ended = Some(time.to_owned());
                life.uses = g["uses"].as_u64().or(life.uses);
            }
        }
    }

    fn secret_issued(&mut self, identity: &str, s: &Value) {
        let name = s["name"].as_str().unwrap_or_default();
        let list = self.secrets.entry(identity.to_owned()).or_default();
        let at = list.iter().position(|u| u.name == name).unwrap_or_else(|| {
            list.push(SecretUse {
                name: name.to_owned(),
                kind: s["kind"].as_str().unwrap_or_default().to_owned(),
                ..SecretUse::default()
            });
            list.len() - 1
        });
        let u = &mut list[at];
        u.issued += 1;
        if let Some(ttl) = s["ttl_seconds"].as_u64() {
            u.max_ttl_seconds = Some(u.max_ttl_seconds.map_or(ttl, |m| m.max(ttl)));
        }
    }

    /// The denials of `identity`, summed over kinds.
    pub fn totals(&self, identity: &str) -> Counts {
        self.denials.get(identity).into_iter().flat_map(|m| m.values()).fold(Counts::default(), |a, c| Counts {
            denied: a.denied.saturating_add(c.denied),
            would_deny: a.would_deny.saturating_add(c.would_deny),
        })
    }
}
