//! The policy document as operators write it (YAML, TOML or JSON; see README "Policy").
//!
//! ```yaml
//! schema: 1
//! identities:
//!   - name: ci-runner
//!     owner: platform-team@example.com
//!     purpose: Runs CI jobs for the payments repo
//!     expires: 2027-06-30
//!     mode: enforce            # or audit
//!     selectors:
//!       - cgroup: /fence/ci-runner
//!     egress:
//!       - name: internal-https
//!         to: [10.0.0.0/8, "fd00::/8", api.example.com, "*.cdn.example.com"]
//!         ports: [443, "8000-8080"]
//!         protocol: tcp        # tcp, udp or any
//!     exec:                    # absent: exec is not restricted
//!       allow:
//!         - /usr/bin/git
//!         - {path: /usr/bin/python3, sha256: "<64 hex digits>"}
//!       fileless: false        # memfd / deleted-file exec
//!     files:
//!       allow: [/home/ci/.aws/credentials]   # exceptions to the host's protected set
//!     unix:                    # absent: only the host's default-deny sockets are denied
//!       allow: [/run/app.sock, "@abstract-name"]
//!     grants:                  # just-in-time: requested by the workload, ended by the kernel
//!       - name: prod-db
//!         egress: [{to: [10.1.2.3], ports: [5432], protocol: tcp}]
//!         max_ttl: 1h          # default and cap: [grants] max_ttl of the agent (8h)
//!         approval: console    # or auto
//!       - name: deploy
//!         exec: [/usr/local/bin/deploy]
//!         files: [/etc/deploy/token]
//!         unix: [/run/docker.sock]
//!     secrets:                 # handed out by the agent's broker (`fence-agent secret get NAME`)
//!       - name: api-key
//!         kv: {path: ai/openai, key: api_key}         # KV v2, in [broker] kv_mount
//!       - name: db
//!         dynamic: {role: database/creds/ai-readonly, ttl: 15m}
//!         grant: prod-db       # only while that grant is in force; the lease ends with it
//! ```
//!
//! These types only check shape (unknown fields, types); meaning is checked by `validate`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, de};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Document schema version; must be [`super::SCHEMA_VERSION`].
    pub schema: Option<u64>,
    #[serde(default)]
    pub identities: Vec<IdentityDoc>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityDoc {
    pub name: String,
    /// Who answers for this identity (ISO 27001 5.15). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Why it exists. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Date (2026-11-01) or RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Date or RFC 3339 timestamp after which the identity is enforced as deny-all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    pub selectors: Vec<SelectorDoc>,
    #[serde(default)]
    pub egress: Vec<EgressDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<UnixDoc>,
    /// Targets the identity may be granted for a while, on request (see `grants`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantDoc>,
    /// Credentials the broker hands this identity's processes (see `secrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretDoc>,
}

/// One credential an identity may obtain from the broker: exactly one of `kv` and `dynamic`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretDoc {
    /// What a request names (`fence-agent secret get NAME`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvSecretDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSecretDoc>,
    /// A grantable target of this identity: the secret is obtainable only while a grant of it
    /// is in force, and a dynamic lease ends with the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// A value in the vault's KV v2 store.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvSecretDoc {
    /// The secret's path below the mount (`ai/openai`).
    pub path: String,
    /// The key within it (`api_key`).
    pub key: String,
}

/// A credential a secrets engine makes for the asking (a lease).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DynamicSecretDoc {
    /// `MOUNT/creds/ROLE` (`database/creds/ai-readonly`).
    pub role: String,
    /// How long a lease lasts (`15m`); the agent's `[broker] max_ttl` caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// One grantable target: rules written like standing ones, in force only while a grant of it
/// is.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantDoc {
    /// What a request names (`fence-agent grant request NAME`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressDoc>,
    /// Programs (needs the identity's exec allow-list: without one every program may run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<ExecEntryDoc>,
    /// Protected files made readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Unix sockets (paths or `@abstract` names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unix: Vec<String>,
    /// Longest grant (`90s`, `30m`, `2h`, `1d`); the agent's `[grants] max_ttl` caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    #[serde(default)]
    pub approval: Approval,
}

/// Who turns a request into a grant.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// At once, within `max_ttl` (still recorded).
    Auto,
    /// A person: local root (`grant approve`), or the console through the vault (signed).
    #[default]
    Console,
}

impl Approval {
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::Auto => "auto",
            Approval::Console => "console",
        }
    }
}

/// The exec allow-list. Present: only the listed programs may be executed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecDoc {
    pub allow: Vec<ExecEntryDoc>,
    /// Allow executing unlinked files (memfd_create, deleted files). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fileless: bool,
}

/// A program: a path or glob, optionally pinned to a SHA-256.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ExecEntryDoc {
    Path(String),
    Pinned(ExecPinnedDoc),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecPinnedDoc {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl<'de> Deserialize<'de> for ExecEntryDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ExecEntryDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a program path, or {path: ..., sha256: ...}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExecEntryDoc, E> {
                Ok(ExecEntryDoc::Path(v.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ExecEntryDoc, A::Error> {
                ExecPinnedDoc::deserialize(de::value::MapAccessDeserializer::new(map)).map(ExecEntryDoc::Pinned)
            }
        }
        d.deserialize_any(V)
    }
}

/// Readable exceptions to the host's protected-file set: paths or globs (`dir/**`: the
/// directory and everything below it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesDoc {
    pub allow: Vec<String>,
}

/// The unix-socket allow-list: socket paths (or globs) and `@abstract` names. Present: only
/// these may be reached.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnixDoc {
    pub allow: Vec<String>,
}

/// `enforce` denies what the policy does not allow; `audit` allows it and logs a would-deny.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How processes are bound to the identity: exactly one of `cgroup`, `unit` or `managed`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectorDoc {
    /// A cgroup v2 path relative to the cgroup2 mount, e.g. `/system.slice/ci.service`.
    /// Processes in it and in every cgroup below it carry the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// A systemd unit (`ci-runner.service`, `batch.slice`): its cgroup, followed across
    /// restarts (the kernel binds each new cgroup of the unit as it is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The slice a `unit` runs in, when it is not `system.slice` and the unit is not running
    /// when the policy is applied (a running unit is found wherever it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// `true`: processes started with `fence-agent exec --identity NAME` (in a cgroup the
    /// agent creates under its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressDoc {
    /// Rule name used in events; defaults to `egress[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IPv4/IPv6 CIDRs or single addresses, and DNS names (`api.example.com`,
    /// `*.example.com`, `**.example.com`; see `dns`).
    pub to: Vec<String>,
    /// Ports (`443`), ranges (`"8000-8080"`) or `"any"`.
    pub ports: Vec<PortDoc>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

/// A port as written: a number or a string (`"8000-8080"`, `"any"`). Checked by `validate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PortDoc {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number, a range like \"8000-8080\", or \"any\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortDoc, E> {
                Ok(PortDoc::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortDoc, E> {
                Ok(PortDoc::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortDoc, E> {
                Ok(PortDoc::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}
