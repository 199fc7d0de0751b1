//! The vault client: OpenBao or HashiCorp Vault over HTTPS, KV v2 (same HTTP API), used by the
//! agent's sync loop and by the console commands.
//!
//! - Authentication: AppRole (`role_id_file` + `secret_id_file`, the latter optionally a
//!   response-wrapping token unwrapped once, the secret_id then kept in memory only), or a token
//!   file (console use). Credential files must be 0600 or stricter and owned by root or by this
//!   process's uid; they are checked when read, at login.
//! - The token is renewed (`renew-self`) when 2/3 of its TTL has passed; when renewal fails or
//!   the token reaches its max TTL, AppRole logs in again. Every request does this first
//!   ([`VaultClient::ensure_token`]).
//! - Secrets (tokens, secret_ids, role_ids) are [`Secret`]s: wiped on drop, `<redacted>` in
//!   Debug and Display. A token is sent only in the `X-Vault-Token` header (marked sensitive),
//!   a role_id and secret_id only in the login body, a wrapping token only to
//!   `sys/wrapping/lookup` and `unwrap`; never in a URL, a log line, an error, a command line or
//!   the environment (`VAULT_TOKEN` is not read). Texts the server sends back are scrubbed of
//!   them too.
//! - TLS: rustls with the ring provider; `ca_file` is the only trust anchor when set, else the
//!   system bundle. Plain HTTP only with `insecure = true` (warned at every start). Redirects
//!   are followed only to the same scheme, host and port (a standby's redirect to the active
//!   node is an error). Proxy variables of the environment are ignored.
//!
//! Request bodies and header values carrying a secret, and response bodies, are in buffers wiped
//! when dropped; copies the HTTP stack makes on its own (hyper's write buffer, rustls's
//! plaintext buffers) are not.
//!
//! The pieces: `auth` (login, renewal, unwrapping), `kv` (KV v2 reads, writes, lists),
//! `http` (requests and their errors), `tls` (trust anchors and the HTTP client) and `secret`
//! (secrets in memory, in credential files and in texts). [`VaultClient::new`] takes the
//! [`VaultConfig`] as [`Config::parse`](crate::config::Config::parse) checked it.

mod auth;
mod broker;
mod http;
mod kv;
mod secret;
#[cfg(test)]
mod tests;
mod tls;

use std::{
    fmt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{Method, header::HeaderValue};
use serde_json::Value;
use thiserror::Error;
use tracing::warn;

use self::auth::TokenState;
pub use self::{
    broker::{DynamicCredential, IdentityToken, TokenLife},
    kv::{KvMetadata, KvSecret, kv_api_path},
    secret::{Secret, read_credential},
    tls::SYSTEM_CA_BUNDLES,
};
use crate::config::{VaultAuth, VaultConfig};

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("vault: {0}")]
    Config(String),
    #[error("vault: {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "vault: {}: mode {mode:04o} lets group or others read or write it; refusing it (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "vault: {}: owned by uid {uid}; a credential file must be owned by root or by uid {expected} (this process)",
        path.display()
    )]
    Owner { path: PathBuf, uid: u32, expected: u32 },
    #[error("vault: {method} {path}: {source_message}")]
    Http { method: String, path: String, source_message: String },
    #[error("vault: {method} {path}: HTTP {status}{}", list_errors(errors))]
    Status { method: String, path: String, status: u16, errors: Vec<String> },
    #[error(
        "vault: {path}: check-and-set conflict: written expecting version {}, the current version is {}",
        version_text(*expected),
        version_text(*current)
    )]
    CasConflict { path: String, expected: Option<u64>, current: Option<u64> },
    #[error("vault: unwrapping the secret_id: {0}")]
    Unwrap(String),
    #[error("vault: the vault is sealed")]
    Sealed,
    #[error("vault: {path}: unexpected response: {why}")]
    BadResponse { path: String, why: String },
}

fn list_errors(errors: &[String]) -> String {
    if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
}

fn version_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

pub struct VaultClient {
    http: reqwest::Client,
    /// The address without a trailing `/`.
    base: String,
    namespace: Option<HeaderValue>,
    mount: String,
    prefix: String,
    auth_mount: String,
    auth: VaultAuth,
    /// An unwrapped secret_id, kept in memory only (the wrapping token is used up).
    unwrapped_secret_id: tokio::sync::Mutex<Option<Arc<Secret>>>,
    token: tokio::sync::Mutex<Option<TokenState>>,
    /// When the current token expires (for `token_expires_in`, readable without awaiting).
    expires: std::sync::Mutex<Option<Instant>>,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient").field("address", &self.base).field("mount", &self.mount).finish_non_exhaustive()
    }
}

impl VaultClient {
    /// Builds the HTTP client (TLS roots read now); no network. The configuration is used as
    /// it is (checked when it was read).
    pub fn new(cfg: &VaultConfig) -> Result<VaultClient, VaultError> {
        let base = cfg.base_address().to_owned();
        let plain = cfg.address.scheme() == "http";
        if plain {
            warn!(
                address = %base,
                "vault: plain HTTP (vault.insecure = true): the token and the policies cross the network \
                 unencrypted and unauthenticated; for development only"
            );
        }
        let http = tls::http_client(cfg.ca_file.as_deref(), !plain, cfg.timeout)?;
        let namespace = cfg.namespace.as_deref().map(|ns| {
            HeaderValue::from_str(ns).expect("vault.namespace is printable ASCII (checked when the config is read)")
        });
        Ok(VaultClient {
            http,
            base,
            namespace,
            mount: cfg.mount.clone(),
            prefix: cfg.prefix.clone(),
            auth_mount: cfg.auth_mount.clone(),
            auth: cfg.auth.clone(),
            unwrapped_secret_id: tokio::sync::Mutex::new(None),
            token: tokio::sync::Mutex::new(None),
            expires: std::sync::Mutex::new(None),
        })
    }

    /// `GET sys/health` (no token needed): `Ok` for an active, unsealed node; sealed is
    /// [`VaultError::Sealed`], a standby or uninitialized node a `Status` error saying so.
    pub async fn health(&self) -> Result<(), VaultError> {
        let api = "sys/health";
        let (status, body) = self.send(Method::GET, api, None, None, None).await?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let why = match status.as_u16() {
            200 => return Ok(()),
            503 => return Err(VaultError::Sealed),
            _ if json["sealed"] == true => return Err(VaultError::Sealed),
            429 => "standby node (not the active one)",
            472 => "disaster-recovery secondary",
            473 => "performance standby",
            501 => "not initialized",
            _ => "unhealthy",
        };
        Err(VaultError::Status {
            method: "GET".into(),
            path: api.into(),
            status: status.as_u16(),
            errors: vec![why.into()],
        })
    }

    /// How long the current token stays valid; `None` before login or for a token that does
    /// not expire.
    pub fn token_expires_in(&self) -> Option<Duration> {
        let at = (*self.expires.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(at.saturating_duration_since(Instant::now()))
    }
}
