//! Readings of the host that `run` logs at start and `doctor` reports.

use std::{fs, path::PathBuf};

use serde::Serialize;

use crate::{
    btf::Btf,
    cgroup::Cgroups,
    enforcer::Enforcer,
    fanotify::FileFence,
    mechanisms::{Availability, FenceReport, KernelPlan, report},
    offsets::kernel_offsets,
};

/// The kernel's release string.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
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

/// Mount point of a file system type, from /proc/self/mountinfo.
pub fn mount_of(fstype: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == fstype)
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or_default()))
    })
}

/// The file fence's mechanism: the LSM program if the kernel took it, else fanotify if
/// permission events work, else unavailable with both reasons.
pub fn file_mechanism(plan: &KernelPlan) -> Availability {
    match &plan.files {
        Availability::Lsm => Availability::Lsm,
        Availability::Unavailable(lsm_why) => match FileFence::probe() {
            Ok(()) => Availability::Fanotify,
            Err(e) => Availability::Unavailable(format!("{lsm_why}; {e}")),
        },
        other => other.clone(),
    }
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

/// Probes this host by loading fence's programs (with an empty policy: nothing is fenced)
/// and unloading them.
pub fn diagnose() -> Diagnosis {
    let btf = Btf::from_sys_fs().and_then(|b| kernel_offsets(&b));
    let cgroups = Cgroups::discover();
    let mut program_types = Vec::new();
    let plan = match (&cgroups, &btf) {
        (Ok(cg), offsets) => {
            match Enforcer::load(offsets.as_ref().ok().copied()).and_then(|mut e| e.attach(cg).map(|()| e)) {
                Ok(e) => {
                    program_types.push(ProgramProbe {
                        program_type: "cgroup_sock_addr, cgroup_sock",
                        loads: true,
                        detail: "network fence".into(),
                    });
                    e.plan().clone()
                }
                Err(err) => {
                    program_types.push(ProgramProbe {
                        program_type: "cgroup_sock_addr, cgroup_sock",
                        loads: false,
                        detail: err.to_string(),
                    });
                    KernelPlan::default()
                }
            }
        }
        (Err(e), _) => KernelPlan::no_kernel_btf(&format!("no cgroup2: {e}")),
    };
    let lsm_probe = match (&plan.exec, &plan.lsm_refusal) {
        (Availability::Lsm, _) => {
            ProgramProbe { program_type: "lsm", loads: true, detail: "BPF LSM programs load and attach".into() }
        }
        (_, Some(r)) => ProgramProbe { program_type: "lsm", loads: false, detail: r.clone() },
        (other, None) => ProgramProbe { program_type: "lsm", loads: false, detail: format!("{other:?}") },
    };
    program_types.push(lsm_probe);
    program_types.push(match &plan.exec {
        Availability::TracepointKill => {
            ProgramProbe { program_type: "tp_btf", loads: true, detail: "sched_process_exec".into() }
        }
        Availability::Lsm => {
            ProgramProbe { program_type: "tp_btf", loads: true, detail: "not needed: BPF LSM is used".into() }
        }
        Availability::Unavailable(r) => ProgramProbe { program_type: "tp_btf", loads: false, detail: r.clone() },
        other => ProgramProbe { program_type: "tp_btf", loads: false, detail: format!("{other:?}") },
    });
    let files = file_mechanism(&plan);
    let lsm = lsm_list();
    Diagnosis {
        kernel: kernel_release(),
        btf: btf.map(|_| ()).map_err(|e| e.to_string()),
        lsm: lsm.clone(),
        cgroup2: cgroups.ok().map(|c| c.root().to_owned()),
        bpffs: mount_of("bpf"),
        program_types,
        fanotify_permission_events: FileFence::probe().map_err(|e| e.to_string()),
        fences: report(&plan, &files, lsm.as_deref()),
    }
}
