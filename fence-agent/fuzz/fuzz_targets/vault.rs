//! The vault's documents as an agent reads them, signed with a fixed test key, so that the
//! signature, serial and index checks run on attacker-chosen documents. The first byte picks
//! what the rest is:
//!
//! - `0`: a secret's KV data (JSON) for `SignedDocument::from_kv`, then its verification.
//! - `1`: an index's text for `Index::parse`.
//! - `2`: an assignments document (YAML) for `parse_assignments`, then matching hosts.
//! - `3`: a set of documents for `VaultSet::verify` (see [`set`]), then, as the agent does with a
//!   verified set, `prepare` and `policy::validate`.
//! - `4`: a last-known-good cache's set (JSON of a `VaultSet`), verified like a cache read back,
//!   with the test key trusted and with no keys configured.
#![no_main]

use std::collections::BTreeMap;

use fence_agent::{
    policy,
    vault::{
        layout::{ASSIGNMENTS, HostFacts, INDEX, Index, IndexEntry, SignedDocument, parse_assignments},
        sign::Verifier,
        sync::{Fetched, VaultSet},
    },
};
use fence_agent_fuzz::{intruder_key, now, test_key};
use libfuzzer_sys::fuzz_target;

fn verifier() -> Verifier {
    Verifier::new(vec![test_key().public()])
}

fn hosts() -> [HostFacts; 3] {
    [
        HostFacts { hostname: "web-1".into(), labels: BTreeMap::from([("env".into(), "prod".into())]) },
        HostFacts { hostname: "DB-7".into(), labels: BTreeMap::new() },
        HostFacts::default(),
    ]
}

/// A set written as sections. The first line: `open` for a verifier without keys (else the
/// test key is the only trusted one), and `floor PATH=SERIAL` pairs (the highest serials
/// already applied). Each section starts with a line `@@ PATH SERIAL VERSION HOW` and holds the
/// document's text up to the next section. HOW: `s` signed with the test key (default), `u`
/// unsigned, `p` signed for another path, `i` signed by a key the verifier does not know, `b`
/// the test key's id with a corrupted signature. The section at `index` with an empty text gets
/// an index the harness writes, naming every other section's document exactly; no `index`
/// section: the set has none.
fn set(text: &str) -> (VaultSet, Verifier, BTreeMap<String, u64>) {
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let mut verifier = verifier();
    let mut floors = BTreeMap::new();
    let mut words = head.split_whitespace();
    while let Some(w) = words.next() {
        match w {
            "open" => verifier = Verifier::default(),
            "floor" => {
                if let Some((path, serial)) = words.next().and_then(|p| p.split_once('='))
                    && let Ok(serial) = serial.parse()
                {
                    floors.insert(path.to_owned(), serial);
                }
            }
            _ => {}
        }
    }
    let mut set = VaultSet::default();
    let mut index: Option<(u64, u64, char, String)> = None;
    for section in body.split("@@ ").filter(|s| !s.is_empty()) {
        let (line, document) = section.split_once('\n').unwrap_or((section, ""));
        let mut f = line.split_whitespace();
        let path = f.next().unwrap_or_default().to_owned();
        let serial = f.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        let version = f.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        let how = f.next().and_then(|s| s.chars().next()).unwrap_or('s');
        if path == INDEX {
            index = Some((serial, version, how, document.to_owned()));
            continue;
        }
        let fetched = Fetched { doc: sign(&path, serial, document, how), path, version };
        if fetched.path == ASSIGNMENTS && set.assignments.is_none() {
            set.assignments = Some(fetched);
        } else {
            set.identities.push(fetched);
        }
    }
    set.identities.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some((serial, version, how, text)) = index {
        let text = if text.trim().is_empty() {
            let mut index = Index { schema: 1, issued_at: "2027-01-15T07:00:00Z".into(), ..Index::default() };
            for f in set.assignments.iter().chain(&set.identities) {
                index.set(&f.path, IndexEntry::of(&f.doc, f.version));
            }
            index.to_text()
        } else {
            text
        };
        set.index = Some(Fetched { path: INDEX.to_owned(), version, doc: sign(INDEX, serial, &text, how) });
    }
    (set, verifier, floors)
}

fn sign(path: &str, serial: u64, document: &str, how: char) -> SignedDocument {
    match how {
        'u' => {
            SignedDocument { document: document.to_owned(), serial, key_id: String::new(), signature: String::new() }
        }
        'p' => test_key().sign(&format!("{path}x"), serial, document),
        'i' => intruder_key().sign(path, serial, document),
        'b' => {
            let mut d = test_key().sign(path, serial, document);
            d.signature.replace_range(0..1, if d.signature.starts_with('A') { "B" } else { "A" });
            d
        }
        _ => test_key().sign(path, serial, document),
    }
}

/// What the agent does with a set: verify it; if it verifies, prepare it for this host and
/// validate the policy documents as one set.
fn verify_and_use(set: &VaultSet, verifier: &Verifier, floors: &BTreeMap<String, u64>) {
    match set.verify(verifier, floors) {
        Ok(()) => {
            let mut highest = floors.clone();
            set.raise(&mut highest);
            let _ = set.versions();
            for host in hosts() {
                match set.prepare(&host) {
                    Ok(prepared) => match policy::validate(&prepared.docs, None, now()) {
                        Ok(p) => drop(format!("{p:?}")),
                        Err(e) => drop(e.to_string()),
                    },
                    Err(e) => drop(e.to_string()),
                }
            }
        }
        Err(e) => drop(e.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode {
        b'0' => {
            let Ok(kv) = serde_json::from_str::<serde_json::Value>(text) else {
                return;
            };
            match SignedDocument::from_kv(&kv) {
                Ok(doc) => {
                    assert_eq!(SignedDocument::from_kv(&doc.to_kv()).as_ref(), Ok(&doc), "to_kv/from_kv changed it");
                    for path in [INDEX, ASSIGNMENTS, "identities/a", "a\0b"] {
                        if let Err(e) = verifier().verify(path, &doc) {
                            drop(e.to_string());
                        }
                    }
                }
                Err(e) => drop(e.to_string()),
            }
        }
        b'1' => match Index::parse(text) {
            Ok(index) => {
                assert_eq!(Index::parse(&index.to_text()).as_ref(), Ok(&index), "to_text/parse changed it");
                for path in [ASSIGNMENTS, "identities/a", "identities/", "identities", "other"] {
                    let _ = index.entry(path);
                }
            }
            Err(e) => drop(e.to_string()),
        },
        b'2' => match parse_assignments(text) {
            Ok(assignments) => {
                for host in hosts() {
                    drop(assignments.for_host(&host));
                }
            }
            Err(e) => drop(e.to_string()),
        },
        b'3' => {
            let (set, verifier, floors) = set(text);
            verify_and_use(&set, &verifier, &floors);
        }
        b'4' => {
            if let Ok(set) = serde_json::from_str::<VaultSet>(text) {
                verify_and_use(&set, &verifier(), &BTreeMap::new());
                verify_and_use(&set, &Verifier::default(), &BTreeMap::new());
            }
        }
        _ => {}
    }
});
