//! Signing and verifying the documents fence keeps in the vault (Ed25519). Pure: no network.
//!
//! The signed message binds the document to its path and serial, with a domain prefix:
//! `fence-policy-v1 NUL path NUL serial (decimal) NUL document`. A signature therefore does not
//! verify on another path (an identity's document copied to another identity), with another
//! serial, or for any other purpose the same key may sign. Agents keep the highest serial they
//! applied per path and refuse an older one ([`check_serial`]): a rollback to an old, validly
//! signed document is refused.
//!
//! Keys: the private key file holds the 32-byte seed in base64 on one line, mode 0600; the
//! public key is written `ed25519:<base64 of 32 bytes>`; its key id is the hex of the first
//! 8 bytes of its SHA-256. Several public keys may be configured (rotation).

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    str::FromStr,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use super::layout::SignedDocument;

/// Domain separation: the first bytes of every signed message.
const DOMAIN: &[u8] = b"fence-policy-v1\0";
/// Prefix of a written public key.
const PUBLIC_PREFIX: &str = "ed25519:";
/// A key file is one line; anything much longer is not one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

#[derive(Debug, Error)]
pub enum SignError {
    #[error("reading random bytes from the kernel failed: {0}")]
    Random(getrandom::Error),
    #[error("{}: {why}", path.display())]
    KeyFile { path: PathBuf, why: String },
    #[error(
        "{}: key file mode is {mode:04o}, readable by group or others; refusing to use it \
         (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("{}: already exists; refusing to overwrite a key (remove it, or choose another path)", path.display())]
    KeyExists { path: PathBuf },
    #[error("{value:?} is not a public key (expected ed25519:<base64 of 32 bytes>): {why}")]
    InvalidPublicKey { value: String, why: String },
    #[error("{path}: the document is not signed, and signing keys are configured")]
    Unsigned { path: String },
    #[error("{path}: signed with key {key_id}, which is not one of the configured signing keys")]
    UnknownKey { path: String, key_id: String },
    #[error(
        "{path}: the signature does not verify (the document, its serial or its path changed after \
         signing, or another key signed it)"
    )]
    BadSignature { path: String },
    #[error("{path}: serial {serial} is older than serial {highest}, already applied; refusing a rollback")]
    Rollback { path: String, serial: u64, highest: u64 },
}

/// The message a signature covers.
fn message(path: &str, serial: u64, document: &str) -> Vec<u8> {
    let serial = serial.to_string();
    let mut m = Vec::with_capacity(DOMAIN.len() + path.len() + serial.len() + document.len() + 2);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(serial.as_bytes());
    m.push(0);
    m.extend_from_slice(document.as_bytes());
    m
}

/// A private signing key (the console's). Wiped from memory when dropped; `Debug` shows only
/// the key id.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.public().key_id()).finish()
    }
}

impl SigningKey {
    /// A new key from 32 bytes of the kernel's random number generator (`getrandom(2)`, which
    /// blocks only until the kernel's pool is initialised).
    pub fn generate() -> Result<SigningKey, SignError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut seed[..]).map_err(SignError::Random)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads a key file. Refuses a file that group or others may read or write.
    pub fn load(path: &Path) -> Result<SigningKey, SignError> {
        let err = |why: String| SignError::KeyFile { path: path.to_owned(), why };
        let file = File::open(path).map_err(|e| err(format!("cannot open the key file: {e}")))?;
        // The checks apply to the file that was opened, not to whatever the path names later.
        let meta = file.metadata().map_err(|e| err(format!("cannot read the key file's metadata: {e}")))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SignError::KeyFilePermissions { path: path.to_owned(), mode });
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(err(format!("{} bytes is too long for a key file", meta.len())));
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot read the key file: {e}")))?;
        let bytes = Zeroizing::new(
            BASE64.decode(text.trim()).map_err(|_| err("does not hold a base64 key (one line)".into()))?,
        );
        let seed: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| err(format!("holds {} bytes; an Ed25519 key is 32", bytes.len())))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(seed)))
    }

    /// Writes the key to a new file, mode 0600. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), SignError> {
        let err = |why: String| SignError::KeyFile { path: path.to_owned(), why };
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                SignError::KeyExists { path: path.to_owned() }
            } else {
                err(format!("cannot create the key file: {e}"))
            }
        })?;
        let mut line = Zeroizing::new(BASE64.encode(self.0.to_bytes()));
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| err(format!("cannot write the key file: {e}")))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs a message of another kind (base64 of the signature). `message` must start with
    /// its own domain prefix, never `fence-policy-v1`, so that it cannot pass as a document.
    pub fn sign_other(&self, message: &[u8]) -> String {
        debug_assert!(!message.starts_with(DOMAIN));
        BASE64.encode(self.0.sign(message).to_bytes())
    }

    /// Signs `document` for `path` (relative to the prefix, e.g. `identities/ci-runner`) at
    /// `serial`.
    pub fn sign(&self, path: &str, serial: u64, document: &str) -> SignedDocument {
        let signature = self.0.sign(&message(path, serial, document));
        SignedDocument {
            document: document.to_owned(),
            serial,
            key_id: self.public().key_id(),
            signature: BASE64.encode(signature.to_bytes()),
        }
    }
}

/// A public key, written `ed25519:<base64>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `ed25519:<base64 of 32 bytes>` (surrounding spaces are ignored). Refuses weak
    /// keys (small-order points).
    pub fn parse(s: &str) -> Result<PublicKey, SignError> {
        let invalid = |why: &str| SignError::InvalidPublicKey { value: s.to_owned(), why: why.to_owned() };
        let b64 = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(|| invalid("missing the `ed25519:` prefix"))?;
        let bytes = BASE64.decode(b64).map_err(|_| invalid("not base64"))?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| invalid("not 32 bytes"))?;
        PublicKey::from_bytes(&bytes).map_err(invalid)
    }

    /// The key of these 32 bytes (a compressed Edwards point); `Err(why)` for bytes that are
    /// not a point, or a weak key (small-order point).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, &'static str> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| "not a valid Ed25519 point")?;
        if key.is_weak() {
            return Err("a weak key (small-order point)");
        }
        Ok(PublicKey(key))
    }

    /// Whether `signature` (base64) is this key's over `message` (see [`SigningKey::sign_other`]).
    pub fn verifies_other(&self, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = BASE64.decode(signature) else { return false };
        let Ok(signature) = Signature::from_slice(&bytes) else { return false };
        !message.starts_with(DOMAIN) && self.0.verify_strict(message, &signature).is_ok()
    }

    /// Hex of the first 8 bytes of SHA-256 of the key's 32 bytes.
    pub fn key_id(&self) -> String {
        Sha256::digest(self.0.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self}, key_id {})", self.key_id())
    }
}

impl FromStr for PublicKey {
    type Err = SignError;
    fn from_str(s: &str) -> Result<PublicKey, SignError> {
        PublicKey::parse(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Verifies documents against the configured public keys.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: Vec<PublicKey>,
}

impl Verifier {
    pub fn new(keys: Vec<PublicKey>) -> Verifier {
        Verifier { keys }
    }

    /// Whether documents are verified: at least one key is configured.
    pub fn is_enforcing(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Verifies `doc` as the document at `path` (relative to the prefix). Without configured
    /// keys every document passes (the caller warns that documents are not verified).
    pub fn verify(&self, path: &str, doc: &SignedDocument) -> Result<(), SignError> {
        if !self.is_enforcing() {
            return Ok(());
        }
        if doc.signature.is_empty() || doc.key_id.is_empty() {
            return Err(SignError::Unsigned { path: path.to_owned() });
        }
        let Some(key) = self.keys.iter().find(|k| k.key_id() == doc.key_id) else {
            return Err(SignError::UnknownKey { path: path.to_owned(), key_id: doc.key_id.clone() });
        };
        let bad = || SignError::BadSignature { path: path.to_owned() };
        // A NUL in the path would make the message ambiguous; layout paths never hold one.
        if path.contains('\0') {
            return Err(bad());
        }
        let bytes = BASE64.decode(&doc.signature).map_err(|_| bad())?;
        let signature = Signature::from_slice(&bytes).map_err(|_| bad())?;
        key.0.verify_strict(&message(path, doc.serial, &doc.document), &signature).map_err(|_| bad())
    }
}

/// Refuses a document older than the one already applied at `path`. The same serial passes
/// (the same document fetched again).
pub fn check_serial(path: &str, serial: u64, highest_applied: Option<u64>) -> Result<(), SignError> {
    match highest_applied {
        Some(highest) if serial < highest => Err(SignError::Rollback { path: path.to_owned(), serial, highest }),
        _ => Ok(()),
    }
}

/// The serial for the next push of a document: greater than the previous one and at least
/// the current time in milliseconds, so that serials grow even when several consoles push.
pub fn next_serial(previous: Option<u64>) -> u64 {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match previous {
        Some(p) => now.max(p.saturating_add(1)),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    const PATH: &str = "identities/ci-runner";
    const DOC: &str = "schema: 1\nidentities:\n  - name: ci-runner\n";

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = SigningKey::generate().unwrap();
        let doc = key.sign(PATH, 42, DOC);
        assert_eq!(doc.key_id, key.public().key_id());
        assert_eq!(doc.key_id.len(), 16);
        let verifier = Verifier::new(vec![key.public()]);
        assert!(verifier.is_enforcing());
        verifier.verify(PATH, &doc).unwrap();
        // Through KV and back.
        verifier.verify(PATH, &SignedDocument::from_kv(&doc.to_kv()).unwrap()).unwrap();
    }

    #[test]
    fn changes_after_signing_are_refused() {
        let key = SigningKey::generate().unwrap();
        let verifier = Verifier::new(vec![key.public()]);
        let doc = key.sign(PATH, 42, DOC);
        let bad = |r: Result<(), SignError>| matches!(r, Err(SignError::BadSignature { .. }));

        let tampered = SignedDocument { document: DOC.replace("ci-runner", "ci-runnex"), ..doc.clone() };
        assert!(bad(verifier.verify(PATH, &tampered)));
        let reserialed = SignedDocument { serial: 43, ..doc.clone() };
        assert!(bad(verifier.verify(PATH, &reserialed)));
        assert!(bad(verifier.verify("identities/other", &doc)));
        assert!(bad(verifier.verify("assignments", &doc)));
        assert!(bad(verifier.verify("identities/ci-runner\0", &doc)));
        let garbage = SignedDocument { signature: "not base64!".into(), ..doc.clone() };
        assert!(bad(verifier.verify(PATH, &garbage)));
        let short = SignedDocument { signature: BASE64.encode([0u8; 10]), ..doc.clone() };
        assert!(bad(verifier.verify(PATH, &short)));
        // Signed by another key that claims the configured key's id.
        let other = SigningKey::generate().unwrap();
        let forged = SignedDocument { key_id: doc.key_id.clone(), ..other.sign(PATH, 42, DOC) };
        assert!(bad(verifier.verify(PATH, &forged)));
        let e = verifier.verify("identities/other", &doc).unwrap_err().to_string();
        assert!(e.starts_with("identities/other: the signature does not verify"), "{e}");
    }

    #[test]
    fn unsigned_and_unknown_keys_are_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let verifier = Verifier::new(vec![key.public()]);
        let unsigned =
            SignedDocument { document: DOC.into(), serial: 1, key_id: String::new(), signature: String::new() };
        assert!(matches!(verifier.verify(PATH, &unsigned), Err(SignError::Unsigned { path }) if path == PATH));
        let by_other = other.sign(PATH, 1, DOC);
        match verifier.verify(PATH, &by_other) {
            Err(SignError::UnknownKey { path, key_id }) => {
                assert_eq!(path, PATH);
                assert_eq!(key_id, other.public().key_id());
            }
            r => panic!("{r:?}"),
        }
        // Rotation: both keys configured, both verify.
        let both = Verifier::new(vec![key.public(), other.public()]);
        both.verify(PATH, &by_other).unwrap();
        both.verify(PATH, &key.sign(PATH, 1, DOC)).unwrap();
        // No keys: nothing is verified.
        let none = Verifier::new(Vec::new());
        assert!(!none.is_enforcing());
        none.verify(PATH, &unsigned).unwrap();
    }

    #[test]
    fn public_keys_parse_and_print() {
        let key = SigningKey::generate().unwrap();
        let text = key.public().to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(PublicKey::parse(&format!("  {text}\n")).unwrap(), key.public());
        assert_eq!(text.parse::<PublicKey>().unwrap().key_id(), key.public().key_id());
        let json = serde_json::to_string(&key.public()).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key.public());
        for bad in ["", "ed25519:", "rsa:AAAA", "ed25519:!!!", &format!("ed25519:{}", BASE64.encode([1u8; 31]))] {
            assert!(matches!(PublicKey::parse(bad), Err(SignError::InvalidPublicKey { .. })), "{bad:?}");
        }
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let e = PublicKey::parse(&format!("ed25519:{}", BASE64.encode(identity))).unwrap_err().to_string();
        assert!(e.contains("weak"), "{e}");
        assert_eq!(PublicKey::from_bytes(&identity), Err("a weak key (small-order point)"));
        assert_eq!(PublicKey::from_bytes(key.public().0.as_bytes()), Ok(key.public()));
        // Known vector: RFC 8032 test 1 (secret key 9d61b1...).
        let seed: [u8; 32] = (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"[i * 2..i * 2 + 2],
                    16,
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let rfc = SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed));
        assert_eq!(rfc.public().to_string(), "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
        assert!(format!("{rfc:?}").contains(&rfc.public().key_id()));
        assert!(!format!("{rfc:?}").contains("9d61"));
    }

    #[test]
    fn key_files_round_trip_and_are_not_overwritten() {
        let guard = tempdir();
        let dir = guard.path();
        let path = dir.join("signing.key");
        let key = SigningKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
        let other = SigningKey::generate().unwrap();
        assert!(matches!(other.save(&path), Err(SignError::KeyExists { .. })));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        let guard = tempdir();
        let dir = guard.path();
        let path = dir.join("signing.key");
        SigningKey::generate().unwrap().save(&path).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = SigningKey::load(&path).unwrap_err();
            assert!(matches!(e, SignError::KeyFilePermissions { mode: m, .. } if m == mode), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()) && text.contains(&format!("{mode:04o}")), "{text}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        SigningKey::load(&path).unwrap();

        let bad = dir.join("bad.key");
        fs::write(&bad, "not a key\n").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SigningKey::load(&bad), Err(SignError::KeyFile { .. })));
        fs::write(&bad, format!("{}\n", BASE64.encode([7u8; 16]))).unwrap();
        let e = SigningKey::load(&bad).unwrap_err().to_string();
        assert!(e.contains("holds 16 bytes"), "{e}");
        assert!(matches!(SigningKey::load(&dir.join("missing")), Err(SignError::KeyFile { .. })));
    }

    #[test]
    fn rollback_is_refused() {
        check_serial(PATH, 5, None).unwrap();
        check_serial(PATH, 5, Some(5)).unwrap();
        check_serial(PATH, 6, Some(5)).unwrap();
        match check_serial(PATH, 4, Some(5)) {
            Err(e @ SignError::Rollback { serial: 4, highest: 5, .. }) => {
                assert!(e.to_string().starts_with("identities/ci-runner: serial 4 is older"), "{e}");
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn serials_grow() {
        let now = next_serial(None);
        assert!(now > 1_700_000_000_000, "{now}");
        assert!(next_serial(Some(now)) > now);
        let future = now + 10_000_000;
        assert_eq!(next_serial(Some(future)), future + 1);
        assert_eq!(next_serial(Some(u64::MAX)), u64::MAX);
    }
}
