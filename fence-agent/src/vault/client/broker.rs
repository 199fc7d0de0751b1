//! What the credential broker asks the vault: a token per identity (made through a token
//! role, limited to that identity's vault policy), the identity's KV values and dynamic
//! credentials read with it, and the token's revocation, which revokes the leases made with it.
//! Values never pass through a `serde_json::Value`: they are parsed from the wiped response
//! buffer straight into [`Secret`]s.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    VaultClient, VaultError,
    kv::escape_path,
    secret::{Secret, parse_secretly, scrub_error, secret_field},
};

/// The longest duration taken from a vault answer (a year).
const MAX_SECONDS: u64 = 366 * 86_400;

/// A token the broker made for one identity.
#[derive(Debug)]
pub struct IdentityToken {
    pub token: Secret,
    /// Names the token in the vault's audit log without being it.
    pub accessor: String,
    /// How long it lives (its leases are revoked when it expires).
    pub ttl: Duration,
}

/// How long an identity token lives: `ttl`, renewable up to `max` when that is longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLife {
    pub ttl: Duration,
    pub max: Duration,
}

/// A dynamic credential: its fields (`username`, `password`...) and its lease.
#[derive(Debug)]
pub struct DynamicCredential {
    pub fields: BTreeMap<String, Secret>,
    pub lease_id: String,
    pub lease_ttl: Duration,
}

impl VaultClient {
    /// `POST auth/token/create/{role}`: a token carrying only `policy` (and the vault's
    /// `default`), living `ttl.ttl` (renewable up to `ttl.max` when that is longer), with the
    /// agent's token. A token that comes back with
    /// any other policy is revoked and refused: the role would let a mapping mistake reach
    /// another identity's secrets.
    pub async fn identity_token(
        &self,
        role: &str,
        policy: &str,
        ttl: TokenLife,
        display_name: &str,
    ) -> Result<IdentityToken, VaultError> {
        #[derive(Deserialize)]
        struct Auth {
            #[serde(deserialize_with = "secret_field")]
            client_token: Secret,
            accessor: String,
            lease_duration: u64,
            /// Required: a token of unknown policies is not accepted.
            policies: Vec<String>,
        }
        let api = format!("auth/token/create/{}", escape_path(role)?);
        let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
        let body = serde_json::json!({
            "policies": [policy],
            "ttl": secs(ttl.ttl),
            "explicit_max_ttl": secs(ttl.max.max(ttl.ttl)),
            "renewable": ttl.max > ttl.ttl,
            "display_name": display_name,
        });
        let agent = self.current_token().await?;
        let bytes = self
            .call_raw(Method::POST, &api, None, Some(&agent), Some(Bytes::from(body.to_string())))
            .await
            .map_err(|e| scrub_error(e, &[&agent]))?;
        let auth: Auth = parse_secretly(&api, &bytes, "auth")?;
        let token = IdentityToken {
            token: auth.client_token,
            accessor: auth.accessor,
            // Bounded: a hostile answer cannot make the agent overflow its clock arithmetic.
            ttl: Duration::from_secs(auth.lease_duration.min(MAX_SECONDS)),
        };
        if let Some(other) = auth.policies.iter().find(|p| *p != policy && *p != "default") {
            let _ = self.revoke_token(&token.token).await;
            return Err(VaultError::BadResponse {
                path: api,
                why: format!(
                    "the token role gave the token policy {other:?} too (only {policy:?} and \"default\" are accepted; \
                     set the role's allowed_policies_glob and token_no_default_policy=false, with no token_policies)"
                ),
            });
        }
        if token.ttl.is_zero() {
            let _ = self.revoke_token(&token.token).await;
            return Err(VaultError::BadResponse {
                path: api,
                why: "the token role made a token that never expires (set the role's token_explicit_max_ttl)".into(),
            });
        }
        Ok(token)
    }

    /// `GET {mount}/data/{path}` with `token`: the value of `key`; `None` when there is no
    /// such secret or key. A value that is not a string is given as its JSON text.
    pub async fn kv_value_with(
        &self,
        token: &Secret,
        mount: &str,
        path: &str,
        key: &str,
    ) -> Result<Option<Secret>, VaultError> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            data: Option<BTreeMap<String, &'a RawValue>>,
        }
        let api = format!("{}/data/{}", escape_path(mount)?, escape_path(path)?);
        let bytes = match self.call_raw(Method::GET, &api, None, Some(token), None).await {
            Ok(b) => b,
            Err(VaultError::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(scrub_error(e, &[token])),
        };
        // `data.data`, borrowed from the wiped buffer: only the wanted value is copied out.
        #[derive(Deserialize)]
        struct Outer<'a> {
            #[serde(borrow)]
            data: Data<'a>,
        }
        let outer: Outer<'_> = serde_json::from_slice(&bytes).map_err(|e| VaultError::BadResponse {
            path: api.clone(),
            why: format!("data.data: {}", if e.is_data() { "missing or mistyped fields" } else { "not JSON" }),
        })?;
        let Some(raw) = outer.data.data.as_ref().and_then(|d| d.get(key)) else { return Ok(None) };
        Ok(Some(raw_secret(raw)))
    }

    /// `GET {path}` (a secrets engine's credential endpoint) with `token`: a new credential,
    /// leased to that token.
    pub async fn dynamic_with(&self, token: &Secret, path: &str) -> Result<DynamicCredential, VaultError> {
        #[derive(Deserialize)]
        struct Leased<'a> {
            lease_id: String,
            lease_duration: u64,
            #[serde(borrow)]
            data: BTreeMap<String, &'a RawValue>,
        }
        let api = escape_path(path)?;
        let bytes =
            self.call_raw(Method::GET, &api, None, Some(token), None).await.map_err(|e| scrub_error(e, &[token]))?;
        let leased: Leased<'_> = serde_json::from_slice(&bytes).map_err(|e| VaultError::BadResponse {
            path: api.clone(),
            why: if e.is_data() { "no lease_id, lease_duration or data".into() } else { "not JSON".into() },
        })?;
        if leased.lease_id.is_empty() {
            return Err(VaultError::BadResponse { path: api, why: "no lease: not a dynamic secret".into() });
        }
        Ok(DynamicCredential {
            fields: leased.data.iter().map(|(k, v)| (k.clone(), raw_secret(v))).collect(),
            lease_id: leased.lease_id,
            lease_ttl: Duration::from_secs(leased.lease_duration.min(MAX_SECONDS)),
        })
    }

    /// Renews `token` and the lease `lease_id` made with it by `increment`: the time both
    /// live now (the vault caps it at the token's explicit max ttl and the role's max ttl).
    pub async fn renew_lease(
        &self,
        token: &Secret,
        lease_id: &str,
        increment: Duration,
    ) -> Result<Duration, VaultError> {
        #[derive(Deserialize)]
        struct Auth {
            lease_duration: u64,
        }
        #[derive(Deserialize)]
        struct Lease {
            lease_duration: u64,
        }
        let inc = format!("{}s", increment.as_secs().max(1));
        let api = "auth/token/renew-self";
        let body = Bytes::from(serde_json::json!({ "increment": inc }).to_string());
        let bytes = self
            .call_raw(Method::POST, api, None, Some(token), Some(body))
            .await
            .map_err(|e| scrub_error(e, &[token]))?;
        let token_left: Auth = parse_secretly(api, &bytes, "auth")?;
        let api = "sys/leases/renew";
        let body = Bytes::from(serde_json::json!({ "lease_id": lease_id, "increment": inc }).to_string());
        let bytes = self
            .call_raw(Method::PUT, api, None, Some(token), Some(body))
            .await
            .map_err(|e| scrub_error(e, &[token]))?;
        let lease: Lease = serde_json::from_slice(&bytes)
            .map_err(|_| VaultError::BadResponse { path: api.into(), why: "no lease_duration".into() })?;
        Ok(Duration::from_secs(lease.lease_duration.min(token_left.lease_duration).min(MAX_SECONDS)))
    }

    /// `POST auth/token/revoke-self` with `token`: the token and every lease made with it end.
    pub async fn revoke_token(&self, token: &Secret) -> Result<(), VaultError> {
        self.call_raw(Method::POST, "auth/token/revoke-self", None, Some(token), None)
            .await
            .map(drop)
            .map_err(|e| scrub_error(e, &[token]))
    }
}

/// A JSON value as a secret: a string's text, anything else its JSON.
fn raw_secret(raw: &RawValue) -> Secret {
    match serde_json::from_str::<Secret>(raw.get()) {
        Ok(s) => s,
        Err(_) => Secret::new(raw.get()),
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        secret_field(d)
    }
}
