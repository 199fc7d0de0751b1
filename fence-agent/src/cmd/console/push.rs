//! `policy push`: validate offline, sign, write each document with check-and-set, then sign
//! and write the index that names them.

use std::{collections::BTreeMap, process::ExitCode};

use anyhow::bail;
use jiff::Timestamp;

use super::{
    EXIT_CONFLICT, PushArgs, Remote, collect, console_verifier, current_index, document_paths, indexed, load_local,
    read_index, read_lock, read_remote, runtime, same, vault_config, write_lock,
};
use crate::vault::{
    client::{VaultClient, VaultError},
    layout::{ASSIGNMENTS, IDENTITIES_DIR, INDEX, Index, IndexEntry, SignedDocument},
    sign::{SigningKey, Verifier, next_serial},
};

/// Why push refuses to go on without `--rebuild-index`.
fn untrusted_index_help(why: &str) -> String {
    format!(
        "the index in the vault cannot be trusted ({why}). Agents keep the policy they have. If the vault was tampered \
         with, find out how first; then `policy push --rebuild-index` signs a new index naming the latest version of \
         each document that verifies (review them with `policy pull` and `policy diff` before)"
    )
}

/// Exit status of `push` when the vault's index cannot be trusted.
pub const EXIT_UNTRUSTED: u8 = 4;

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(&args.vault)?;
    let locals = match load_local(&args.paths)? {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("fence-agent policy push: nothing written: {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let key = match (&args.key, args.unsigned) {
        (Some(k), _) => Some(SigningKey::load(k)?),
        (None, true) => {
            eprintln!("fence-agent policy push: writing UNSIGNED documents (agents with signing_keys refuse them)");
            None
        }
        (None, false) => bail!("--key is required (or --unsigned)"),
    };
    let verifier = console_verifier(&cfg, key.as_ref());
    let (_, _, lock_path) = collect(&args.paths)?;
    let lock = read_lock(lock_path.as_deref())?;
    let client = VaultClient::new(&cfg)?;
    let result: anyhow::Result<ExitCode> = runtime()?.block_on(async {
        client.login().await?;
        // What agents enforce now. Without a trusted index (or with none while documents
        // exist) the push stops unless told to rebuild it.
        let trusted = match current_index(&client, &verifier).await? {
            Ok(Some(t)) => Some(t),
            Ok(None) if args.rebuild_index || !has_documents(&client).await? => None,
            Ok(None) => untrusted("documents exist but there is no index")?,
            Err(why) if args.rebuild_index => {
                eprintln!("fence-agent policy push: the index does not verify ({why}); rebuilding it (--rebuild-index)");
                None
            }
            Err(why) => untrusted(&why)?,
        };
        // Pass 1: what is in the vault now, and check-and-set preconditions. A document is
        // unchanged only if the index names it and it verifies; the previous serial is taken
        // only from verified copies.
        let mut plans = Vec::new();
        let mut conflicts = Vec::new();
        let mut entries = BTreeMap::new();
        for local in &locals {
            let latest = read_remote(&client, &verifier, &local.path, None).await?;
            let current = latest.as_ref().map_or(0, |r| r.version);
            let named = indexed(&client, &verifier, trusted.as_ref(), &local.path, latest.as_ref()).await?;
            if let Some((doc, entry)) = &named
                && same(local, doc)
            {
                println!("{}: unchanged (version {})", local.path, entry.version);
                entries.insert(local.path.clone(), entry.clone());
                continue;
            }
            let expected = lock.get(&local.path).copied().unwrap_or(current);
            if current != expected {
                conflicts.push(format!(
                    "{}: changed in the vault since it was pulled (version {current} now, {expected} pulled); pull, review, push again",
                    local.path
                ));
                continue;
            }
            if let Some(Remote { doc: Err(why), .. }) = &latest {
                eprintln!("fence-agent policy push: {}: the vault's copy does not verify ({why}); replacing it", local.path);
            }
            let latest_serial = latest.as_ref().and_then(|r| r.doc.as_ref().ok()).map(|d| d.serial);
            let previous = named.map(|(d, _)| d.serial).max(latest_serial);
            plans.push((local, expected, previous));
        }
        if !conflicts.is_empty() {
            for c in &conflicts {
                eprintln!("fence-agent policy push: conflict: {c}");
            }
            eprintln!("fence-agent policy push: nothing written");
            return Ok(ExitCode::from(EXIT_CONFLICT));
        }
        // Pass 2: write, each with check-and-set.
        let mut written = 0;
        for (local, expected, previous_serial) in plans {
            let serial = next_serial(previous_serial);
            let doc = sign_or_not(key.as_ref(), &local.path, serial, &local.text);
            match client.kv_write(&local.path, &doc.to_kv(), Some(expected)).await {
                Ok(version) => {
                    println!("{}: written, version {expected} -> {version} (serial {serial})", local.path);
                    entries.insert(local.path.clone(), IndexEntry::of(&doc, version));
                    written += 1;
                }
                Err(VaultError::CasConflict { path, expected, current }) => {
                    // The index is not updated: agents keep the previous, consistent set.
                    eprintln!(
                        "fence-agent policy push: conflict: {path}: changed in the vault while pushing (expected version {}, now {}); not overwritten; \
                         the documents written before it are not in the index, so agents keep the previous set; pull, review, push again",
                        expected.unwrap_or(0),
                        current.map_or("unknown".to_owned(), |c| c.to_string())
                    );
                    return Ok(ExitCode::from(EXIT_CONFLICT));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Err(conflict) = write_index(&client, &verifier, key.as_ref(), &entries, args.rebuild_index).await? {
            eprintln!("fence-agent policy push: conflict: {conflict}");
            return Ok(ExitCode::from(EXIT_CONFLICT));
        }
        if let Some(lock_path) = &lock_path {
            let mut versions = lock.clone();
            versions.extend(entries.iter().map(|(p, e)| (p.clone(), e.version)));
            write_lock(lock_path, &versions)?;
        }
        if written == 0 {
            println!("no document changed: the index was signed again");
        }
        Ok(ExitCode::SUCCESS)
    });
    match result {
        Err(e) if e.downcast_ref::<Untrusted>().is_some() => {
            eprintln!("fence-agent policy push: {e}");
            Ok(ExitCode::from(EXIT_UNTRUSTED))
        }
        r => r,
    }
}

/// Reports an index that cannot be trusted; the caller exits with [`EXIT_UNTRUSTED`].
fn untrusted<T>(why: &str) -> anyhow::Result<T> {
    Err(anyhow::Error::new(Untrusted(untrusted_index_help(why))))
}

/// An index push cannot build on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(String);

/// Whether fence's prefix holds any document (identities or assignments).
async fn has_documents(client: &VaultClient) -> anyhow::Result<bool> {
    Ok(!client.kv_list(IDENTITIES_DIR).await?.is_empty() || client.kv_metadata(ASSIGNMENTS).await?.is_some())
}

fn sign_or_not(key: Option<&SigningKey>, path: &str, serial: u64, text: &str) -> SignedDocument {
    match key {
        Some(k) => k.sign(path, serial, text),
        None => SignedDocument { document: text.to_owned(), serial, key_id: String::new(), signature: String::new() },
    }
}

/// An index made from the documents themselves (`--rebuild-index`): the latest version of
/// each that verifies.
async fn rebuild_index(client: &VaultClient, verifier: &Verifier) -> anyhow::Result<Index> {
    let mut index = Index::default();
    for path in document_paths(client).await? {
        match read_remote(client, verifier, &path, None).await? {
            Some(Remote { version, doc: Ok(doc) }) => {
                println!("{path}: version {version} (serial {}) named by the rebuilt index", doc.serial);
                index.set(&path, IndexEntry::of(&doc, version));
            }
            Some(Remote { doc: Err(why), .. }) => {
                eprintln!("fence-agent policy push: {path}: left out of the rebuilt index: {why}");
            }
            None => {}
        }
    }
    Ok(index)
}

/// Signs a new index: the one in the vault with `entries` merged in (or, with `rebuild`, one
/// made from the documents when the vault's does not verify), a higher serial and the time of
/// issue; written with check-and-set, retried when another push got there first. `Ok(Err)`:
/// that other push wrote a newer document at one of these paths (a conflict).
async fn write_index(
    client: &VaultClient,
    verifier: &Verifier,
    key: Option<&SigningKey>,
    entries: &BTreeMap<String, IndexEntry>,
    rebuild: bool,
) -> anyhow::Result<Result<(), String>> {
    for _ in 0..8 {
        let current = client.kv_metadata(INDEX).await?.map(|m| m.current_version);
        let (mut index, previous) = match current {
            Some(v) => match read_index(client, verifier, v).await? {
                Ok(t) => (t.index, Some(t.serial)),
                Err(_) if rebuild => (rebuild_index(client, verifier).await?, None),
                Err(why) => return untrusted(&why),
            },
            None if rebuild => (rebuild_index(client, verifier).await?, None),
            None => (Index::default(), None),
        };
        for (path, entry) in entries {
            if let Some(theirs) = index.entry(path)
                && theirs.serial > entry.serial
            {
                return Ok(Err(format!(
                    "{path}: another push indexed a newer document (serial {}) meanwhile; the documents are written but not indexed; pull, review, push again",
                    theirs.serial
                )));
            }
            index.set(path, entry.clone());
        }
        index.schema = 1;
        index.issued_at = Timestamp::now().to_string();
        let serial = next_serial(previous);
        let doc = sign_or_not(key, INDEX, serial, &index.to_text());
        match client.kv_write(INDEX, &doc.to_kv(), Some(current.unwrap_or(0))).await {
            Ok(v) => {
                println!("{INDEX}: version {v} (serial {serial}, {} identities)", index.identities.len());
                return Ok(Ok(()));
            }
            Err(VaultError::CasConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!(
        "the index kept changing under this push; the documents are written but agents do not see them until a push updates the index: push again"
    )
}
