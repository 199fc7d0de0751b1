//! Path globs: `PathGlob::parse` of a fuzz-chosen pattern, and `component_matches` of
//! fuzz-chosen pattern/name pairs, checked against a plain dynamic-programming matcher (the
//! agent's matcher is a linear scan with one backtrack point; both must agree on every pair).
//! The input is UTF-8 text: the pattern, then the names, separated by NUL bytes (names never
//! hold one).
#![no_main]

use fence_agent::policy::glob::{PathGlob, component_matches, has_wildcard};
use libfuzzer_sys::fuzz_target;

/// `*` any run of bytes, `?` one byte, anything else itself. After `i` bytes of the pattern,
/// `row[j]` tells whether they match the first `j` bytes of the name. Two rows, reused: the
/// harness should not be what allocates.
fn reference(p: &[u8], n: &[u8], row: &mut Vec<bool>, next: &mut Vec<bool>) -> bool {
    row.clear();
    row.resize(n.len() + 1, false);
    row[0] = true;
    for &c in p {
        next.clear();
        next.resize(n.len() + 1, false);
        if c == b'*' {
            let mut any = false;
            for j in 0..=n.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=n.len() {
                next[j] = row[j - 1] && (c == b'?' || c == n[j - 1]);
            }
        }
        std::mem::swap(row, next);
    }
    row[n.len()]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let pattern = parts.next().unwrap_or_default();
    let names: Vec<&str> = parts.collect();
    let (mut row, mut next) = (Vec::new(), Vec::new());
    let mut expected = |p: &str, n: &str| reference(p.as_bytes(), n.as_bytes(), &mut row, &mut next);
    match PathGlob::parse(pattern) {
        Ok(glob) => {
            assert!(glob.as_str() == pattern);
            assert!(!glob.components().is_empty());
            for c in glob.components() {
                assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains("**"));
                let _ = has_wildcard(c);
                for name in &names {
                    assert_eq!(component_matches(c, name), expected(c, name), "{c:?} against {name:?}");
                }
            }
        }
        Err(e) => drop(e.to_string()),
    }
    // Components as the matcher sees them anywhere (host-name globs, unparsed patterns).
    for name in &names {
        assert_eq!(component_matches(pattern, name), expected(pattern, name), "{pattern:?} against {name:?}");
    }
});
