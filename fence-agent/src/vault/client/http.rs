//! Requests: the token header, the namespace, bounded responses in buffers wiped when dropped,
//! vault's errors (scrubbed of the token), one retry after a token stopped working, and error
//! texts without URL queries.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::{
    Method, StatusCode,
    header::{HeaderMap, HeaderValue},
};
use serde_json::Value;
use tracing::warn;
use zeroize::Zeroizing;

use super::{
    VaultClient, VaultError,
    secret::{Secret, scrub},
};

/// A response larger than this is refused (fence's documents are far smaller; an index of
/// 10,000 identities is about 1.3 MB).
const MAX_RESPONSE_BYTES: usize = 8 << 20;

impl VaultClient {
    /// An authenticated request; `None` on 404. A 403 with a token that no longer works (revoked,
    /// expired early) logs in again and retries once.
    pub(super) async fn authed(
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
    pub(super) async fn call_raw(
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
    pub(super) async fn send(
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
}

/// reqwest's error and its causes, without the URL.
pub(super) fn http_error_text(e: reqwest::Error) -> String {
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
pub(super) fn strip_url_queries(text: &str) -> String {
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
