//! `[vault]`: the central vault (OpenBao or HashiCorp Vault, KV v2) that holds fence's
//! policies; see `vault::client`. Read as written ([`VaultSection`]), then checked once into a
//! [`VaultConfig`] of typed values that the client and the agent use as they are.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use url::Url;

use super::seconds_in;
use crate::{names, vault::sign::PublicKey};

pub const DEFAULT_VAULT_MOUNT: &str = "secret";
pub const DEFAULT_VAULT_PREFIX: &str = "fence";
pub const DEFAULT_VAULT_AUTH_MOUNT: &str = "approle";
/// Seconds.
pub const DEFAULT_VAULT_POLL_INTERVAL: u64 = 5;
/// Seconds.
pub const DEFAULT_VAULT_FULL_RESYNC: u64 = 600;
/// Seconds.
pub const DEFAULT_VAULT_TIMEOUT: u64 = 10;

/// The vault, checked: every value parsed, every rule applied, errors named by field.
/// Credential files are checked (mode, owner) when the client reads them, not here: a config
/// may be checked on another machine.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    /// `https://host:port`, maybe with a path prefix; `http://` only with `insecure`. No user
    /// name, password, query or fragment.
    pub address: Url,
    /// Plain HTTP is allowed (development only; the client warns at every start).
    pub insecure: bool,
    /// PEM bundle that is then the only trust anchor (pinning); else the system bundle.
    /// Absolute.
    pub ca_file: Option<PathBuf>,
    /// Sent as `X-Vault-Namespace`: printable ASCII without spaces, so always a valid header
    /// value.
    pub namespace: Option<String>,
    /// The KV v2 mount: `/`-separated names (no empty, `.` or `..` part).
    pub mount: String,
    /// Where fence's documents are in the mount (may be empty: the mount's root); same rule.
    pub prefix: String,
    /// How the client logs in.
    pub auth: VaultAuth,
    /// Where AppRole is mounted; same rule as `mount`.
    pub auth_mount: String,
    /// Between polls of the change index (1 s to 1 h).
    pub poll_interval: Duration,
    /// Between full re-reads of every document (10 s to 1 day).
    pub full_resync: Duration,
    /// Public keys documents must be signed with (`ed25519:<base64 of 32 bytes>` in the file);
    /// every one a usable key. Empty: documents are not verified.
    pub signing_keys: Vec<PublicKey>,
    /// This host's labels, matched by assignments (keys and values follow [`crate::names`]).
    pub labels: BTreeMap<String, String>,
    /// The host name assignments match and `status/<host>` is written under (default: the
    /// kernel's host name); follows [`names::check_host_name`].
    pub hostname: Option<String>,
    /// How long one request may take (1 s to 5 min).
    pub timeout: Duration,
    /// Refuse an index the console issued longer ago than this (1 min to 1 year): a vault
    /// writer cannot then hold hosts on an old, validly signed policy for longer. The console
    /// must push (`policy push` re-signs the index) more often than this. Off by default.
    pub max_index_age: Option<Duration>,
}

/// How the vault client authenticates. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// AppRole: the role_id file and the secret_id file (0600 or stricter, owned by root or the
    /// agent's uid). With `secret_id_wrapped`, the secret_id file holds a response-wrapping
    /// token, unwrapped once at the first login.
    AppRole { role_id_file: PathBuf, secret_id_file: PathBuf, secret_id_wrapped: bool },
    /// A token file instead of AppRole (console use); same permission rule.
    TokenFile(PathBuf),
}

impl VaultConfig {
    /// The address requests are built on: [`VaultConfig::address`] without a trailing `/`.
    pub fn base_address(&self) -> &str {
        self.address.as_str().trim_end_matches('/')
    }

    /// The files the agent reads for the vault (credentials, CA), each with its field name.
    pub fn agent_files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = match &self.auth {
            VaultAuth::AppRole { role_id_file, secret_id_file, .. } => {
                vec![("vault.role_id_file", role_id_file.as_path()), ("vault.secret_id_file", secret_id_file.as_path())]
            }
            VaultAuth::TokenFile(token) => vec![("vault.token_file", token.as_path())],
        };
        if let Some(ca) = &self.ca_file {
            files.push(("vault.ca_file", ca.as_path()));
        }
        files
    }
}

/// `[vault]` as written. Values that stand alone (durations, signing keys) are parsed by
/// serde; the rest is checked when it is converted (`TryFrom`) into a [`VaultConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultSection {
    address: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default = "default_vault_mount")]
    mount: String,
    #[serde(default = "default_vault_prefix")]
    prefix: String,
    #[serde(default)]
    role_id_file: Option<PathBuf>,
    #[serde(default)]
    secret_id_file: Option<PathBuf>,
    #[serde(default)]
    secret_id_wrapped: bool,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default = "default_vault_auth_mount")]
    auth_mount: String,
    #[serde(default = "default_vault_poll_interval", deserialize_with = "vault_poll_interval")]
    poll_interval: Duration,
    #[serde(default = "default_vault_full_resync", deserialize_with = "vault_full_resync")]
    full_resync: Duration,
    #[serde(default, deserialize_with = "vault_signing_keys")]
    signing_keys: Vec<PublicKey>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default = "default_vault_timeout", deserialize_with = "vault_timeout")]
    timeout: Duration,
    #[serde(default, deserialize_with = "vault_max_index_age")]
    max_index_age: Option<Duration>,
}

fn default_vault_mount() -> String {
    DEFAULT_VAULT_MOUNT.to_owned()
}

fn default_vault_prefix() -> String {
    DEFAULT_VAULT_PREFIX.to_owned()
}

fn default_vault_auth_mount() -> String {
    DEFAULT_VAULT_AUTH_MOUNT.to_owned()
}

fn default_vault_poll_interval() -> Duration {
    Duration::from_secs(DEFAULT_VAULT_POLL_INTERVAL)
}

fn default_vault_full_resync() -> Duration {
    Duration::from_secs(DEFAULT_VAULT_FULL_RESYNC)
}

fn default_vault_timeout() -> Duration {
    Duration::from_secs(DEFAULT_VAULT_TIMEOUT)
}

fn vault_poll_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    seconds_in(d, 1, 3600)
}

fn vault_full_resync<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    seconds_in(d, 10, 86400)
}

fn vault_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    seconds_in(d, 1, 300)
}

fn vault_max_index_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    seconds_in(d, 60, 31_536_000).map(Some)
}

fn vault_signing_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PublicKey>, D::Error> {
    use serde::de::Error as _;
    let keys = Vec::<String>::deserialize(d)?;
    keys.iter()
        .enumerate()
        .map(|(i, key)| signing_key(key).map_err(|why| D::Error::custom(format!("[{i}]: {key:?} {why}"))))
        .collect()
}

/// An `ed25519:<base64>` public key that can verify signatures.
fn signing_key(text: &str) -> Result<PublicKey, String> {
    let bytes = signing_key_bytes(text)?;
    PublicKey::from_bytes(&bytes).map_err(|why| format!("is not a usable Ed25519 public key: {why}"))
}

/// The 32 bytes of an `ed25519:<base64>` public key (the format only: whether they are a
/// usable key is [`PublicKey::from_bytes`]'s business).
pub fn signing_key_bytes(text: &str) -> Result<[u8; 32], String> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let b64 = text.strip_prefix("ed25519:").ok_or("is not an Ed25519 public key (\"ed25519:<base64>\")")?;
    let bytes = STANDARD.decode(b64).map_err(|e| format!("is not valid base64 after \"ed25519:\" ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("is {} bytes, not the 32 of an Ed25519 public key", bytes.len()))
}

impl TryFrom<VaultSection> for VaultConfig {
    type Error = String;

    /// What deserialization cannot check alone: the address, the choice of authentication and
    /// names used in paths and headers. Errors name the field.
    fn try_from(raw: VaultSection) -> Result<VaultConfig, String> {
        let address = vault_address(&raw.address, raw.insecure)?;
        absolute("ca_file", &raw.ca_file)?;
        absolute("role_id_file", &raw.role_id_file)?;
        absolute("secret_id_file", &raw.secret_id_file)?;
        absolute("token_file", &raw.token_file)?;
        if let Some(ns) = &raw.namespace
            && (ns.is_empty() || !ns.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(format!("vault.namespace: {ns:?} must be a non-empty name of printable ASCII characters"));
        }
        vault_path_field("mount", &raw.mount, false)?;
        vault_path_field("prefix", &raw.prefix, true)?;
        vault_path_field("auth_mount", &raw.auth_mount, false)?;
        let auth = vault_auth(raw.role_id_file, raw.secret_id_file, raw.secret_id_wrapped, raw.token_file)?;
        for (key, value) in &raw.labels {
            names::check_label_key(key).map_err(|why| format!("vault.labels: {key:?} is not a label name: {why}"))?;
            names::check_label_value(value)
                .map_err(|why| format!("vault.labels.{key}: the value is not a label value: {why}"))?;
        }
        if let Some(host) = &raw.hostname {
            names::check_host_name(host)
                .map_err(|why| format!("vault.hostname: {host:?} is not a host name fence can use: {why}"))?;
        }
        Ok(VaultConfig {
            address,
            insecure: raw.insecure,
            ca_file: raw.ca_file,
            namespace: raw.namespace,
            mount: raw.mount,
            prefix: raw.prefix,
            auth,
            auth_mount: raw.auth_mount,
            poll_interval: raw.poll_interval,
            full_resync: raw.full_resync,
            signing_keys: raw.signing_keys,
            labels: raw.labels,
            hostname: raw.hostname,
            timeout: raw.timeout,
            max_index_age: raw.max_index_age,
        })
    }
}

/// `https://` (or `http://` with `insecure`), a host, no credentials, query or fragment.
fn vault_address(address: &str, insecure: bool) -> Result<Url, String> {
    let url = Url::parse(address).map_err(|e| format!("vault.address: {address:?} is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(format!(
                "vault.address: {address} is plain HTTP; set vault.insecure = true to allow it (development only)"
            ));
        }
        other => return Err(format!("vault.address: {address} has scheme {other:?}; use https://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("vault.address: {address} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("vault.address: must not carry a user name or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("vault.address: {address} must have no query or fragment"));
    }
    Ok(url)
}

fn absolute(field: &str, path: &Option<PathBuf>) -> Result<(), String> {
    match path {
        Some(p) if !p.is_absolute() => {
            Err(format!("vault.{field}: {:?} must be an absolute path", p.display().to_string()))
        }
        _ => Ok(()),
    }
}

/// AppRole (both files) or a token file, not both.
fn vault_auth(
    role_id_file: Option<PathBuf>,
    secret_id_file: Option<PathBuf>,
    secret_id_wrapped: bool,
    token_file: Option<PathBuf>,
) -> Result<VaultAuth, String> {
    match (role_id_file, secret_id_file, token_file) {
        (Some(role_id_file), Some(secret_id_file), None) => {
            Ok(VaultAuth::AppRole { role_id_file, secret_id_file, secret_id_wrapped })
        }
        (None, None, Some(token)) if !secret_id_wrapped => Ok(VaultAuth::TokenFile(token)),
        (None, None, Some(_)) => Err("vault.secret_id_wrapped: applies only to AppRole (secret_id_file)".to_owned()),
        (None, None, None) => Err("vault: give role_id_file and secret_id_file (AppRole) or token_file".to_owned()),
        (_, _, Some(_)) => {
            Err("vault: give either role_id_file and secret_id_file (AppRole) or token_file, not both".to_owned())
        }
        (Some(_), None, None) => Err("vault.secret_id_file: is required with vault.role_id_file (AppRole)".to_owned()),
        (None, Some(_), None) => Err("vault.role_id_file: is required with vault.secret_id_file (AppRole)".to_owned()),
    }
}

/// A mount or prefix: `/`-separated names, none empty, `.` or `..`, no control characters.
fn vault_path_field(field: &str, text: &str, may_be_empty: bool) -> Result<(), String> {
    if text.is_empty() {
        return if may_be_empty { Ok(()) } else { Err(format!("vault.{field}: must not be empty")) };
    }
    for segment in text.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.chars().any(char::is_control) {
            return Err(format!(
                "vault.{field}: {text:?} is not a path of names separated by \"/\" (no empty, \".\" or \"..\" parts, no leading or trailing \"/\")"
            ));
        }
    }
    Ok(())
}
