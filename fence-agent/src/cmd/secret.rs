//! `fence-agent secret`: a fenced workload's own credentials, from the agent's broker. The
//! agent learns the caller's identity from the kernel; the workload holds no vault token. The
//! value goes to stdout or to a file descriptor the caller names, never into an environment
//! variable, an argument or a log; this process is not dumpable and wipes its buffers.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, Read as _, Write as _},
    os::fd::{FromRawFd as _, RawFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    config::{DEFAULT_SOCKET, DEFAULT_WORKLOAD_SOCKET},
    control::{
        CallError, Request, call,
        protocol::{SecretFile, SecretOp, SecretRevoked},
    },
    vault::client::Secret,
};

/// Exit code: the broker refused (no such secret for this identity, grant not in force,
/// vault error).
const REFUSED: u8 = 2;
/// The longest answer read (a credential is far smaller).
const MAX_ANSWER: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print one of your identity's secrets (from inside the fenced workload).
    ///
    /// A KV secret prints its value; a dynamic one prints its fields as a JSON object, or one
    /// field with --field. With --fd N the value is written to file descriptor N (opened by
    /// the caller, e.g. `3>file` or a pipe) instead of stdout, without a newline. Exit codes:
    /// 0 printed, 1 the agent could not be asked, 2 refused.
    Get(GetArgs),
    /// Write one of your identity's secrets to a file only your identity may read, and print
    /// its path (from inside the fenced workload).
    ///
    /// The file is `<[broker] files_dir>/<identity>/<name>` (`.<field>` with --field), mode
    /// 0400, owned by your uid; every other fenced identity is refused it by the kernel. It is
    /// removed when its lease ends, when the identity loses the secret, and when the agent
    /// stops. Exit codes as for `get`.
    File(FileArgs),
    /// End the leases of an identity's dynamic secret now (root on the host): the vault
    /// revokes them (the database drops the user).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The secret (a name in the identity's `secrets:`).
    pub name: String,
    /// One field of a dynamic secret (`username`, `password`).
    #[arg(long)]
    pub field: Option<String>,
    /// Write the value to this open file descriptor (3 or above) instead of stdout.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(3..))]
    pub fd: Option<i32>,
    /// The agent's workload socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_WORKLOAD_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The secret (a name in the identity's `secrets:`).
    pub name: String,
    /// One field of a dynamic secret (else all of them, as a JSON object).
    #[arg(long)]
    pub field: Option<String>,
    /// The agent's workload socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_WORKLOAD_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The secret.
    pub name: String,
    /// Whose leases.
    #[arg(long)]
    pub identity: String,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn main(command: SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Get(a) => Ok(get(&a)),
        SecretCommand::File(a) => {
            let op = SecretOp::File { name: a.name, field: a.field };
            Ok(match call::<SecretFile>(&a.socket, &Request::Secret(op)) {
                Ok(f) => {
                    println!("{}", f.path);
                    ExitCode::SUCCESS
                }
                Err(CallError::Refused(why)) => {
                    eprintln!("fence-agent: {why}");
                    ExitCode::from(REFUSED)
                }
                Err(e) => {
                    eprintln!("fence-agent: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        SecretCommand::Revoke(a) => {
            let op = SecretOp::Revoke { name: a.name, identity: a.identity };
            match call::<SecretRevoked>(&a.socket, &Request::Secret(op)) {
                Ok(r) => {
                    for id in &r.lease_ids {
                        println!("revoked {id}");
                    }
                    if r.lease_ids.is_empty() {
                        println!("no lease held");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(CallError::Refused(why)) => {
                    eprintln!("fence-agent: {why}");
                    Ok(ExitCode::from(REFUSED))
                }
                Err(e) => {
                    eprintln!("fence-agent: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The broker's answer.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    value: Option<Secret>,
    #[serde(default)]
    fields: Option<BTreeMap<String, Secret>>,
}

fn get(a: &GetArgs) -> ExitCode {
    not_dumpable();
    let answer = match ask(&a.socket, &a.name) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("fence-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !answer.ok {
        eprintln!("fence-agent: {}", answer.error.as_deref().unwrap_or("the agent refused"));
        return ExitCode::from(REFUSED);
    }
    let text: Zeroizing<String> = match (&answer.value, &answer.fields, &a.field) {
        (Some(v), _, None) => Zeroizing::new(v.expose().to_owned()),
        (Some(_), _, Some(_)) => {
            eprintln!("fence-agent: secret {:?} is a single value (a KV secret): --field does not apply", a.name);
            return ExitCode::from(REFUSED);
        }
        (None, Some(fields), Some(f)) => match fields.get(f) {
            Some(v) => Zeroizing::new(v.expose().to_owned()),
            None => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                eprintln!("fence-agent: secret {:?} has no field {f:?} (it has: {})", a.name, names.join(", "));
                return ExitCode::from(REFUSED);
            }
        },
        (None, Some(fields), None) => {
            let plain: BTreeMap<&str, &str> = fields.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
            // Sized up front: no reallocation leaves a copy behind. A map of strings always
            // serializes, as UTF-8.
            let mut json = Vec::with_capacity(fields.iter().map(|(k, v)| (k.len() + v.expose().len()) * 6 + 8).sum());
            let _ = serde_json::to_writer(&mut json, &plain);
            Zeroizing::new(String::from_utf8(json).unwrap_or_default())
        }
        (None, None, _) => {
            eprintln!("fence-agent: the agent's answer has no value");
            return ExitCode::FAILURE;
        }
    };
    let written = match a.fd {
        Some(fd) => write_fd(fd, text.as_bytes()),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fence-agent: writing the secret: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request on the workload socket; the answer read into a wiped buffer and parsed
/// without copies of the value. Errors never quote the answer.
fn ask(socket: &Path, name: &str) -> Result<Answer, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("the fence agent is not running (cannot connect to {}: {e})", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let request = Request::Secret(SecretOp::Get { name: name.to_owned() });
    stream.write_all(&request.to_line()).map_err(|e| format!("sending to the agent: {e}"))?;
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_ANSWER as usize));
    std::io::BufReader::new((&stream).take(MAX_ANSWER))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading the agent's answer: {e}"))?;
    serde_json::from_slice::<Answer>(&line).map_err(|_| "the agent's answer is not valid".to_owned())
}

/// Writes to descriptor `fd`, which the caller opened (it is closed afterwards).
fn write_fd(fd: RawFd, bytes: &[u8]) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        // SAFETY: only tested for validity; the descriptor is not owned here.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| std::io::Error::other(format!("--fd {fd} is not an open file descriptor ({e})")))?;
    // SAFETY: the descriptor is open (checked above) and handed to this process to write to;
    // nothing else in this process uses it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.flush()
}

/// No core dump and no ptrace attach by the same uid while the value is in memory.
fn not_dumpable() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}
