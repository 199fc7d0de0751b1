//! The console side of the central vault, in the agent's binary: `policy push`, `policy
//! diff`, `policy pull`, and `status --hosts`.
//!
//! `push` validates every document offline (all errors listed, nothing written if any), signs
//! each identity as its own document, and writes it with check-and-set against the version
//! the operator last pulled (`.fence-vault.lock` beside the files) or, without a lock, the
//! version read just before writing: a concurrent change is reported, never overwritten. It
//! then updates the `index` the agents poll.

pub mod grants;
mod push;
pub mod reports;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::Args;
use jiff::Timestamp;

use crate::{
    config::{Config, VaultConfig},
    policy::{
        load::{Format, parse_document},
        load_paths,
        model::PolicyDocument,
        validate,
    },
    vault::{
        client::VaultClient,
        layout::{
            ASSIGNMENTS, IDENTITIES_DIR, INDEX, Index, IndexEntry, STATUS_DIR, SignedDocument, check_identity_document,
            identity_path, parse_assignments,
        },
        sign::{PublicKey, SigningKey, Verifier},
    },
};

pub use self::push::{EXIT_UNTRUSTED, Untrusted, push};

/// The file beside pulled documents that records the versions they were pulled at.
pub const LOCK_FILE: &str = ".fence-vault.lock";
/// The assignments document's file name in a policy directory.
pub const ASSIGNMENTS_FILE: &str = "assignments.yaml";
/// Exit status of `push` when the vault changed since it was read (check-and-set).
pub const EXIT_CONFLICT: u8 = 3;

#[derive(Debug, Args)]
pub struct VaultArgs {
    /// Configuration with a [vault] table (address, token_file or AppRole, signing_keys).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The private key that signs the documents (see `policy keygen`).
    #[arg(long, value_name = "PATH", required_unless_present = "unsigned")]
    pub key: Option<PathBuf>,
    /// Write unsigned documents (only for agents without signing_keys; development).
    #[arg(long)]
    pub unsigned: bool,
    /// Sign a new index from the latest version of each document that verifies, when the
    /// vault's index does not verify or is missing (after finding out why).
    #[arg(long)]
    pub rebuild_index: bool,
    /// Policy files or directories; a file named assignments.yaml is the host assignments.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Policy files or directories, as for push.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Directory to write the documents to (created if missing; files in it are replaced).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Write documents without verifying them (no vault.signing_keys configured).
    #[arg(long)]
    pub unverified: bool,
}

/// One document to push: its vault path, its text, and what it is.
struct Local {
    path: String,
    text: String,
    parsed: Option<PolicyDocument>,
}

fn vault_config(args: &VaultArgs) -> anyhow::Result<VaultConfig> {
    let config = Config::load(args.config.as_deref())?;
    config.vault.context("the configuration has no [vault] table (address, auth, signing_keys)")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// Splits the given paths into identity policy files and the assignments file.
fn collect(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Option<PathBuf>, Option<PathBuf>)> {
    let mut policy = Vec::new();
    let mut assignments = None;
    let mut lock = None;
    for p in paths {
        let files: Vec<PathBuf> = if p.is_dir() {
            if p.join(LOCK_FILE).exists() {
                lock = Some(p.join(LOCK_FILE));
            }
            let mut v: Vec<PathBuf> = fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .filter(|f| f.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
                .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "toml" | "json")))
                .collect();
            v.sort();
            v
        } else {
            if let Some(dir) = p.parent()
                && dir.join(LOCK_FILE).exists()
            {
                lock = Some(dir.join(LOCK_FILE));
            }
            vec![p.clone()]
        };
        for f in files {
            if f.file_name().is_some_and(|n| n == ASSIGNMENTS_FILE || n == "assignments.yml") {
                if assignments.replace(f.clone()).is_some() {
                    bail!("more than one assignments file given ({})", f.display());
                }
            } else {
                policy.push(f);
            }
        }
    }
    Ok((policy, assignments, lock))
}

/// Reads and validates the local documents (offline: cgroups are the hosts' business).
fn load_local(paths: &[PathBuf]) -> anyhow::Result<Result<Vec<Local>, String>> {
    let (policy, assignments, _) = collect(paths)?;
    let mut out = Vec::new();
    if !policy.is_empty() {
        let docs = match load_paths(&policy) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = validate(&docs, None, Timestamp::now()) {
            return Ok(Err(e.to_string()));
        }
        for d in &docs {
            for identity in &d.document.identities {
                let single = PolicyDocument { schema: d.document.schema, identities: vec![identity.clone()] };
                let text = serde_saphyr::to_string(&single)
                    .map_err(|e| anyhow::anyhow!("writing identity {} as YAML: {e}", identity.name))?;
                // What agents will parse must be what was validated.
                let back = parse_document(&text, Format::Yaml).map_err(|e| {
                    anyhow::anyhow!("identity {}: the YAML written does not read back: {e}", identity.name)
                })?;
                if back != single {
                    bail!("identity {}: the YAML written does not read back the same", identity.name);
                }
                let path = identity_path(&identity.name)?;
                check_identity_document(&identity.name, &text)?;
                out.push(Local { path, text, parsed: Some(single) });
            }
        }
    }
    if let Some(a) = assignments {
        let text = fs::read_to_string(&a).with_context(|| format!("reading {}", a.display()))?;
        if let Err(e) = parse_assignments(&text) {
            return Ok(Err(format!("{}: {e}", a.display())));
        }
        out.push(Local { path: ASSIGNMENTS.to_owned(), text, parsed: None });
    }
    if out.is_empty() {
        bail!("no policy documents found in the given paths");
    }
    Ok(Ok(out))
}

/// Whether the vault's document says the same as the local one.
fn same(local: &Local, remote: &SignedDocument) -> bool {
    match &local.parsed {
        Some(doc) => parse_document(&remote.document, Format::Yaml).is_ok_and(|r| &r == doc),
        None => remote.document == local.text,
    }
}

fn read_lock(path: Option<&Path>) -> anyhow::Result<BTreeMap<String, u64>> {
    match path {
        Some(p) => {
            let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a lock file", p.display()))
        }
        None => Ok(BTreeMap::new()),
    }
}

fn write_lock(path: &Path, versions: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    fs::write(path, serde_json::to_string_pretty(versions)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// The verifier for what the console reads back: the configured `signing_keys` and, when
/// pushing, the key that signs. A document the vault holds counts only if it verifies.
fn console_verifier(cfg: &VaultConfig, key: Option<&SigningKey>) -> Verifier {
    let mut keys: Vec<PublicKey> = cfg.signing_keys.clone();
    if let Some(k) = key
        && !keys.contains(&k.public())
    {
        keys.push(k.public());
    }
    Verifier::new(keys)
}

/// A document as the vault holds it: its version, and its content if it verifies.
struct Remote {
    version: u64,
    doc: Result<SignedDocument, String>,
}

/// `path` at `version` (the latest when `None`), verified by its own signature.
async fn read_remote(
    client: &VaultClient,
    verifier: &Verifier,
    path: &str,
    version: Option<u64>,
) -> anyhow::Result<Option<Remote>> {
    let Some(secret) = client.kv_read(path, version).await? else { return Ok(None) };
    let doc = SignedDocument::from_kv(&secret.data)
        .map_err(|e| e.to_string())
        .and_then(|d| verifier.verify(path, &d).map(|()| d).map_err(|e| e.to_string()));
    Ok(Some(Remote { version: secret.version, doc }))
}

/// The index in the vault, verified: what agents enforce.
struct Trusted {
    index: Index,
    serial: u64,
}

/// The index at `version`: `Err(why)` when it does not verify or does not parse.
async fn read_index(
    client: &VaultClient,
    verifier: &Verifier,
    version: u64,
) -> anyhow::Result<Result<Trusted, String>> {
    Ok(match read_remote(client, verifier, INDEX, Some(version)).await? {
        None => Err("it is gone".to_owned()),
        Some(Remote { doc: Err(why), .. }) => Err(why),
        Some(Remote { doc: Ok(d), .. }) => {
            Index::parse(&d.document).map(|index| Trusted { index, serial: d.serial }).map_err(|e| e.to_string())
        }
    })
}

/// The current index: `Ok(None)` when the vault has none yet.
async fn current_index(client: &VaultClient, verifier: &Verifier) -> anyhow::Result<Result<Option<Trusted>, String>> {
    match client.kv_metadata(INDEX).await? {
        None => Ok(Ok(None)),
        Some(m) => Ok(read_index(client, verifier, m.current_version).await?.map(Some)),
    }
}

/// The document the index names at `path`, if it verifies and is that document. `latest` is
/// reused when it is the version named.
async fn indexed(
    client: &VaultClient,
    verifier: &Verifier,
    index: Option<&Trusted>,
    path: &str,
    latest: Option<&Remote>,
) -> anyhow::Result<Option<(SignedDocument, IndexEntry)>> {
    let Some(entry) = index.and_then(|t| t.index.entry(path)) else { return Ok(None) };
    let doc = match latest {
        Some(r) if r.version == entry.version => r.doc.clone().ok(),
        _ => read_remote(client, verifier, path, Some(entry.version)).await?.and_then(|r| r.doc.ok()),
    };
    Ok(doc.filter(|d| entry.names(d)).map(|d| (d, entry.clone())))
}

/// Every identity document's path, and the assignments'.
async fn document_paths(client: &VaultClient) -> anyhow::Result<Vec<String>> {
    let mut paths: Vec<String> = client
        .kv_list(IDENTITIES_DIR)
        .await?
        .into_iter()
        .filter(|n| !n.ends_with('/'))
        .map(|n| format!("{IDENTITIES_DIR}/{n}"))
        .collect();
    paths.push(ASSIGNMENTS.to_owned());
    Ok(paths)
}

pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(&args.vault)?;
    let locals = match load_local(&args.paths)? {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("fence-agent policy diff: {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let verifier = console_verifier(&cfg, None);
    let client = VaultClient::new(&cfg)?;
    runtime()?.block_on(async {
        client.login().await?;
        // Compared with what agents enforce: the documents the index names.
        let trusted = match current_index(&client, &verifier).await? {
            Ok(t) => t,
            Err(why) => {
                println!("! the index in the vault DOES NOT VERIFY ({why}): every document is shown as new");
                None
            }
        };
        let mut differs = false;
        for local in &locals {
            let latest = read_remote(&client, &verifier, &local.path, None).await?;
            let named = indexed(&client, &verifier, trusted.as_ref(), &local.path, latest.as_ref()).await?;
            let old = match (&named, &latest) {
                (Some((doc, entry)), _) if same(local, doc) => {
                    println!("= {} (version {}, unchanged)", local.path, entry.version);
                    continue;
                }
                (Some((doc, entry)), _) => {
                    println!("~ {} (version {} in the vault)", local.path, entry.version);
                    doc.document.clone()
                }
                (None, None) => {
                    println!("+ {} (new)", local.path);
                    String::new()
                }
                // Shown as wholly replaced: its text is not what agents enforce.
                (None, Some(r)) => {
                    let why = r.doc.as_ref().err().map_or("not named by the index", String::as_str);
                    println!("~ {} (version {} in the vault is NOT IN FORCE: {why})", local.path, r.version);
                    String::new()
                }
            };
            differs = true;
            let text_diff = similar::TextDiff::from_lines(&old, &local.text);
            print!("{}", text_diff.unified_diff().context_radius(3).header("vault", "local"));
        }
        let local_names: Vec<&str> = locals.iter().map(|l| l.path.as_str()).collect();
        for path in document_paths(&client).await? {
            if path != ASSIGNMENTS && !local_names.contains(&path.as_str()) {
                println!("  {path} (only in the vault; push leaves it)");
            }
        }
        Ok(ExitCode::from(u8::from(differs)))
    })
}

pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(&args.vault)?;
    let verifier = console_verifier(&cfg, None);
    if !verifier.is_enforcing() && !args.unverified {
        // A pulled document is what the next push signs: unverified text must not be laundered.
        bail!(
            "vault.signing_keys is empty, so pulled documents cannot be verified (and the next push would sign whatever the vault holds); configure the keys, or give --unverified"
        );
    }
    let client = VaultClient::new(&cfg)?;
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    runtime()?.block_on(async {
        client.login().await?;
        // What agents enforce: the documents the index names (a newer version that it does
        // not name, a replay or an interrupted push, is not pulled).
        let trusted = match current_index(&client, &verifier).await? {
            Ok(t) => t,
            Err(why) if args.unverified => {
                eprintln!("fence-agent policy pull: the index does not verify ({why}); pulling the latest versions (--unverified)");
                None
            }
            Err(why) => bail!("the index in the vault does not verify ({why}); nothing pulled"),
        };
        let mut versions = BTreeMap::new();
        let mut refused = 0;
        for path in document_paths(&client).await? {
            let latest = read_remote(&client, &verifier, &path, None).await?;
            let (doc, version) = match (&trusted, &latest) {
                (_, None) => continue,
                (Some(t), Some(_)) if t.index.entry(&path).is_none() => {
                    eprintln!("fence-agent policy pull: {path}: not in the index (never pushed whole?): not written");
                    refused += 1;
                    continue;
                }
                (Some(_), latest) => match indexed(&client, &verifier, trusted.as_ref(), &path, latest.as_ref()).await? {
                    Some((doc, entry)) => (doc, entry.version),
                    None => {
                        eprintln!("fence-agent policy pull: {path}: the version the index names does not verify: not written");
                        refused += 1;
                        continue;
                    }
                },
                (None, Some(Remote { version, doc })) => match doc {
                    Ok(d) => (d.clone(), *version),
                    Err(e) => {
                        eprintln!("fence-agent policy pull: {path}: not written: {e}");
                        refused += 1;
                        continue;
                    }
                },
            };
            let file = match path.strip_prefix(&format!("{IDENTITIES_DIR}/")) {
                Some(name) => args.dir.join(format!("{name}.yaml")),
                None => args.dir.join(ASSIGNMENTS_FILE),
            };
            fs::write(&file, &doc.document).with_context(|| format!("writing {}", file.display()))?;
            println!("{path}: version {version} -> {}", file.display());
            versions.insert(path, version);
        }
        write_lock(&args.dir.join(LOCK_FILE), &versions)?;
        Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// `status --hosts`: every host's status document.
pub fn hosts(args: &VaultArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = vault_config(args)?;
    let client = VaultClient::new(&cfg)?;
    runtime()?.block_on(async {
        client.login().await?;
        let mut all = Vec::new();
        // `host/` is the folder of a host's report (`report --hosts`).
        for name in client.kv_list(STATUS_DIR).await?.into_iter().filter(|n| !n.ends_with('/')) {
            if let Some(s) = client.kv_read(&format!("{STATUS_DIR}/{name}"), None).await? {
                all.push(s.data);
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            for s in &all {
                // Agents write these: no control characters reach the terminal.
                let f = |k: &str| printable(s[k].as_str().unwrap_or("-"));
                println!(
                    "{}  source={}  last_success={}  failures={}  error={}",
                    f("hostname"),
                    f("source"),
                    f("last_success"),
                    s["consecutive_failures"],
                    f("last_error")
                );
                if let Some(applied) = s["applied"].as_object() {
                    for (path, v) in applied {
                        println!("    {} v{v}", printable(path));
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `text` with control and hidden characters (terminal escapes, bidi overrides) replaced by `?`.
fn printable(text: &str) -> String {
    crate::names::printable(text)
}
