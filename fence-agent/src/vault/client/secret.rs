//! Secrets (tokens, secret_ids, role_ids) in memory, in credential files, in request bodies and
//! in what the server sends back: wiped when dropped, never printed, scrubbed from texts.

use std::{fmt, io::Read as _, os::unix::fs::MetadataExt as _, path::Path};

use bytes::Bytes;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::VaultError;

/// A credential file is a line; anything this long is not one.
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

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

/// `text` with every secret replaced by `<redacted>`.
pub(super) fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.expose().is_empty() {
            out = out.replace(s.expose(), "<redacted>");
        }
    }
    out
}

pub(super) fn scrub_error(e: VaultError, secrets: &[&Secret]) -> VaultError {
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
pub(super) fn parse_secretly<T: serde::de::DeserializeOwned>(
    api: &str,
    bytes: &[u8],
    field: &str,
) -> Result<T, VaultError> {
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
pub(super) fn secret_body<T: serde::Serialize>(value: &T) -> Bytes {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *buf, value).expect("a JSON object");
    Bytes::from_owner(buf)
}

pub(super) fn secret_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(String::deserialize(d)?))
}
