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

use std::{
    fmt,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{
    Method, StatusCode,
    header::{HeaderMap, HeaderValue},
};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::config::VaultConfig;

/// System CA bundles, in the order tried (Debian/Ubuntu first).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A credential file is a line; anything this long is not one.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;
/// A response larger than this is refused (fence's documents are far smaller; an index of
/// 10,000 identities is about 1.3 MB).
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// A TTL the vault grants is taken as at most this (ten years), so that no answer can
/// overflow the arithmetic on instants.
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

/// A TTL in seconds from the vault, bounded.
fn bounded_ttl(secs: u64) -> Duration {
    Duration::from_secs(secs.min(MAX_TTL_SECS))
}

/// A token, secret_id or role_id: wiped from memory when dropped, never printed.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(text.into()))
    }

    /// The secret itself, to put where it belongs (a header, a login body). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// KV v2 metadata of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMetadata {
    pub current_version: u64,
    pub updated_time: Option<String>,
}

/// One version of a KV v2 secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSecret {
    /// The secret's `data.data` object.
    pub data: Value,
    pub version: u64,
}

enum Auth {
    AppRole { role_id_file: PathBuf, secret_id_file: PathBuf, wrapped: bool },
    TokenFile(PathBuf),
}

struct TokenState {
    token: Arc<Secret>,
    /// When the TTL below was granted (login, lookup or renewal).
    granted: Instant,
    /// Zero: the token does not expire.
    ttl: Duration,
    /// The TTL of a fresh token; a renewal granting less has hit the max TTL.
    full_ttl: Duration,
    renewable: bool,
}

impl TokenState {
    fn expires_at(&self) -> Option<Instant> {
        (!self.ttl.is_zero()).then(|| self.granted + self.ttl)
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }

    /// 2/3 of the TTL has passed.
    fn due(&self, now: Instant) -> bool {
        !self.ttl.is_zero() && now >= self.granted + self.ttl * 2 / 3
    }
}

pub struct VaultClient {
    http: reqwest::Client,
    /// The address without a trailing `/`.
    base: String,
    namespace: Option<HeaderValue>,
    mount: String,
    prefix: String,
    auth_mount: String,
    auth: Auth,
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
    /// Builds the HTTP client (TLS roots read now); no network.
    pub fn new(cfg: &VaultConfig) -> Result<VaultClient, VaultError> {
        cfg.validate().map_err(VaultError::Config)?;
        let base = cfg.address.trim_end_matches('/').to_owned();
        let plain = url::Url::parse(&base).is_ok_and(|u| u.scheme() == "http");
        if plain {
            warn!(
                address = %base,
                "vault: plain HTTP (vault.insecure = true): the token and the policies cross the network \
                 unencrypted and unauthenticated; for development only"
            );
        }
        let tls = tls_config(cfg.ca_file.as_deref(), !plain)?;
        let timeout = Duration::from_secs(cfg.timeout);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt.previous().first().is_some_and(|first| {
                    let next = attempt.url();
                    first.scheme() == next.scheme()
                        && first.host_str() == next.host_str()
                        && first.port_or_known_default() == next.port_or_known_default()
                });
                if same_origin && attempt.previous().len() <= 5 { attempt.follow() } else { attempt.stop() }
            }))
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("fence-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| VaultError::Config(format!("building the HTTP client: {}", http_error_text(e))))?;
        let namespace = match &cfg.namespace {
            Some(ns) => Some(
                HeaderValue::from_str(ns)
                    .map_err(|_| VaultError::Config(format!("vault.namespace: {ns:?} is not a header value")))?,
            ),
            None => None,
        };
        let auth = match (&cfg.role_id_file, &cfg.secret_id_file, &cfg.token_file) {
            (Some(role), Some(secret), None) => Auth::AppRole {
                role_id_file: role.clone(),
                secret_id_file: secret.clone(),
                wrapped: cfg.secret_id_wrapped,
            },
            (None, None, Some(token)) => Auth::TokenFile(token.clone()),
            _ => unreachable!("validate() admits AppRole or a token file"),
        };
        Ok(VaultClient {
            http,
            base,
            namespace,
            mount: cfg.mount.clone(),
            prefix: cfg.prefix.clone(),
            auth_mount: cfg.auth_mount.clone(),
            auth,
            unwrapped_secret_id: tokio::sync::Mutex::new(None),
            token: tokio::sync::Mutex::new(None),
            expires: std::sync::Mutex::new(None),
        })
    }

    /// Logs in now (AppRole, unwrapping the secret_id the first time if it is wrapped; or the
    /// token file, looked up to learn its TTL), replacing any current token.
    pub async fn login(&self) -> Result<(), VaultError> {
        let mut slot = self.token.lock().await;
        let state = self.fresh_login().await?;
        self.install(&mut slot, state);
        Ok(())
    }

    /// Logs in if there is no token; renews it when 2/3 of its TTL has passed; logs in again
    /// (AppRole) when renewal fails or the token reaches its max TTL. Every request calls it.
    pub async fn ensure_token(&self) -> Result<(), VaultError> {
        self.current_token().await.map(drop)
    }

    /// `GET {mount}/metadata/{prefix}/{path}`; `None` when there is nothing at `path`.
    pub async fn kv_metadata(&self, path: &str) -> Result<Option<KvMetadata>, VaultError> {
        let api = self.kv_api("metadata", path)?;
        let Some(body) = self.authed(Method::GET, &api, None, None).await? else {
            return Ok(None);
        };
        let data = &body["data"];
        let current_version = data["current_version"]
            .as_u64()
            .ok_or_else(|| VaultError::BadResponse { path: api.clone(), why: "no data.current_version".into() })?;
        let updated_time = data["updated_time"].as_str().map(str::to_owned);
        Ok(Some(KvMetadata { current_version, updated_time }))
    }

    /// `GET {mount}/data/{prefix}/{path}[?version=N]`; `None` when there is nothing at `path`,
    /// or that version was deleted or destroyed.
    pub async fn kv_read(&self, path: &str, version: Option<u64>) -> Result<Option<KvSecret>, VaultError> {
        let api = self.kv_api("data", path)?;
        let query = version.map(|v| format!("version={v}"));
        let Some(body) = self.authed(Method::GET, &api, query.as_deref(), None).await? else {
            return Ok(None);
        };
        let data = &body["data"];
        let metadata = &data["metadata"];
        if data["data"].is_null()
            || metadata["destroyed"] == true
            || metadata["deletion_time"].as_str().is_some_and(|t| !t.is_empty())
        {
            return Ok(None);
        }
        let version = metadata["version"]
            .as_u64()
            .ok_or_else(|| VaultError::BadResponse { path: api.clone(), why: "no data.metadata.version".into() })?;
        Ok(Some(KvSecret { data: data["data"].clone(), version }))
    }

    /// `POST {mount}/data/{prefix}/{path}` with `options.cas` when given (0: only if nothing is
    /// there yet); returns the new version. A CAS mismatch is [`VaultError::CasConflict`].
    pub async fn kv_write(&self, path: &str, data: &Value, cas: Option<u64>) -> Result<u64, VaultError> {
        let api = self.kv_api("data", path)?;
        let mut body = serde_json::json!({ "data": data });
        if let Some(cas) = cas {
            body["options"] = serde_json::json!({ "cas": cas });
        }
        let body = serde_json::to_vec(&body).map_err(|e| VaultError::Config(format!("encoding {path}: {e}")))?;
        let body = Bytes::from(body);
        match self.authed(Method::POST, &api, None, Some(body)).await {
            Ok(Some(resp)) => resp["data"]["version"]
                .as_u64()
                .ok_or_else(|| VaultError::BadResponse { path: api.clone(), why: "no data.version".into() }),
            Ok(None) => Err(VaultError::Status { method: "POST".into(), path: api, status: 404, errors: Vec::new() }),
            Err(VaultError::Status { status: 400, errors, .. })
                if cas.is_some() && errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                let current = match self.kv_metadata(path).await {
                    Ok(m) => m.map(|m| m.current_version),
                    Err(e) => {
                        debug!("vault: reading {path}'s metadata after a CAS conflict: {e}");
                        None
                    }
                };
                Err(VaultError::CasConflict { path: path.to_owned(), expected: cas, current })
            }
            Err(e) => Err(e),
        }
    }

    /// `LIST {mount}/metadata/{prefix}/{path}`: the keys below `path` (directories end in `/`);
    /// empty when there are none.
    pub async fn kv_list(&self, path: &str) -> Result<Vec<String>, VaultError> {
        let api = self.kv_api("metadata", path)?;
        let Some(body) = self.authed(Method::GET, &api, Some("list=true"), None).await? else {
            return Ok(Vec::new());
        };
        let keys = body["data"]["keys"]
            .as_array()
            .ok_or_else(|| VaultError::BadResponse { path: api.clone(), why: "no data.keys".into() })?;
        keys.iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| VaultError::BadResponse { path: api.clone(), why: "a key is not a string".into() })
            })
            .collect()
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

    // --- tokens ---

    /// The token to use now (after login or renewal as needed).
    async fn current_token(&self) -> Result<Arc<Secret>, VaultError> {
        let mut slot = self.token.lock().await;
        let now = Instant::now();
        let state = match slot.take() {
            None => self.fresh_login().await?,
            Some(state) if !state.due(now) => state,
            Some(state) => match self.refresh(state).await {
                Ok(state) => state,
                Err(e) => {
                    self.publish(None);
                    return Err(e);
                }
            },
        };
        let token = state.token.clone();
        self.install(&mut slot, state);
        Ok(token)
    }

    fn install(&self, slot: &mut Option<TokenState>, state: TokenState) {
        self.publish(state.expires_at());
        *slot = Some(state);
    }

    fn publish(&self, expires: Option<Instant>) {
        *self.expires.lock().unwrap_or_else(|p| p.into_inner()) = expires;
    }

    /// Renews a token that is 2/3 through its TTL, or replaces it. Keeps it (with a warning)
    /// while it is still valid and nothing better can be had.
    async fn refresh(&self, state: TokenState) -> Result<TokenState, VaultError> {
        if state.renewable {
            match self.renew(&state).await {
                Ok(renewed) if renewed.ttl >= state.full_ttl => {
                    debug!(ttl_s = renewed.ttl.as_secs(), "vault: token renewed");
                    return Ok(renewed);
                }
                Ok(renewed) => match self.auth {
                    // A renewal capped by the max TTL: a fresh token, while this one still works.
                    Auth::AppRole { .. } => {
                        debug!(ttl_s = renewed.ttl.as_secs(), "vault: the token reached its max TTL; logging in again");
                        return match self.fresh_login().await {
                            Ok(fresh) => Ok(fresh),
                            Err(e) => {
                                warn!("vault: logging in again failed ({e}); using the current token until it expires");
                                Ok(renewed)
                            }
                        };
                    }
                    Auth::TokenFile(ref path) => {
                        warn!(
                            file = %path.display(),
                            expires_in_s = renewed.ttl.as_secs(),
                            "vault: the token of the token file reached its max TTL; replace it before it expires"
                        );
                        return Ok(renewed);
                    }
                },
                Err(e) => warn!("vault: renewing the token failed ({e}); logging in again"),
            }
        }
        match self.fresh_login().await {
            Ok(fresh) => Ok(fresh),
            Err(e) if !state.expired(Instant::now()) => {
                warn!("vault: logging in again failed ({e}); using the current token until it expires");
                // Try again at the next request, not at once in a loop.
                Ok(TokenState { granted: Instant::now(), ttl: state.remaining().max(Duration::from_secs(1)), ..state })
            }
            Err(e) => Err(e),
        }
    }

    async fn renew(&self, state: &TokenState) -> Result<TokenState, VaultError> {
        let api = "auth/token/renew-self";
        let body = serde_json::to_vec(&serde_json::json!({ "increment": format!("{}s", state.full_ttl.as_secs()) }))
            .expect("a JSON object")
            .into();
        let sent = Instant::now();
        let resp = self.call_raw(Method::POST, api, None, Some(&state.token), Some(body)).await?;
        let auth: AuthBlock = parse_secretly(api, &resp, "auth")?;
        Ok(TokenState {
            token: state.token.clone(),
            granted: sent,
            ttl: bounded_ttl(auth.lease_duration),
            full_ttl: state.full_ttl,
            renewable: auth.renewable,
        })
    }

    /// A new token: AppRole login, or the token file read again and looked up.
    async fn fresh_login(&self) -> Result<TokenState, VaultError> {
        match &self.auth {
            Auth::AppRole { role_id_file, secret_id_file, wrapped } => {
                let role_id = read_credential(role_id_file)?;
                let secret_id = if *wrapped {
                    self.unwrapped_secret_id(secret_id_file).await?
                } else {
                    Arc::new(read_credential(secret_id_file)?)
                };
                let api = format!("auth/{}/login", escape_path(&self.auth_mount)?);
                let body = secret_body(&Login { role_id: role_id.expose(), secret_id: secret_id.expose() });
                let sent = Instant::now();
                let resp = match self.call_raw(Method::POST, &api, None, None, Some(body)).await {
                    Ok(r) => r,
                    Err(e) => {
                        let e = scrub_error(e, &[&role_id, &secret_id]);
                        if *wrapped && matches!(e, VaultError::Status { status: 400 | 403, .. }) {
                            // The unwrapped secret_id no longer works: read the file again next
                            // time (a new wrapping token may have been put there).
                            *self.unwrapped_secret_id.lock().await = None;
                        }
                        return Err(e);
                    }
                };
                let auth: AuthBlock = parse_secretly(&api, &resp, "auth")?;
                let ttl = bounded_ttl(auth.lease_duration);
                info!(auth_mount = %self.auth_mount, ttl_s = ttl.as_secs(), renewable = auth.renewable, "vault: logged in (AppRole)");
                Ok(TokenState {
                    token: Arc::new(auth.client_token),
                    granted: sent,
                    ttl,
                    full_ttl: ttl,
                    renewable: auth.renewable,
                })
            }
            Auth::TokenFile(path) => {
                let token = Arc::new(read_credential(path)?);
                let api = "auth/token/lookup-self";
                let sent = Instant::now();
                let resp = match self.call_raw(Method::GET, api, None, Some(&token), None).await {
                    Ok(resp) => resp,
                    Err(VaultError::Status { method, path: api, status: 403, mut errors }) => {
                        errors.push(format!("the token in {} is not valid (expired or revoked?)", path.display()));
                        return Err(VaultError::Status { method, path: api, status: 403, errors });
                    }
                    Err(e) => return Err(e),
                };
                let data: LookupData = parse_secretly(api, &resp, "data")?;
                // A token without expire_time never expires (ttl 0).
                let ttl = if data.expire_time.is_none() { Duration::ZERO } else { bounded_ttl(data.ttl.max(1)) };
                let full_ttl = bounded_ttl(data.creation_ttl.unwrap_or(data.ttl)).max(ttl);
                info!(file = %path.display(), ttl_s = ttl.as_secs(), renewable = data.renewable, "vault: using the token file");
                Ok(TokenState { token, granted: sent, ttl, full_ttl, renewable: data.renewable && !ttl.is_zero() })
            }
        }
    }

    /// The secret_id from a wrapped secret_id file: unwrapped at the first login, then kept in
    /// memory only. The wrapping token is looked up first: it must have been made by
    /// `auth/<auth_mount>/role/<role>/secret-id`, not by something else.
    async fn unwrapped_secret_id(&self, file: &Path) -> Result<Arc<Secret>, VaultError> {
        let mut cached = self.unwrapped_secret_id.lock().await;
        if let Some(secret_id) = cached.as_ref() {
            return Ok(secret_id.clone());
        }
        let wrapping = read_credential(file)?;
        let described = |e: &VaultError| {
            let text = e.to_string();
            format!("{}: {}", file.display(), scrub(text.strip_prefix("vault: ").unwrap_or(&text), &[&wrapping]))
        };
        let unwrap_err = |e: VaultError| VaultError::Unwrap(described(&e));
        let body = secret_body(&WrapLookup { token: wrapping.expose() });
        let lookup = self.call_raw(Method::POST, "sys/wrapping/lookup", None, None, Some(body)).await.map_err(|e| {
            VaultError::Unwrap(format!(
                "{} (a wrapping token unwraps once and expires: was it used or did it expire?)",
                described(&e)
            ))
        })?;
        let info: WrapInfo = parse_secretly("sys/wrapping/lookup", &lookup, "data").map_err(unwrap_err)?;
        let expected = format!("auth/{}/role/", self.auth_mount);
        if !(info.creation_path.starts_with(&expected) && info.creation_path.ends_with("/secret-id")) {
            return Err(VaultError::Unwrap(format!(
                "{}: the wrapping token was made by {:?}, not by {expected}<role>/secret-id; refusing it",
                file.display(),
                info.creation_path
            )));
        }
        let resp =
            self.call_raw(Method::POST, "sys/wrapping/unwrap", None, Some(&wrapping), None).await.map_err(|e| {
                VaultError::Unwrap(format!("{} (a wrapping token unwraps once: was it used before?)", described(&e)))
            })?;
        let data: UnwrappedSecretId = parse_secretly("sys/wrapping/unwrap", &resp, "data").map_err(unwrap_err)?;
        info!(file = %file.display(), "vault: unwrapped the secret_id (kept in memory only)");
        let secret_id = Arc::new(data.secret_id);
        *cached = Some(secret_id.clone());
        Ok(secret_id)
    }

    // --- requests ---

    /// An authenticated request; `None` on 404. A 403 with a token that no longer works (revoked,
    /// expired early) logs in again and retries once.
    async fn authed(
        &self,
        method: Method,
        api: &str,
        query: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Option<Value>, VaultError> {
        let token = self.current_token().await?;
        let result = self.call(method.clone(), api, query, Some(&token), body.clone()).await;
        let result = match result {
            Err(VaultError::Status { status: 403, .. }) if !self.token_works(&token).await => {
                warn!("vault: the token stopped working before it expired; logging in again");
                {
                    let mut slot = self.token.lock().await;
                    if slot.as_ref().is_some_and(|s| Arc::ptr_eq(&s.token, &token)) {
                        *slot = None;
                        self.publish(None);
                    }
                }
                let token = self.current_token().await?;
                self.call(method, api, query, Some(&token), body).await
            }
            other => other,
        };
        match result {
            Ok(body) => Ok(Some(body)),
            Err(VaultError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn token_works(&self, token: &Secret) -> bool {
        self.call_raw(Method::GET, "auth/token/lookup-self", None, Some(token), None).await.is_ok()
    }

    /// One request, its response as JSON; `Null` when empty.
    async fn call(
        &self,
        method: Method,
        api: &str,
        query: Option<&str>,
        token: Option<&Secret>,
        body: Option<Bytes>,
    ) -> Result<Value, VaultError> {
        let bytes = self.call_raw(method, api, query, token, body).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| VaultError::BadResponse { path: api.to_owned(), why: format!("not JSON ({e})") })
    }

    /// One request, its response body as sent (wiped when dropped: it may carry a secret); a
    /// status other than 2xx is [`VaultError::Status`] with vault's `errors`.
    async fn call_raw(
        &self,
        method: Method,
        api: &str,
        query: Option<&str>,
        token: Option<&Secret>,
        body: Option<Bytes>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (status, bytes) = self.send(method.clone(), api, query, token, body).await?;
        if !status.is_success() {
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut errors: Vec<String> = json["errors"]
                .as_array()
                .map(|a| a.iter().map(|e| one_line(&e.as_str().map_or_else(|| e.to_string(), str::to_owned))).collect())
                .unwrap_or_default();
            if let Some(t) = token {
                errors = errors.iter().map(|e| scrub(e, &[t])).collect();
            }
            return Err(VaultError::Status {
                method: method.to_string(),
                path: api.to_owned(),
                status: status.as_u16(),
                errors,
            });
        }
        Ok(bytes)
    }

    /// Sends `{base}/v1/{api}[?query]` and reads the whole response (bounded).
    async fn send(
        &self,
        method: Method,
        api: &str,
        query: Option<&str>,
        token: Option<&Secret>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), VaultError> {
        let url = match query {
            Some(q) => format!("{}/v1/{api}?{q}", self.base),
            None => format!("{}/v1/{api}", self.base),
        };
        let http_err = |e: reqwest::Error| VaultError::Http {
            method: method.to_string(),
            path: api.to_owned(),
            source_message: http_error_text(e),
        };
        let mut headers = HeaderMap::new();
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if let Some(ns) = &self.namespace {
            headers.insert("X-Vault-Namespace", ns.clone());
        }
        if let Some(token) = token {
            // In a buffer wiped when the request is dropped.
            let raw = Bytes::from_owner(Zeroizing::new(token.expose().as_bytes().to_vec()));
            let mut value = HeaderValue::from_maybe_shared(raw)
                .map_err(|_| VaultError::Config("a token holds characters that cannot be sent in a header".into()))?;
            value.set_sensitive(true);
            headers.insert("X-Vault-Token", value);
        }
        let mut request = self.http.request(method.clone(), &url).headers(headers);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let mut resp = request.send().await.map_err(http_err)?;
        let status = resp.status();
        if status.is_redirection() {
            // Not followed: another host (or too many hops).
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| l.split(['?', '#']).next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            return Err(VaultError::Status {
                method: method.to_string(),
                path: api.to_owned(),
                status: status.as_u16(),
                errors: vec![format!("redirected to {to:?}: not followed (only the same scheme, host and port are)")],
            });
        }
        // Sized from Content-Length (bounded), and grown by hand: a reallocation by `Vec`
        // would leave an unwiped copy of a token behind.
        let hint =
            resp.content_length().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(MAX_RESPONSE_BYTES));
        let mut bytes = Zeroizing::new(Vec::with_capacity(hint));
        while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
            let needed = bytes.len() + chunk.len();
            if needed > MAX_RESPONSE_BYTES {
                return Err(VaultError::BadResponse {
                    path: api.to_owned(),
                    why: format!("larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            if needed > bytes.capacity() {
                let mut bigger =
                    Zeroizing::new(Vec::with_capacity(needed.max(bytes.capacity() * 2).min(MAX_RESPONSE_BYTES)));
                bigger.extend_from_slice(&bytes);
                // The old buffer is wiped as it is dropped.
                bytes = bigger;
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes))
    }

    /// `{mount}/{kind}/{prefix}/{path}`, each segment escaped.
    fn kv_api(&self, kind: &str, path: &str) -> Result<String, VaultError> {
        kv_api_path(&self.mount, kind, &self.prefix, path)
    }
}

/// `{mount}/{kind}/{prefix}/{path}` with every segment percent-escaped. `path` is relative to
/// the prefix; surrounding `/` are ignored; empty, `.` and `..` segments are refused.
pub fn kv_api_path(mount: &str, kind: &str, prefix: &str, path: &str) -> Result<String, VaultError> {
    let mut out = escape_path(mount)?;
    out.push('/');
    out.push_str(kind);
    for part in [prefix, path] {
        let part = part.trim_matches('/');
        if !part.is_empty() {
            out.push('/');
            out.push_str(&escape_path(part)?);
        }
    }
    Ok(out)
}

/// Percent-escapes each `/`-separated segment (all but `A-Z a-z 0-9 - . _ ~`).
fn escape_path(path: &str) -> Result<String, VaultError> {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(VaultError::Config(format!("{path:?} has an empty, \".\" or \"..\" path segment")));
        }
        if i > 0 {
            out.push('/');
        }
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Ok(out)
}

/// The TLS configuration: `ca_file` as the only roots, else the system bundle (required only
/// when TLS is used: `need_roots`).
fn tls_config(ca_file: Option<&Path>, need_roots: bool) -> Result<rustls::ClientConfig, VaultError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    let bundle = match ca_file {
        Some(p) => Some(p.to_owned()),
        None => SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()),
    };
    match bundle {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|source| VaultError::Io { path: path.clone(), source })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| VaultError::Config(format!("{}: not a PEM certificate bundle ({e})", path.display())))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 && need_roots {
                return Err(VaultError::Config(format!("{}: holds no usable CA certificate", path.display())));
            }
        }
        None if need_roots => {
            return Err(VaultError::Config(format!(
                "no system CA bundle ({}); install ca-certificates or set vault.ca_file",
                SYSTEM_CA_BUNDLES[0]
            )));
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Reads a credential file: a regular file, mode 0600 or stricter, owned by root or by this
/// process's uid (checked on the open file). Its content, trimmed, is the secret.
pub fn read_credential(path: &Path) -> Result<Secret, VaultError> {
    let io_err = |source| VaultError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(VaultError::Config(format!("{}: is not a regular file", path.display())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::Permissions { path: path.to_owned(), mode });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(VaultError::Owner { path: path.to_owned(), uid: meta.uid(), expected: me });
    }
    if meta.len() > MAX_CREDENTIAL_BYTES {
        return Err(VaultError::Config(format!("{}: larger than {MAX_CREDENTIAL_BYTES} bytes", path.display())));
    }
    // Room for all of it up front: no reallocation leaves an unwiped copy behind.
    let mut text = Zeroizing::new(String::with_capacity(MAX_CREDENTIAL_BYTES as usize + 1));
    (&mut file).take(MAX_CREDENTIAL_BYTES).read_to_string(&mut text).map_err(io_err)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(VaultError::Config(format!("{}: is empty", path.display())));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(VaultError::Config(format!("{}: holds more than one line or word", path.display())));
    }
    Ok(Secret::new(secret))
}

/// reqwest's error and its causes, without the URL.
fn http_error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    strip_url_queries(&text)
}

/// Drops the query of anything that looks like a URL in `text`.
fn strip_url_queries(text: &str) -> String {
    text.split(' ')
        .map(|word| match (word.contains("://"), word.find('?')) {
            (true, Some(q)) => {
                let rest = &word[q..];
                let end = rest.find([')', ']', '"', '\'', '>']).unwrap_or(rest.len());
                format!("{}{}", &word[..q], &rest[end..])
            }
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Vault's multi-line errors ("1 error occurred:\n\t* permission denied\n\n") on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` with every secret replaced by `<redacted>`.
fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.expose().is_empty() {
            out = out.replace(s.expose(), "<redacted>");
        }
    }
    out
}

fn scrub_error(e: VaultError, secrets: &[&Secret]) -> VaultError {
    match e {
        VaultError::Status { method, path, status, errors } => {
            VaultError::Status { method, path, status, errors: errors.iter().map(|t| scrub(t, secrets)).collect() }
        }
        VaultError::Http { method, path, source_message } => {
            VaultError::Http { method, path, source_message: scrub(&source_message, secrets) }
        }
        VaultError::BadResponse { path, why } => VaultError::BadResponse { path, why: scrub(&why, secrets) },
        other => other,
    }
}

/// Deserializes `resp[field]`; errors carry no part of the response (it may hold a secret).
/// Straight from the response bytes: no copy of the other fields (`lookup-self` sends the token
/// back as `data.id`) is made.
fn parse_secretly<T: serde::de::DeserializeOwned>(api: &str, bytes: &[u8], field: &str) -> Result<T, VaultError> {
    #[derive(Deserialize)]
    struct Auth<U> {
        auth: U,
    }
    #[derive(Deserialize)]
    struct Data<U> {
        data: U,
    }
    let parsed = match field {
        "auth" => serde_json::from_slice::<Auth<T>>(bytes).map(|a| a.auth),
        _ => serde_json::from_slice::<Data<T>>(bytes).map(|d| d.data),
    };
    parsed.map_err(|e| VaultError::BadResponse { path: api.to_owned(), why: format!("{field}: {}", e.classify_text()) })
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    /// The kind of error only: serde's messages may quote the offending value.
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Data => "missing or mistyped fields",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            serde_json::error::Category::Io => "unreadable",
        }
    }
}

/// A JSON request body holding a secret, in a buffer wiped when the HTTP stack is done with it.
fn secret_body<T: serde::Serialize>(value: &T) -> Bytes {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *buf, value).expect("a JSON object");
    Bytes::from_owner(buf)
}

#[derive(serde::Serialize)]
struct Login<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(serde::Serialize)]
struct WrapLookup<'a> {
    token: &'a str,
}

#[derive(Deserialize)]
struct AuthBlock {
    #[serde(deserialize_with = "secret_field")]
    client_token: Secret,
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupData {
    ttl: u64,
    #[serde(default)]
    creation_ttl: Option<u64>,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    expire_time: Option<String>,
}

#[derive(Deserialize)]
struct WrapInfo {
    creation_path: String,
}

#[derive(Deserialize)]
struct UnwrappedSecretId {
    #[serde(deserialize_with = "secret_field")]
    secret_id: Secret,
}

fn secret_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(String::deserialize(d)?))
}

impl TokenState {
    fn remaining(&self) -> Duration {
        self.expires_at().map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn config(extra: &str) -> VaultConfig {
        crate::config::Config::parse(&format!("[vault]\n{extra}")).unwrap().vault.unwrap()
    }

    #[test]
    fn vault_secret_is_redacted() {
        let s = Secret::new("hvs.s3cr3t-token");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
        assert_eq!(s.expose(), "hvs.s3cr3t-token");
        assert_eq!(scrub("bad token hvs.s3cr3t-token here", &[&s]), "bad token <redacted> here");
    }

    #[test]
    fn vault_paths_are_built_and_escaped() {
        assert_eq!(
            kv_api_path("secret", "data", "fence", "identities/ci-runner").unwrap(),
            "secret/data/fence/identities/ci-runner"
        );
        assert_eq!(kv_api_path("secret", "metadata", "fence", "").unwrap(), "secret/metadata/fence");
        assert_eq!(
            kv_api_path("secret", "metadata", "fence", "identities/").unwrap(),
            "secret/metadata/fence/identities"
        );
        assert_eq!(kv_api_path("kv/team", "data", "", "index").unwrap(), "kv/team/data/index");
        assert_eq!(
            kv_api_path("secret", "data", "fence", "status/web 1?x=y#z%").unwrap(),
            "secret/data/fence/status/web%201%3Fx%3Dy%23z%25"
        );
        assert_eq!(kv_api_path("secret", "data", "fence", "é").unwrap(), "secret/data/fence/%C3%A9");
        for bad in ["a//b", "a/../b", "./a", "a/.", ".."] {
            let e = kv_api_path("secret", "data", "fence", bad).unwrap_err();
            assert!(matches!(e, VaultError::Config(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn vault_url_queries_are_stripped() {
        assert_eq!(
            strip_url_queries("error for url (http://v:8200/v1/x?version=2): refused"),
            "error for url (http://v:8200/v1/x): refused"
        );
        assert_eq!(strip_url_queries("plain text? yes"), "plain text? yes");
    }

    #[test]
    fn vault_credential_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("fence-vault-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret-id");
        std::fs::write(&file, "s3cr3t-id\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credential(&file).unwrap().expose(), "s3cr3t-id");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_credential(&file).unwrap().expose(), "s3cr3t-id");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_credential(&file).unwrap_err();
            assert!(matches!(e, VaultError::Permissions { mode: m, .. } if m == mode), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&file.display().to_string()) && text.contains(&format!("{mode:04o}")), "{text}");
            assert!(!text.contains("s3cr3t") && !format!("{e:?}").contains("s3cr3t"), "{text}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, "\n").unwrap();
        assert!(read_credential(&file).unwrap_err().to_string().ends_with("is empty"));
        std::fs::write(&file, "two\nlines\n").unwrap();
        assert!(!read_credential(&file).unwrap_err().to_string().contains("two"));
        let e = read_credential(&dir.join("missing")).unwrap_err();
        assert!(matches!(e, VaultError::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vault_client_new_checks_config_and_warns_nothing_secret() {
        let c = VaultClient::new(&config(
            "address = \"http://127.0.0.1:1\"\ninsecure = true\ntoken_file = \"/nonexistent\"\n",
        ))
        .unwrap();
        assert_eq!(c.token_expires_in(), None);
        assert_eq!(c.kv_api("data", "index").unwrap(), "secret/data/fence/index");
        let mut bad = config("address = \"https://v\"\ntoken_file = \"/t\"\n");
        bad.address = "http://v".into();
        assert!(matches!(VaultClient::new(&bad), Err(VaultError::Config(m)) if m.starts_with("vault.address: ")));
        let missing_ca = config("address = \"https://v\"\ntoken_file = \"/t\"\nca_file = \"/nonexistent/ca.pem\"\n");
        assert!(matches!(VaultClient::new(&missing_ca), Err(VaultError::Io { .. })));
    }

    #[test]
    fn vault_error_texts() {
        let e = VaultError::CasConflict { path: "index".into(), expected: Some(3), current: Some(5) };
        assert_eq!(
            e.to_string(),
            "vault: index: check-and-set conflict: written expecting version 3, the current version is 5"
        );
        let e = VaultError::Status {
            method: "GET".into(),
            path: "sys/health".into(),
            status: 429,
            errors: vec!["standby".into()],
        };
        assert_eq!(e.to_string(), "vault: GET sys/health: HTTP 429: standby");
        let e = VaultError::Permissions { path: "/etc/fence/s".into(), mode: 0o644 };
        assert_eq!(
            e.to_string(),
            "vault: /etc/fence/s: mode 0644 lets group or others read or write it; refusing it (chmod 600 /etc/fence/s)"
        );
    }
}
