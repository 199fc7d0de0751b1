//! `fence-agent policy check`: validate policy files without loading anything.
//! `fence-agent policy keygen`: create the key that signs policies kept in the vault.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use jiff::Timestamp;

use crate::{
    cgroup::Cgroups,
    compile::{IdAllocator, compile},
    kernel::port_rules_text,
    policy::{
        CgroupResolver, EgressRule, Identity, PolicyErrors, load_paths,
        net::{PortSpan, Ports},
        validate,
    },
    resolve::Resolved,
    vault::sign::SigningKey,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (all problems are listed; exit status 2 if any).
    Check(CheckArgs),
    /// Create a key that signs policies kept in the vault, and print its public key.
    ///
    /// Writes a new Ed25519 private key (32 random bytes from the kernel, base64 on one line)
    /// to --out with mode 0600, and refuses to overwrite an existing file. Prints, as lines to
    /// add to agent.toml, the public key agents verify documents with and its key id, which every
    /// document signed with the key carries. The private key stays with whoever pushes policies;
    /// agents need only the public key. Several public keys may be configured at once, to rotate.
    #[command(after_long_help = KEYGEN_HELP)]
    Keygen(KeygenArgs),
    /// Validate, sign and write policy documents to the vault, with check-and-set.
    ///
    /// Every document is validated first (offline, all errors listed; nothing is written if
    /// any). Each identity becomes its own signed document at identities/<name>; a file named
    /// assignments.yaml is the host assignments. Each write is a check-and-set against the
    /// version in .fence-vault.lock beside the files (written by `policy pull`) or, without
    /// one, the version read just before: a change made meanwhile by someone else is reported
    /// (exit status 3), never overwritten. Unchanged documents (whose vault copy verifies) are
    /// not rewritten. Then a new signed index, naming the exact documents, is written: the only
    /// thing agents poll (re-signed even when nothing changed, for vault.max_index_age).
    #[command(after_long_help = PUSH_HELP)]
    Push(crate::cmd::console::PushArgs),
    /// Show what `policy push` would change in the vault (exit status 1 if anything).
    #[command(after_long_help = DIFF_HELP)]
    Diff(crate::cmd::console::DiffArgs),
    /// Write a least-privilege policy for an identity from what it was seen to do.
    ///
    /// Reads the identity's would-deny events (audit mode) and denials from the event file,
    /// and prints the identity's policy (from --policy) with exactly that added, in mode
    /// enforce: addresses as /32 or /128 with the ports and protocol seen, names as asked,
    /// programs, protected files and unix sockets by full path. It never widens on its own (no
    /// wider CIDR, no wildcard). A risk list at the top must be read before applying:
    /// credential files, container and D-Bus sockets, cloud metadata, private and loopback
    /// networks, programs in writable or temporary directories, interpreters, and what no
    /// policy allows. The output validates (`policy check`).
    #[command(after_long_help = crate::cmd::suggest::SUGGEST_HELP)]
    Suggest(crate::cmd::suggest::SuggestArgs),
    /// Fetch the vault's documents into a directory (with .fence-vault.lock for push).
    ///
    /// Signatures are verified with the configuration's signing_keys; a document that fails
    /// is reported and not written (exit status 1). Without signing_keys it refuses to run
    /// unless given --unverified.
    #[command(after_long_help = PULL_HELP)]
    Pull(crate::cmd::console::PullArgs),
}

const PUSH_HELP: &str = "\
Files:
  --config PATH           a configuration with [vault] (address, token_file or AppRole)
  --key PATH              the signing key (policy keygen)
  DIR/.fence-vault.lock   versions last pulled; the check-and-set base when present

Exit status:
  0  written (or nothing to write)
  2  a document does not validate: nothing written
  3  a document changed in the vault since it was read: not overwritten
  4  the vault's index does not verify (or is missing while documents exist): see
     --rebuild-index

Examples:
  fence-agent policy pull -c console.toml ./policies
  $EDITOR ./policies/ci-runner.yaml
  fence-agent policy diff -c console.toml ./policies
  fence-agent policy push -c console.toml --key signing.key ./policies";

const DIFF_HELP: &str = "\
Exit status:
  0  the vault holds these documents
  1  something differs (shown as a unified diff per document)
  2  a document does not validate

Examples:
  fence-agent policy diff -c console.toml ./policies";

const PULL_HELP: &str = "\
Files:
  DIR/<identity>.yaml, DIR/assignments.yaml, DIR/.fence-vault.lock

Exit status:
  0  every document fetched and verified
  1  a document failed verification (not written)

Examples:
  fence-agent policy pull -c console.toml ./policies";

const KEYGEN_HELP: &str = "\
Files:
  --out PATH     the private key, created with mode 0600 (never overwritten)

Exit status:
  0  the key was written and its public key printed
  1  the file exists or could not be written

Examples:
  fence-agent policy keygen --out /root/fence-signing.key
  fence-agent policy keygen --out signing.key >> public-key.toml";

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (a new file).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Do not check cgroups against this host (for checking policies meant for other hosts).
    #[arg(long)]
    pub offline: bool,
}

pub fn main(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(args) => check(args),
        PolicyCommand::Keygen(args) => keygen(args),
        PolicyCommand::Push(args) => crate::cmd::console::push(args),
        PolicyCommand::Diff(args) => crate::cmd::console::diff(args),
        PolicyCommand::Pull(args) => crate::cmd::console::pull(args),
        PolicyCommand::Suggest(args) => crate::cmd::suggest::main(args),
    }
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::generate()?;
    key.save(&args.out)?;
    let public = key.public();
    println!("# key id {}; private key written to {} (mode 0600, keep it secret)", public.key_id(), args.out.display());
    println!("# add to the [vault] section of agent.toml on every agent:");
    println!("signing_keys = [\"{public}\"]");
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    // Managed identities' cgroups are named as the agent of this host would make them.
    let managed_parent = match crate::config::Config::load(None) {
        Ok(c) => c.managed.cgroup_parent,
        Err(e) => {
            eprintln!("note: {e}; managed identities' cgroups are shown below this process's cgroup");
            None
        }
    };
    let cgroups = if args.offline { None } else { Some(Cgroups::discover()?.with_managed_parent(managed_parent)) };
    let result = load_paths(&args.paths).and_then(|docs| {
        let resolver = cgroups.as_ref().map(|c| c as &dyn CgroupResolver);
        let set = validate(&docs, resolver, Timestamp::now())?;
        compile(&set, &Resolved::default(), &mut IdAllocator::default())?;
        Ok::<_, PolicyErrors>(set)
    });
    match result {
        Ok(set) => {
            for identity in &set.identities {
                let state = if identity.expired { " (EXPIRED: deny-all)" } else { "" };
                println!(
                    "ok: identity \"{}\" mode {} {} egress rule(s), {} cgroup(s){state}",
                    identity.name,
                    identity.mode,
                    identity.egress.len(),
                    identity.cgroups.len()
                );
                names_lines(identity).iter().for_each(|line| println!("  {line}"));
                println!("  standing: {}", crate::grants::reach::standing(identity));
                for g in &identity.grantable {
                    println!("  grantable: {}", crate::grants::reach::grantable(g));
                }
            }
            println!("policy ok: {} identities", set.identities.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::from(2))
        }
    }
}

/// The names an identity may resolve, one line per egress rule that has any:
/// `may resolve api.example.com, *.cdn.example.com: 443/tcp (rule "https")`.
fn names_lines(identity: &Identity) -> Vec<String> {
    let line = |rule: &EgressRule| {
        let names: Vec<String> = rule.names.iter().map(ToString::to_string).collect();
        let own: Vec<PortSpan> = rule.ports.iter().map(|p| (p.lo, p.hi, rule.protocols, rule.grant)).collect();
        let ports = port_rules_text(&Ports::of(None, &own).rules());
        format!("may resolve {}: {ports} (rule \"{}\")", names.join(", "), rule.name)
    };
    identity.egress.iter().filter(|r| !r.names.is_empty()).map(line).collect()
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    #[test]
    fn check_lists_the_names_each_rule_may_resolve() {
        let text = r#"
schema: 1
identities:
  - name: a
    owner: o
    purpose: p
    selectors: [{managed: true}]
    egress:
      - {name: web, to: [10.0.0.0/8, API.example.com, "*.cdn.example.com"], ports: [443, 80], protocol: tcp}
      - {to: [10.0.0.1], ports: [53], protocol: udp}
      - {to: ["**.example.org"], ports: [any], protocol: any}
"#;
        let doc = crate::policy::parse_document(text, crate::policy::Format::Yaml).unwrap();
        let docs = [crate::policy::SourceDocument { path: "p.yaml".into(), document: doc }];
        let set = validate(&docs, None, Timestamp::now()).unwrap();
        assert_eq!(
            names_lines(&set.identities[0]),
            [
                "may resolve api.example.com, *.cdn.example.com: 80/tcp,443/tcp (rule \"web\")",
                "may resolve **.example.org: 1-65535/tcp+udp (rule \"egress[2]\")"
            ]
        );
    }

    #[test]
    fn vault_keygen_writes_a_private_key_once() {
        let dir_guard = tempfile::tempdir().unwrap();
        let dir = dir_guard.path().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("signing.key");
        let _ = fs::remove_file(&out);
        assert_eq!(keygen(KeygenArgs { out: out.clone() }).unwrap(), ExitCode::SUCCESS);
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let written = fs::read_to_string(&out).unwrap();
        SigningKey::load(&out).unwrap();
        let e = keygen(KeygenArgs { out: out.clone() }).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(fs::read_to_string(&out).unwrap(), written);
    }
}
