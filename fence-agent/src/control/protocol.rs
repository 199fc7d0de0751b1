//! The control socket's protocol, shared by the agent and the CLI: one JSON request line, one
//! JSON answer line. Answers are `{"ok":true, ...fields}` or `{"ok":false,"error":"..."}`.
//!
//! | request | who | answer |
//! |---|---|---|
//! | `{"op":"enter","identity":NAME}` | anyone (entering a fence only takes abilities away) | [`Entered`] |
//! | `{"op":"identities"}` | root | [`IdentitiesReply`] |
//! | `{"op":"status"}` | root | [`StatusReply`] |
//! | `{"op":"dump"}` | root | [`DumpReply`]: the live policy maps, read back from the kernel |
//! | `{"op":"dns"}` | root | [`DnsReply`]: egress by name, the addresses each identity learned |
//! | `{"op":"reload"}` | root | [`Reloaded`] once applied (or unchanged); the refusal's errors otherwise |
//! | `{"op":"grant-request","target":T,"ttl":SECONDS,"reason":R}` (+ `"identity"`: root only) | a fenced process, for its own identity; root | [`GrantReply`] |
//! | `{"op":"grant-show","id":ID}`, `{"op":"grant-list"}` (+ `"identity"`) | root; a fenced process sees its own identity's | [`GrantReply`] |
//! | `{"op":"grant-approve","id":ID}`, `grant-deny` / `grant-revoke` (+ `"reason"`) | root | [`GrantReply`] |
//! | `{"op":"secret-get","name":NAME}` | a fenced process, for its own identity (workload socket) | `{"ok":true,"name":..,"kind":"kv","value":..}` or `{..,"kind":"dynamic","fields":{..},"lease_id":..,"ttl":SECONDS}` |
//! | `{"op":"secret-file","name":NAME}` (+ `"field"`) | a fenced process, for its own identity (workload socket) | [`SecretFile`]: the file written |
//! | `{"op":"secret-revoke","name":NAME,"identity":ID}` | root | [`SecretRevoked`] |

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use super::replies::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Enter {
        identity: String,
    },
    Identities,
    Status,
    Dump,
    Dns,
    /// The policy read again (as SIGHUP), answered once it is applied or refused.
    Reload,
    Grant(GrantOp),
    Secret(SecretOp),
}

/// The broker's operations (see `fence-agent secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOp {
    /// The caller's own identity's secret `name`.
    Get { name: String },
    /// The same, written to a file only the caller's identity may read (one field of a
    /// dynamic secret, or all of them as JSON).
    File { name: String, field: Option<String> },
    /// Ends the leases of `identity`'s secret `name` (root).
    Revoke { name: String, identity: String },
}

/// The grant operations (see `fence-agent grant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOp {
    /// `identity`: only root on the host may name one; a fenced process asks for its own.
    Request {
        target: String,
        ttl_seconds: u64,
        reason: String,
        identity: Option<String>,
    },
    Approve {
        id: String,
    },
    Deny {
        id: String,
        reason: String,
    },
    Revoke {
        id: String,
        reason: String,
    },
    List {
        identity: Option<String>,
    },
    Show {
        id: String,
    },
}

/// The wire form, checked strictly by [`Request::parse`].
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl Wire {
    /// Fields other than `op` and `identity` this op does not take.
    fn only(&self, op: &str, allowed: &[&str]) -> Result<(), String> {
        let present = [
            ("target", self.target.is_some()),
            ("ttl", self.ttl.is_some()),
            ("reason", self.reason.is_some()),
            ("id", self.id.is_some()),
            ("name", self.name.is_some()),
            ("field", self.field.is_some()),
        ];
        match present.iter().find(|(name, set)| *set && !allowed.contains(name)) {
            Some((name, _)) => Err(format!("op \"{op}\" takes no \"{name}\"")),
            None => Ok(()),
        }
    }

    fn required(value: Option<String>, op: &str, field: &str) -> Result<String, String> {
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("op \"{op}\" needs a non-empty \"{field}\"")),
        }
    }

    fn grant(self) -> Result<GrantOp, String> {
        let op = self.op.clone();
        let need = |v: Option<String>, f: &str| Wire::required(v, &op, f);
        Ok(match op.as_str() {
            "grant-request" => {
                self.only(&op, &["target", "ttl", "reason"])?;
                let ttl_seconds = self.ttl.filter(|t| *t > 0).ok_or(format!("op \"{op}\" needs a \"ttl\" above 0"))?;
                GrantOp::Request {
                    target: need(self.target, "target")?,
                    ttl_seconds,
                    reason: need(self.reason, "reason")?,
                    identity: self.identity,
                }
            }
            "grant-approve" => {
                self.only(&op, &["id"])?;
                GrantOp::Approve { id: need(self.id, "id")? }
            }
            "grant-deny" | "grant-revoke" => {
                self.only(&op, &["id", "reason"])?;
                let (id, reason) = (need(self.id, "id")?, self.reason.unwrap_or_default());
                if op == "grant-deny" { GrantOp::Deny { id, reason } } else { GrantOp::Revoke { id, reason } }
            }
            "grant-list" => {
                self.only(&op, &[])?;
                GrantOp::List { identity: self.identity }
            }
            "grant-show" => {
                self.only(&op, &["id"])?;
                GrantOp::Show { id: need(self.id, "id")? }
            }
            other => return Err(format!("unknown op {other:?}")),
        })
    }
}

impl Wire {
    fn secret(self) -> Result<SecretOp, String> {
        let op = self.op.clone();
        self.only(&op, if op == "secret-file" { &["name", "field"] } else { &["name"] })?;
        let name = Wire::required(self.name, &op, "name")?;
        crate::names::check_name(&name).map_err(|why| format!("\"name\" is not a secret's name: {why}"))?;
        if let Some(f) = &self.field
            && (f.is_empty()
                || f.len() > 128
                || f.starts_with('.')
                || f.contains('/')
                || f.chars().any(char::is_control))
        {
            return Err(
                "\"field\" must be 1 to 128 characters, without '/', control characters or a leading '.'".into()
            );
        }
        let own = |op: &str| format!("op \"{op}\" takes no \"identity\": a process gets its own identity's secrets");
        match op.as_str() {
            "secret-file" => match self.identity {
                None => Ok(SecretOp::File { name, field: self.field }),
                Some(_) => Err(own(&op)),
            },
            "secret-get" => match self.identity {
                None => Ok(SecretOp::Get { name }),
                Some(_) => {
                    Err("op \"secret-get\" takes no \"identity\": a process gets its own identity's secrets".into())
                }
            },
            "secret-revoke" => Ok(SecretOp::Revoke { name, identity: Wire::required(self.identity, &op, "identity")? }),
            other => {
                Err(format!("unknown op {other:?} (expected \"secret-get\", \"secret-file\" or \"secret-revoke\")"))
            }
        }
    }
}

impl Request {
    /// Parses one request line; the error names the field and the reason.
    pub fn parse(line: &str) -> Result<Request, String> {
        let w: Wire = serde_json::from_str(line).map_err(|e| format!("not a valid request: {e}"))?;
        if w.op.starts_with("grant-") {
            return w.grant().map(Request::Grant);
        }
        if w.op.starts_with("secret-") {
            return w.secret().map(Request::Secret);
        }
        w.only(&w.op, &[])?;
        let plain = |r: Request, op: &str, identity: Option<String>| match identity {
            None => Ok(r),
            Some(_) => Err(format!("op \"{op}\" takes no \"identity\"")),
        };
        match (w.op.as_str(), w.identity) {
            ("enter", Some(identity)) if !identity.is_empty() => Ok(Request::Enter { identity }),
            ("enter", _) => Err("op \"enter\" needs a non-empty \"identity\"".into()),
            ("identities", i) => plain(Request::Identities, "identities", i),
            ("status", i) => plain(Request::Status, "status", i),
            ("dump", i) => plain(Request::Dump, "dump", i),
            ("dns", i) => plain(Request::Dns, "dns", i),
            ("reload", i) => plain(Request::Reload, "reload", i),
            (other, _) => Err(format!(
                "unknown op {other:?} (expected \"enter\", \"identities\", \"status\", \"dump\", \"dns\", \"reload\", \"grant-...\" or \"secret-...\")"
            )),
        }
    }

    pub fn to_line(&self) -> Vec<u8> {
        let wire = |op: &str| Wire { op: op.into(), ..Wire::default() };
        let w = match self {
            Request::Enter { identity } => Wire { identity: Some(identity.clone()), ..wire("enter") },
            Request::Identities => wire("identities"),
            Request::Status => wire("status"),
            Request::Dump => wire("dump"),
            Request::Dns => wire("dns"),
            Request::Reload => wire("reload"),
            Request::Grant(g) => match g.clone() {
                GrantOp::Request { target, ttl_seconds, reason, identity } => Wire {
                    target: Some(target),
                    ttl: Some(ttl_seconds),
                    reason: Some(reason),
                    identity,
                    ..wire("grant-request")
                },
                GrantOp::Approve { id } => Wire { id: Some(id), ..wire("grant-approve") },
                GrantOp::Deny { id, reason } => Wire { id: Some(id), reason: Some(reason), ..wire("grant-deny") },
                GrantOp::Revoke { id, reason } => Wire { id: Some(id), reason: Some(reason), ..wire("grant-revoke") },
                GrantOp::List { identity } => Wire { identity, ..wire("grant-list") },
                GrantOp::Show { id } => Wire { id: Some(id), ..wire("grant-show") },
            },
            Request::Secret(SecretOp::Get { name }) => Wire { name: Some(name.clone()), ..wire("secret-get") },
            Request::Secret(SecretOp::File { name, field }) => {
                Wire { name: Some(name.clone()), field: field.clone(), ..wire("secret-file") }
            }
            Request::Secret(SecretOp::Revoke { name, identity }) => {
                Wire { name: Some(name.clone()), identity: Some(identity.clone()), ..wire("secret-revoke") }
            }
        };
        let mut line = serde_json::to_vec(&w).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Whether only root may ask. (Grant requests, lists and shows are open: the policy
    /// service answers a fenced caller about its own identity only.)
    pub fn root_only(&self) -> bool {
        !matches!(
            self,
            Request::Enter { .. }
                | Request::Grant(GrantOp::Request { .. } | GrantOp::List { .. } | GrantOp::Show { .. })
                | Request::Secret(SecretOp::Get { .. } | SecretOp::File { .. })
        )
    }

    /// Whether the workload socket answers it.
    pub fn for_workloads(&self) -> bool {
        matches!(
            self,
            Request::Grant(GrantOp::Request { .. } | GrantOp::List { .. } | GrantOp::Show { .. })
                | Request::Secret(SecretOp::Get { .. } | SecretOp::File { .. })
        )
    }

    /// Whether the caller's process must be attested (its cgroup read from the kernel).
    pub fn needs_attestation(&self) -> bool {
        matches!(self, Request::Grant(_) | Request::Secret(SecretOp::Get { .. } | SecretOp::File { .. }))
    }
}

/// An answer as it goes over the wire.
pub fn encode<T: Serialize>(answer: &Result<T, String>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        ok: bool,
        #[serde(flatten)]
        body: &'a T,
    }
    #[derive(Serialize)]
    struct Err<'a> {
        ok: bool,
        error: &'a str,
    }
    let mut out = match answer {
        Result::Ok(body) => serde_json::to_vec(&Ok { ok: true, body }),
        Result::Err(error) => serde_json::to_vec(&Err { ok: false, error }),
    }
    .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"encoding the answer: {e}\"}}").into_bytes());
    out.push(b'\n');
    out
}

/// An answer read back: the body, or the agent's refusal.
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, super::CallError> {
    use super::CallError;
    #[derive(Deserialize)]
    struct Head {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    }
    let invalid = |e: serde_json::Error| CallError::Invalid(format!("the agent's answer is not valid ({e}): {line:?}"));
    let head: Head = serde_json::from_str(line).map_err(invalid)?;
    if !head.ok {
        return Err(CallError::Refused(head.error.unwrap_or_else(|| "the agent refused".to_owned())));
    }
    serde_json::from_str(line).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            Request::parse(r#"{"op":"enter","identity":"ci"}"#).unwrap(),
            Request::Enter { identity: "ci".into() }
        );
        assert_eq!(Request::parse(r#"{"op":"identities"}"#).unwrap(), Request::Identities);
        assert_eq!(Request::parse(r#"{"op":"dump"}"#).unwrap(), Request::Dump);
        assert!(Request::parse(r#"{"op":"enter"}"#).unwrap_err().contains("needs a non-empty \"identity\""));
        assert!(Request::parse(r#"{"op":"enter","identity":""}"#).is_err());
        assert!(Request::parse(r#"{"op":"become-root"}"#).unwrap_err().contains("unknown op"));
        assert!(Request::parse(r#"{"op":"identities","x":1}"#).unwrap_err().contains("unknown field `x`"));
        assert!(Request::parse(r#"{"op":"status","identity":"a"}"#).unwrap_err().contains("takes no"));
        assert!(Request::parse("not json").is_err());
        for r in [
            Request::Enter { identity: "a".into() },
            Request::Identities,
            Request::Status,
            Request::Dump,
            Request::Dns,
            Request::Reload,
        ] {
            let line = r.to_line();
            assert_eq!(Request::parse(std::str::from_utf8(&line).unwrap().trim()).unwrap(), r);
        }
    }

    #[test]
    fn secret_requests_parse_strictly() {
        let get = Request::parse(r#"{"op":"secret-get","name":"db"}"#).unwrap();
        assert_eq!(get, Request::Secret(SecretOp::Get { name: "db".into() }));
        assert!(get.for_workloads() && get.needs_attestation() && !get.root_only());
        let e = Request::parse(r#"{"op":"secret-get","name":"db","identity":"other"}"#).unwrap_err();
        assert!(e.contains("its own identity"), "{e}");
        assert!(Request::parse(r#"{"op":"secret-get"}"#).unwrap_err().contains("\"name\""));
        assert!(Request::parse(r#"{"op":"secret-get","name":"db","ttl":5}"#).unwrap_err().contains("\"ttl\""));
        let revoke = Request::parse(r#"{"op":"secret-revoke","name":"db","identity":"a"}"#).unwrap();
        assert!(revoke.root_only() && !revoke.for_workloads() && !revoke.needs_attestation());
        assert!(Request::parse(r#"{"op":"secret-revoke","name":"db"}"#).unwrap_err().contains("\"identity\""));
        assert!(Request::parse(r#"{"op":"secret-put","name":"db"}"#).unwrap_err().contains("unknown op"));
        assert!(Request::parse(r#"{"op":"secret-get","name":"a\nforged log line"}"#).unwrap_err().contains("name"));
        assert!(Request::parse(r#"{"op":"secret-file","name":"db","field":"../x"}"#).unwrap_err().contains("field"));
        let file = Request::parse(r#"{"op":"secret-file","name":"db","field":"password"}"#).unwrap();
        assert_eq!(file, Request::Secret(SecretOp::File { name: "db".into(), field: Some("password".into()) }));
        assert!(file.for_workloads() && file.needs_attestation());
        assert!(Request::parse(r#"{"op":"secret-get","name":"db","field":"x"}"#).unwrap_err().contains("\"field\""));
        for r in [get, revoke, file] {
            let line = r.to_line();
            assert_eq!(Request::parse(std::str::from_utf8(&line).unwrap().trim()).unwrap(), r);
        }
    }

    #[test]
    fn answers_round_trip_as_ok_or_error() {
        let line = encode(&Ok(Entered { cgroup: "/a".into(), move_self: false }));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text, "{\"ok\":true,\"cgroup\":\"/a\"}\n");
        assert_eq!(decode::<Entered>(text.trim()).unwrap(), Entered { cgroup: "/a".into(), move_self: false });
        let line = encode::<Entered>(&Err("no identity \"x\"".into()));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(decode::<Entered>(text.trim()).unwrap_err().to_string(), "no identity \"x\"");
        assert!(decode::<Entered>("{\"ok\":true}").unwrap_err().to_string().contains("missing field `cgroup`"));
        assert!(decode::<Entered>("garbage").is_err());
    }
}
