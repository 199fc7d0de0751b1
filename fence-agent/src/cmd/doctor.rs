//! `fence-agent doctor`: what this host can enforce, by which mechanism, and what to do about
//! the gaps. Loads fence's programs with an empty policy to find out (nothing is fenced).

use std::process::ExitCode;

use clap::Args;

use crate::host::diagnose;

/// Exit status when some fence is not enforced on this host.
const GAPS: u8 = 3;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("doctor loads eBPF programs to see what this kernel accepts; run it as root");
    }
    let d = diagnose();
    // A gap is not an error of the command, but a script must be able to tell.
    let code = if d.fences.iter().all(|f| f.enforced) { ExitCode::SUCCESS } else { ExitCode::from(GAPS) };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(code);
    }
    println!("kernel:   {}", d.kernel);
    println!("btf:      {}", d.btf.as_ref().map_or_else(|e| format!("UNAVAILABLE ({e})"), |()| "present".into()));
    println!("lsm:      {}", d.lsm.as_deref().unwrap_or("unknown (securityfs not readable)"));
    println!("cgroup2:  {}", d.cgroup2.as_ref().map_or("NOT MOUNTED".into(), |p| p.display().to_string()));
    println!("bpffs:    {}", d.bpffs.as_ref().map_or("not mounted".into(), |p| p.display().to_string()));
    println!(
        "fanotify permission events: {}",
        d.fanotify_permission_events.as_ref().map_or_else(|e| format!("UNAVAILABLE ({e})"), |()| "available".into())
    );
    println!("program types:");
    for p in &d.program_types {
        println!("  {:<32} {} {}", p.program_type, if p.loads { "loads" } else { "REFUSED" }, p.detail);
    }
    println!("fences:");
    for f in &d.fences {
        let state = if f.enforced { "enforced" } else { "NOT ENFORCED" };
        println!("  {:<17} {state:<13} {}", f.fence, f.mechanism);
        println!("  {:<17} {:<13} {}", "", "", f.notes);
        if let Some(r) = &f.remedy {
            println!("  {:<17} {:<13} fix: {r}", "", "");
        }
    }
    Ok(code)
}
