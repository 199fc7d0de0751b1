//! Authentication: AppRole login (unwrapping a wrapped secret_id once) or a token file; the
//! token renewed when 2/3 of its TTL has passed, replaced when renewal fails or it reaches its
//! max TTL.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{
    VaultClient, VaultError,
    kv::escape_path,
    secret::{Secret, parse_secretly, read_credential, scrub, scrub_error, secret_body, secret_field},
};
use crate::config::VaultAuth;

/// A TTL the vault grants is taken as at most this (ten years), so that no answer can
/// overflow the arithmetic on instants.
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

/// A TTL in seconds from the vault, bounded.
fn bounded_ttl(secs: u64) -> Duration {
    Duration::from_secs(secs.min(MAX_TTL_SECS))
}

/// The token in use and what the vault said of its lifetime.
pub(super) struct TokenState {
    pub(super) token: Arc<Secret>,
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

    fn remaining(&self) -> Duration {
        self.expires_at().map_or(Duration::ZERO, |at| at.saturating_duration_since(Instant::now()))
    }
}

impl VaultClient {
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

    /// The token to use now (after login or renewal as needed).
    pub(super) async fn current_token(&self) -> Result<Arc<Secret>, VaultError> {
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

    pub(super) fn publish(&self, expires: Option<Instant>) {
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
                    VaultAuth::AppRole { .. } => {
                        debug!(ttl_s = renewed.ttl.as_secs(), "vault: the token reached its max TTL; logging in again");
                        return match self.fresh_login().await {
                            Ok(fresh) => Ok(fresh),
                            Err(e) => {
                                warn!("vault: logging in again failed ({e}); using the current token until it expires");
                                Ok(renewed)
                            }
                        };
                    }
                    VaultAuth::TokenFile(ref path) => {
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
            VaultAuth::AppRole { role_id_file, secret_id_file, secret_id_wrapped: wrapped } => {
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
            VaultAuth::TokenFile(path) => {
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
