//! Path patterns used by the exec, file and unix sections and by the host's protected set.
//!
//! An absolute path whose components may use `*` (any run of characters) and `?` (one
//! character); a last component `**` means the directory and everything below it.

use std::fmt;

use super::PolicyErrorKind;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathGlob {
    text: String,
    components: Vec<String>,
    tree: bool,
}

impl PathGlob {
    pub fn parse(text: &str) -> Result<PathGlob, PolicyErrorKind> {
        let invalid =
            |why: &str| PolicyErrorKind::InvalidValue { what: "path", value: text.to_owned(), why: why.to_owned() };
        if !text.starts_with('/') {
            return Err(invalid("must be absolute"));
        }
        let mut components: Vec<String> = text.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        if components.iter().any(|c| c == "." || c == "..") {
            return Err(invalid("'.' and '..' are not allowed"));
        }
        let tree = components.last().is_some_and(|c| c == "**");
        if tree {
            components.pop();
        }
        if components.iter().any(|c| c.contains("**")) {
            return Err(invalid("'**' is only allowed as the last component (a whole directory)"));
        }
        if components.is_empty() {
            return Err(invalid("the root directory cannot be named"));
        }
        if text.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        Ok(PathGlob { text: text.to_owned(), components, tree })
    }

    /// The components before `/**` (if any).
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Ends in `/**`: the directory and everything below it.
    pub fn is_tree(&self) -> bool {
        self.tree
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether one path component matches a pattern component (`*`, `?`, literals).
///
/// Compares bytes: `*` matches any run of bytes (the empty one too) and `?` exactly one byte, so
/// a non-ASCII character (two to four bytes in UTF-8) takes as many `?`. There are no escapes or
/// character classes.
///
/// Linear scan with one backtrack point: on a mismatch, only the most recent `*` takes one more
/// byte of the name. An earlier `*` never needs to take more, because whatever it would take,
/// the later `*` can take instead. Worst case O(pattern × name), never exponential (this runs on
/// every re-resolution of a wildcard path, with names that are not ours).
pub fn component_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen (its index in `p`) and where in `n` the bytes it takes end.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    pi = sp + 1;
                    ni = sn + 1;
                }
                None => return false,
            },
        }
    }
    // The name is used up: what is left of the pattern must match the empty string.
    p[pi..].iter().all(|&c| c == b'*')
}

pub fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_globs_and_trees() {
        let g = PathGlob::parse("/home/*/.ssh/id_*").unwrap();
        assert_eq!(g.components(), ["home", "*", ".ssh", "id_*"]);
        assert!(!g.is_tree());
        let t = PathGlob::parse("/root/.aws/**").unwrap();
        assert_eq!(t.components(), ["root", ".aws"]);
        assert!(t.is_tree());
    }

    #[test]
    fn rejects_relative_dotdot_inner_doublestar_and_root() {
        for bad in ["etc/shadow", "/etc/../shadow", "/a/**/b", "/**", "/", "/a/b**"] {
            assert!(PathGlob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn component_matching() {
        assert!(component_matches("id_*", "id_rsa"));
        assert!(component_matches("id_*", "id_"));
        assert!(!component_matches("id_*", "known_hosts"));
        assert!(component_matches("*.conf", "admin.conf"));
        assert!(component_matches("?.env", "a.env"));
        assert!(!component_matches("?.env", ".env"));
        assert!(component_matches("shadow", "shadow"));
        assert!(!component_matches("shadow", "shadow-"));
    }

    /// The recursive matcher this module used before (exponential in the number of `*`): the
    /// reference the linear one must agree with.
    fn reference(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => reference(&p[1..], n) || (!n.is_empty() && reference(p, &n[1..])),
            (Some(b'?'), Some(_)) => reference(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => reference(&p[1..], &n[1..]),
            _ => false,
        }
    }

    /// Every string of length 0..=max over `alphabet`.
    fn all_strings(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    #[test]
    fn agrees_with_the_recursive_matcher_on_every_small_case() {
        let patterns = all_strings(&["a", "b", "*", "?"], 5);
        let names = all_strings(&["a", "b"], 5);
        for p in &patterns {
            for n in &names {
                assert_eq!(component_matches(p, n), reference(p.as_bytes(), n.as_bytes()), "{p:?} {n:?}");
            }
        }
        // Multi-byte characters, where `?` and `*` may stop inside a character.
        let patterns = all_strings(&["é", "*", "?", "a"], 4);
        let names = all_strings(&["é", "a", "\u{1F600}"], 3);
        for p in &patterns {
            for n in &names {
                assert_eq!(component_matches(p, n), reference(p.as_bytes(), n.as_bytes()), "{p:?} {n:?}");
            }
        }
    }

    #[test]
    fn many_stars() {
        let long = "a".repeat(200);
        assert!(!component_matches("a*a*a*a*a*a*a*a*b", &long));
        assert!(component_matches("a*a*a*a*a*a*a*a*b", &format!("{long}b")));
        assert!(component_matches("a*a*a*a*a*a*a*a*", &long));
        assert!(!component_matches("a*a*a*a*a*a*a*a*", "aaaaaaa"));
        assert!(component_matches("a*a*a*a*a*a*a*a*", "aaaaaaaa"));
        assert!(component_matches("**********", ""));
        assert!(component_matches("*a**b*", "xxaxxbxx"));
    }

    #[test]
    fn thirty_stars_against_sixty_letters() {
        // The recursive matcher tried every way to split 60 letters among 30 stars before
        // answering no (more than 10^17 of them); the linear one answers at once.
        let name = "a".repeat(60);
        let no = format!("{}b", "a*".repeat(30));
        assert!(!component_matches(&no, &name));
        let yes = format!("{}a", "*a".repeat(29));
        assert!(component_matches(&yes, &name));
        assert!(!component_matches(&format!("{}a", "*a".repeat(60)), &name));
        assert!(component_matches(&"*?".repeat(30), &name));
        assert!(!component_matches(&"*?".repeat(61), &name));
    }

    #[test]
    fn question_marks() {
        assert!(component_matches("???", "abc"));
        assert!(!component_matches("???", "ab"));
        assert!(!component_matches("???", "abcd"));
        assert!(component_matches("id_???", "id_rsa"));
        assert!(component_matches("?d_*", "id_ed25519"));
        assert!(component_matches("*.?", "a.b"));
        assert!(!component_matches("*.?", "a."));
        assert!(component_matches("?*?", "ab"));
        assert!(!component_matches("?*?", "a"));
        assert!(component_matches("a?c", "a?c"));
        assert!(component_matches("a?c", "abc"));
    }

    #[test]
    fn leading_and_trailing_stars() {
        assert!(component_matches("*", "anything"));
        assert!(component_matches("*rc", ".bashrc"));
        assert!(component_matches("*rc", "rc"));
        assert!(!component_matches("*rc", ".bashrc~"));
        assert!(component_matches(".bash*", ".bash_history"));
        assert!(!component_matches(".bash*", "bash_history"));
        assert!(component_matches("*key*", "key"));
        assert!(component_matches("*key*", "signing.key.bak"));
        assert!(!component_matches("*key*", "kez"));
        assert!(component_matches("*.tar.gz", "a.tar.tar.gz"));
        assert!(!component_matches("*.tar.gz", "a.tar.gz.1"));
    }

    #[test]
    fn empty_name_and_pattern() {
        assert!(component_matches("", ""));
        assert!(component_matches("*", ""));
        assert!(component_matches("**", ""));
        assert!(!component_matches("?", ""));
        assert!(!component_matches("a", ""));
        assert!(!component_matches("*a", ""));
        assert!(!component_matches("", "a"));
    }

    #[test]
    fn non_ascii_names() {
        assert!(component_matches("café", "café"));
        assert!(!component_matches("café", "cafe"));
        assert!(component_matches("*é", "café"));
        assert!(component_matches("caf*", "café"));
        assert!(component_matches("*\u{1F600}*", "a\u{1F600}b"));
        assert!(component_matches("ключ_*", "ключ_ssh"));
        assert!(!component_matches("ключ_*", "ключи"));
        // `?` is one byte: `é` is two in UTF-8, an emoji four.
        assert!(!component_matches("caf?", "café"));
        assert!(component_matches("caf??", "café"));
        assert!(component_matches("????", "\u{1F600}"));
        // What `to_string_lossy` makes of a name that is not UTF-8 (U+FFFD, three bytes).
        assert!(component_matches("id_*", "id_\u{FFFD}"));
    }
}
