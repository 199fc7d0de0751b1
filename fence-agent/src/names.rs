//! The naming rules, in one place: every part of the agent that accepts one of these names
//! (policy files, the agent's configuration, the vault layout and its assignments) checks it
//! here, so that a name one part accepts is never refused by another.
//!
//! | rule | used for | allowed |
//! |---|---|---|
//! | [`check_name`] | identity names, assignment rule names, egress rule names; the vault path `identities/<name>` | `[a-z0-9][a-z0-9._-]*`, at most 63 characters |
//! | [`check_host_name`] | `vault.hostname`, the kernel's host name, the vault path `status/<host>` | `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 253 characters |
//! | [`check_host_pattern`] | the `hosts` globs of assignment rules | host-name characters and the wildcards `*` and `?`, at most 253 characters |
//! | [`check_label_key`] | `vault.labels` keys, the `labels` of assignment rules | `[A-Za-z0-9._/-]+`, at most 63 characters |
//! | [`check_label_value`] | `vault.labels` values | at most 256 bytes, no control characters |
//!
//! None of these names can be `.` or `..`, hold a `/` where it would be a path separator
//! (identity and host names are one path component in the vault), or hold a control
//! character. Each check returns why a name is refused, for the caller to put after the field.

/// Longest identity (and rule) name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest host name (DNS) and host-name glob.
pub const MAX_HOST_LEN: usize = 253;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// An identity name (also a rule name): `[a-z0-9][a-z0-9._-]*`, at most 63 characters. Being
/// one path component, it is also the last part of the vault path `identities/<name>`.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 63 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("must start with a lowercase letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        return Err("only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A host name, as assignments match it and as the vault path `status/<host>` holds it:
/// letters, digits, `.`, `_` and `-`, starting with a letter or a digit, at most 253
/// characters.
pub fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_HOST_LEN {
        return Err("longer than 253 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must start with a letter or a digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A host-name glob: host-name characters plus `*` (any run of characters) and `?` (one).
pub fn check_host_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() {
        return Err("must not be empty");
    }
    if pattern.len() > MAX_HOST_LEN {
        return Err("longer than 253 characters");
    }
    if !pattern.chars().all(|c| c.is_ascii_alphanumeric() || "._-*?".contains(c)) {
        return Err("only letters, digits, '.', '_', '-' and the wildcards '*' and '?' are allowed");
    }
    Ok(())
}

/// A label key (`env`, `team/x`): letters, digits, `.`, `_`, `-` and `/`, at most 63
/// characters.
pub fn check_label_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err("longer than 63 characters");
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err("only letters, digits, '.', '_', '-' and '/' are allowed");
    }
    Ok(())
}

/// A label value: any text of at most 256 bytes without control characters.
pub fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err("longer than 256 bytes");
    }
    if value.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    Ok(())
}

/// Whether `c` must not reach a terminal from text someone else wrote: control characters,
/// and the format characters that reorder or hide text (bidirectional overrides and isolates,
/// zero-width characters, the byte-order mark).
pub fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` with [`is_hidden_or_control`] characters replaced by `?`.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if is_hidden_or_control(c) { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names() {
        for ok in ["a", "ci-runner", "0x.y_z", &"a".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            (&"a".repeat(64), "longer than 63"),
            ("-x", "must start"),
            (".x", "must start"),
            ("_x", "must start"),
            ("A", "must start"),
            ("aB", "only lowercase"),
            ("a/b", "only lowercase"),
            ("x y", "only lowercase"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn host_names() {
        for ok in ["web-1.example.com", "WEB_1", "1", &"a".repeat(253)] {
            assert_eq!(check_host_name(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            (&"a".repeat(254), "longer than 253"),
            ("-web", "must start"),
            (".hidden", "must start"),
            ("..", "must start"),
            ("a/b", "only letters"),
            ("x y", "only letters"),
            ("web*", "only letters"),
        ] {
            let e = check_host_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn host_patterns() {
        for ok in ["web-*", "build-??", "api-1", "*"] {
            assert_eq!(check_host_pattern(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "web/*", "web[1-3]", "a b", &"a".repeat(254)] {
            assert!(check_host_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["env", "team/x", "A.b_c-d", &"k".repeat(63)] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "bad key", "é", &"k".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "prod", "a b", &"v".repeat(256)] {
            assert_eq!(check_label_value(ok), Ok(()), "{ok:?}");
        }
        assert!(check_label_value("a\nb").unwrap_err().contains("control"));
        assert!(check_label_value(&"v".repeat(257)).unwrap_err().contains("256"));
    }

    #[test]
    fn hidden_and_control_characters_never_reach_a_terminal() {
        assert_eq!(printable("ok \u{1b}[2J \u{202E}evil\u{200B}"), "ok ?[2J ?evil?");
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
    }
}
