//! KV v2: metadata, reads, check-and-set writes and lists below the configured mount and
//! prefix, every path segment escaped.

use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;
use tracing::debug;

use super::{VaultClient, VaultError};

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

impl VaultClient {
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

    /// `{mount}/{kind}/{prefix}/{path}`, each segment escaped.
    pub(super) fn kv_api(&self, kind: &str, path: &str) -> Result<String, VaultError> {
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
pub(super) fn escape_path(path: &str) -> Result<String, VaultError> {
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
