//! Readings of the host that `run` logs at start and `doctor` reports.

use std::{fs, path::PathBuf};

use serde::Serialize;

use crate::{
    btf::Btf,
    cgroup::Cgroups,
    fences::{self, Availability, FenceReport, Plan, files::fanotify::FileFence},
    kernel::loader::{Attacher as _, Loader, Reporting},
    mountinfo::MountInfo,
    offsets::kernel_offsets,
};

/// The kernel's release string.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}

/// Whether the running kernel has the LSM hook `hook` (its BPF LSM attach point
/// `bpf_lsm_<hook>` in /proc/kallsyms), read a line at a time; `None` when kallsyms cannot be
/// read whole (the caller then tries the hook and reports a failure).
pub fn kernel_has_lsm_hook(hook: &str) -> Option<bool> {
    use std::io::BufRead as _;
    let f = fs::File::open("/proc/kallsyms").ok()?;
    let want = format!("bpf_lsm_{hook}");
    for line in std::io::BufReader::new(f).lines() {
        if line.ok()?.split_whitespace().nth(2).is_some_and(|name| name == want) {
            return Some(true);
        }
    }
    Some(false)
}

/// The active LSMs, mounting securityfs first if it is not (read-only information).
pub fn lsm_list() -> Option<String> {
    let path = "/sys/kernel/security/lsm";
    if fs::metadata(path).is_err() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        );
    }
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Everything `doctor` prints.
#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub kernel: String,
    pub btf: Result<(), String>,
    pub lsm: Option<String>,
    pub cgroup2: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub program_types: Vec<ProgramProbe>,
    pub fanotify_permission_events: Result<(), String>,
    pub fences: Vec<FenceReport>,
}

#[derive(Debug, Serialize)]
pub struct ProgramProbe {
    pub program_type: &'static str,
    pub loads: bool,
    pub detail: String,
}

/// Probes this host by loading fence's programs as the agent does (each fence unit chooses
/// its mechanism), attaching them with an empty policy (nothing is fenced) and unloading them.
pub fn diagnose() -> Diagnosis {
    let btf = Btf::from_sys_fs().and_then(|b| kernel_offsets(&b));
    let cgroups = Cgroups::discover();
    let mut program_types = Vec::new();
    let plan = match &cgroups {
        Ok(cg) => {
            let loaded = Loader::open(btf.as_ref().ok().copied(), &Reporting::default())
                .map_err(|e| e.to_string())
                .and_then(|mut l| {
                    let plan = fences::load(&mut l).map_err(|e| e.to_string())?;
                    // The global programs, and the cgroup programs at the root, with an empty
                    // policy: nothing is fenced; all of it goes when the loader is dropped.
                    l.attach_global(cg).map_err(|e| e.to_string())?;
                    l.attach("/").map_err(|e| e.to_string())?;
                    Ok(plan)
                });
            program_types.push(ProgramProbe {
                program_type: "cgroup_sock_addr, cgroup_sock",
                loads: loaded.is_ok(),
                detail: loaded.as_ref().err().cloned().unwrap_or_else(|| "network fence".into()),
            });
            loaded.unwrap_or_default()
        }
        Err(e) => Plan {
            mechanisms: fences::UNITS
                .iter()
                .map(|u| (u.name, Availability::Unavailable(format!("no cgroup2: {e}"))))
                .collect(),
            lsm_refusal: None,
        },
    };
    program_types.push(lsm_probe(&plan));
    program_types.push(match plan.get(fences::exec::UNIT.name) {
        Availability::TracepointKill => {
            ProgramProbe { program_type: "tp_btf", loads: true, detail: "sched_process_exec".into() }
        }
        Availability::Lsm => {
            ProgramProbe { program_type: "tp_btf", loads: true, detail: "not needed: BPF LSM is used".into() }
        }
        other => ProgramProbe { program_type: "tp_btf", loads: false, detail: other.reason().to_owned() },
    });
    let lsm = lsm_list();
    Diagnosis {
        kernel: kernel_release(),
        btf: btf.map(|_| ()).map_err(|e| e.to_string()),
        lsm: lsm.clone(),
        cgroup2: cgroups.ok().map(|c| c.root().to_owned()),
        bpffs: MountInfo::read().mount_of("bpf"),
        program_types,
        fanotify_permission_events: FileFence::probe().map_err(|e| e.to_string()),
        fences: plan.report(lsm.as_deref()),
    }
}

/// Whether BPF LSM programs load, and the kernel's answer when they do not.
fn lsm_probe(plan: &Plan) -> ProgramProbe {
    match (plan.get(fences::exec::UNIT.name), &plan.lsm_refusal) {
        (Availability::Lsm, _) => {
            ProgramProbe { program_type: "lsm", loads: true, detail: "BPF LSM programs load and attach".into() }
        }
        (_, Some(r)) => ProgramProbe { program_type: "lsm", loads: false, detail: r.clone() },
        (other, None) => ProgramProbe { program_type: "lsm", loads: false, detail: other.reason().to_owned() },
    }
}
