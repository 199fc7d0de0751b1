//! `fence-agent uninstall`: removes what the agent leaves behind when it stops with
//! persistence on: the pinned programs (which lifts enforcement), the cgroups it created for
//! `fence-agent exec`, its state directory and its socket. Run it with the agent stopped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;

use crate::{
    cgroup::{Cgroups, process_count},
    config::Config,
    control, persist,
    policy::MANAGED_DIR,
};

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Agent configuration (TOML). Default: /etc/fence/agent.toml if it exists.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Keep what must outlive a reinstall in state_dir: the vault's last-known-good policy
    /// and its rollback floor (policy-cache.json) and the boot's event sequence. The rest of
    /// state_dir (grants, identity ids, event counts: they describe the enforcement being
    /// removed) goes. The package's removal uses it; its purge removes state_dir.
    #[arg(long)]
    pub keep_state: bool,
}

/// What `--keep-state` keeps in state_dir.
const KEPT_STATE: &[&str] = &["policy-cache.json", "event-sequence"];

pub fn main(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    if control::agent_answers(&config.control.socket) {
        anyhow::bail!(
            "the agent is running (it answers on {}); stop it first (systemctl stop fence-agent)",
            config.control.socket.display()
        );
    }
    let mut left = Vec::new();
    // Pins: removing them detaches the programs.
    let pin_dir = &config.persist.pin_dir;
    for run in persist::runs(pin_dir, None) {
        match persist::remove_run(&run) {
            Ok(links) => println!("removed {links} pinned program links in {}", run.display()),
            Err(e) => left.push(e.to_string()),
        }
    }
    match persist::remove_shared(pin_dir) {
        Ok(pins) => pins.iter().for_each(|p| println!("removed {}", p.display())),
        Err(e) => left.push(e.to_string()),
    }
    if pin_dir.exists() {
        remove_dir(pin_dir, &mut left);
    }
    // Managed cgroups, wherever the agent's cgroup was.
    if let Ok(cgroups) = Cgroups::discover() {
        for managed in find_dirs(cgroups.root(), MANAGED_DIR) {
            if let Ok(entries) = fs::read_dir(&managed) {
                for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                    let n = process_count(&e.path());
                    if n > 0 {
                        left.push(format!("{} still has {n} process(es); stop them first", e.path().display()));
                    } else {
                        remove_dir(&e.path(), &mut left);
                    }
                }
            }
            remove_dir(&managed, &mut left);
        }
    }
    let state_dir = &config.persist.state_dir;
    if args.keep_state && state_dir.is_dir() {
        for e in fs::read_dir(state_dir).into_iter().flatten().flatten() {
            let kept = e.file_name().to_str().is_some_and(|n| KEPT_STATE.contains(&n));
            if !kept {
                let path = e.path();
                let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                match removed {
                    Ok(()) => println!("removed {}", path.display()),
                    Err(e) => left.push(format!("{}: {e}", path.display())),
                }
            }
        }
        println!("kept {} ({}) until the package is purged", state_dir.display(), KEPT_STATE.join(", "));
    }
    let remove_state = (!args.keep_state).then_some(state_dir);
    for path in remove_state.into_iter().chain([&config.control.socket]) {
        if path.is_dir() {
            match fs::remove_dir_all(path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) => left.push(format!("{}: {e}", path.display())),
            }
        } else if path.exists() {
            match fs::remove_file(path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) => left.push(format!("{}: {e}", path.display())),
            }
        }
    }
    if left.is_empty() {
        println!("fence is uninstalled from this host (configuration and logs are left in place)");
        Ok(ExitCode::SUCCESS)
    } else {
        for l in &left {
            eprintln!("fence-agent uninstall: left in place: {l}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn remove_dir(path: &Path, left: &mut Vec<String>) {
    match fs::remove_dir(path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) => left.push(format!("{}: {e}", path.display())),
    }
}

/// Directories named `name` in the cgroup tree (a few levels deep).
fn find_dirs(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![root.to_owned()];
    for _ in 0..8 {
        let mut next = Vec::new();
        for dir in &level {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name() == name {
                    found.push(e.path());
                } else {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    found
}
