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
pub fn component_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
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
}
