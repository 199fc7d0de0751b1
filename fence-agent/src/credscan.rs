//! Credentials in environment variables (ISO 27001 5.16 evidence: `fence-agent identities
//! --check-env`): which variables of a process look like secrets, by their name (known names,
//! `*_TOKEN`, `*_PASSWORD`...) or by the shape of their value (an AWS access key id, a GitHub or
//! GitLab token, a private key, a URL with a password...). Only names and the reason leave
//! this module: a value is looked at and dropped, never copied, printed or logged.

use std::{fs, path::Path};

use serde::Serialize;

/// Names that are credentials whatever their value.
const KNOWN: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "PGPASSWORD",
    "MYSQL_PWD",
    "NPM_TOKEN",
    "DOCKER_PASSWORD",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// Name endings that say "secret".
const SUFFIXES: &[&str] = &[
    "_TOKEN",
    "_PASSWORD",
    "_PASSWD",
    "_PWD",
    "_SECRET",
    "_SECRET_KEY",
    "_API_KEY",
    "_APIKEY",
    "_PRIVATE_KEY",
    "_ACCESS_KEY",
    "_CREDENTIALS",
];

/// Why a variable looks like a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// A name known to hold a credential.
    KnownName,
    /// A name ending like `_TOKEN`, `_PASSWORD`, `_API_KEY`.
    Name,
    /// A value in the shape of a known key format.
    ValueFormat(Format),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    AwsAccessKeyId,
    GithubToken,
    GitlabToken,
    SlackToken,
    VaultToken,
    PrivateKey,
    UrlWithPassword,
}

/// Why `name=value` looks like a credential, or `None`.
pub fn classify(name: &str, value: &[u8]) -> Option<Why> {
    let upper = name.to_ascii_uppercase();
    if KNOWN.contains(&upper.as_str()) {
        return Some(Why::KnownName);
    }
    if SUFFIXES.iter().any(|s| upper.ends_with(s)) && !value.is_empty() {
        return Some(Why::Name);
    }
    format_of(value).map(Why::ValueFormat)
}

fn format_of(value: &[u8]) -> Option<Format> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let alnum_upper = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if v.len() == 20 && (v.starts_with("AKIA") || v.starts_with("ASIA")) && alnum_upper(v) {
        return Some(Format::AwsAccessKeyId);
    }
    let prefixed = |prefixes: &[&str], min: usize| prefixes.iter().any(|p| v.starts_with(p)) && v.len() >= min;
    if prefixed(&["ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_"], 20) {
        return Some(Format::GithubToken);
    }
    if prefixed(&["glpat-"], 20) {
        return Some(Format::GitlabToken);
    }
    if prefixed(&["xoxb-", "xoxp-", "xoxa-", "xoxs-"], 15) {
        return Some(Format::SlackToken);
    }
    if prefixed(&["hvs.", "hvb.", "s."], 20) && !v.contains(' ') {
        return Some(Format::VaultToken);
    }
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return Some(Format::PrivateKey);
    }
    if url_with_password(v) {
        return Some(Format::UrlWithPassword);
    }
    None
}

/// `scheme://user:password@host...`
fn url_with_password(v: &str) -> bool {
    let Some((_, rest)) = v.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

/// One finding: a variable name and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub name: String,
    pub why: Why,
}

/// The credential-looking variables in `environ` (a `/proc/PID/environ` image).
pub fn scan(environ: &[u8]) -> Vec<Finding> {
    environ
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            let name = std::str::from_utf8(&entry[..eq]).ok()?;
            classify(name, &entry[eq + 1..]).map(|why| Finding { name: name.to_owned(), why })
        })
        .collect()
}

/// The findings in process `pid`'s environment; `Err` when it cannot be read.
pub fn scan_process(proc_root: &Path, pid: u32) -> std::io::Result<Vec<Finding>> {
    let environ = zeroize::Zeroizing::new(fs::read(proc_root.join(pid.to_string()).join("environ"))?);
    Ok(scan(&environ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats_are_found_and_values_never_kept() {
        let env =
            b"PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY=abc\0MY_SERVICE_TOKEN=t0k3n\0HOME=/root\0ID=AKIAABCDEFGHIJKLMNOP\0\
X=ghp_0123456789abcdefghijklmn\0DB=postgres://app:hunter2@db:5432/x\0EMPTY_PASSWORD=\0URL=https://example.com/a@b\0";
        let found = scan(env);
        let names: Vec<(&str, Why)> = found.iter().map(|f| (f.name.as_str(), f.why)).collect();
        assert_eq!(
            names,
            [
                ("AWS_SECRET_ACCESS_KEY", Why::KnownName),
                ("MY_SERVICE_TOKEN", Why::Name),
                ("ID", Why::ValueFormat(Format::AwsAccessKeyId)),
                ("X", Why::ValueFormat(Format::GithubToken)),
                ("DB", Why::ValueFormat(Format::UrlWithPassword)),
            ]
        );
        let json = serde_json::to_string(&found).unwrap();
        for secret in ["abc", "t0k3n", "hunter2", "ghp_0123"] {
            assert!(!json.contains(secret), "{json}");
        }
    }

    #[test]
    fn ordinary_variables_are_not_flagged() {
        for (n, v) in [("PATH", "/bin"), ("TOKENIZER", "x"), ("LANG", "C.UTF-8"), ("URL", "https://a.example/x?y=1")] {
            assert_eq!(classify(n, v.as_bytes()), None, "{n}");
        }
    }
}
