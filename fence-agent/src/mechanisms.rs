//! Which mechanism enforces each fence on this host, and what an operator can do about a gap.
//! The agent never reports a fence as enforced when it is not: every row says how, or why not.

use serde::Serialize;

/// How a fence is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum Availability {
    /// A BPF LSM hook refuses the operation (EPERM).
    Lsm,
    /// A tp_btf program kills the task at exec, before its first instruction.
    TracepointKill,
    /// A tp_btf program acts as the kernel does it (binding a unit's new cgroup).
    Tracepoint,
    /// The agent answers fanotify permission events (EPERM).
    Fanotify,
    /// cgroup socket hooks refuse the operation (EPERM).
    CgroupHooks,
    /// Not enforced on this host, and why.
    Unavailable(String),
}

impl Default for Availability {
    fn default() -> Self {
        Availability::Unavailable("not probed".into())
    }
}

impl Availability {
    pub fn enforced(&self) -> bool {
        !matches!(self, Availability::Unavailable(_))
    }
}

/// What the kernel programs of this agent cover, as found when loading them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
    pub exec: Availability,
    pub files: Availability,
    pub unix: Availability,
    pub self_protection: Availability,
    /// Binding a restarted unit's new cgroup at its creation.
    pub unit_follow: Availability,
    /// The kernel's answer when it refused BPF LSM programs.
    pub lsm_refusal: Option<String>,
}

impl KernelPlan {
    /// Without BTF the programs that read kernel structures cannot be loaded.
    pub fn without_btf() -> KernelPlan {
        KernelPlan::no_kernel_btf("/sys/kernel/btf/vmlinux is missing or unreadable")
    }

    pub fn no_kernel_btf(why: &str) -> KernelPlan {
        let u = || {
            Availability::Unavailable(format!(
                "needs the kernel's BTF ({why}); build the kernel with CONFIG_DEBUG_INFO_BTF=y"
            ))
        };
        KernelPlan { exec: u(), files: u(), unix: u(), self_protection: u(), unit_follow: u(), lsm_refusal: None }
    }
}

/// One row of the report (`doctor`, the startup log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceReport {
    pub fence: &'static str,
    pub enforced: bool,
    pub mechanism: String,
    pub notes: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// The per-fence report. `files` is the file fence's final mechanism (LSM, or fanotify when
/// the agent runs it, or unavailable).
pub fn report(plan: &KernelPlan, files: &Availability, lsm_list: Option<&str>) -> Vec<FenceReport> {
    let lsm_remedy = || {
        let refused = plan.lsm_refusal.as_deref().map(|r| format!(" The kernel answered: {r}.")).unwrap_or_default();
        let listed = lsm_list.is_some_and(|l| l.split(',').any(|m| m.trim() == "bpf"));
        Some(if listed {
            format!(
                "This kernel lists `bpf` as an active LSM but refuses BPF LSM programs (a platform restriction: a \
                 lockdown policy or a vendor patch).{refused} Run a kernel that accepts them, e.g. a distribution kernel \
                 built with CONFIG_BPF_LSM=y such as Debian 12's."
            )
        } else {
            let current = lsm_list.map(|l| format!(" (/sys/kernel/security/lsm reads \"{l}\")")).unwrap_or_default();
            format!(
                "Enable BPF LSM: a kernel with CONFIG_BPF_LSM=y and `bpf` in the lsm= boot parameter{current}, e.g. \
                 lsm=lockdown,capability,landlock,yama,apparmor,bpf.{refused}"
            )
        })
    };
    let unavailable = |a: &Availability| match a {
        Availability::Unavailable(r) => r.clone(),
        _ => String::new(),
    };
    // A fence with no mechanism on this kernel: BPF LSM is the remedy.
    let missing = |fence: &'static str, notes: String| FenceReport {
        fence,
        enforced: false,
        mechanism: "unavailable".into(),
        notes,
        remedy: lsm_remedy(),
    };
    let mut rows = vec![FenceReport {
        fence: "egress",
        enforced: true,
        mechanism: "cgroup/connect4+connect6+sendmsg4+sendmsg6+sock_create".into(),
        notes: "TCP/UDP allow-lists per identity; other socket kinds refused".into(),
        remedy: None,
    }];
    rows.push(match &plan.exec {
        Availability::Lsm => {
            row("exec", "lsm/bprm_check_security", "refused with EPERM; scripts and their interpreters both checked")
        }
        Availability::TracepointKill => FenceReport {
            fence: "exec",
            enforced: true,
            mechanism: "tp_btf/sched_process_exec + SIGKILL".into(),
            notes:
                "fallback: a denied program is killed before its first instruction (verdict \"killed\", not EPERM); \
                    a #! script is judged by its interpreter only"
                    .into(),
            remedy: lsm_remedy(),
        },
        other => missing("exec", unavailable(other)),
    });
    rows.push(match files {
        Availability::Lsm => row("credential-files", "lsm/file_open", "refused with EPERM"),
        Availability::Fanotify => FenceReport {
            fence: "credential-files",
            enforced: true,
            mechanism: "fanotify FAN_OPEN_PERM answered by the agent".into(),
            notes: "fallback: refused with EPERM while the agent runs (not while it is down); files created later are \
                    protected once the agent sees them (milliseconds)"
                .into(),
            remedy: lsm_remedy(),
        },
        other => missing("credential-files", unavailable(other)),
    });
    rows.push(match &plan.unix {
        Availability::Lsm => row("unix-sockets", "lsm/unix_stream_connect+unix_may_send", "refused with EPERM"),
        other => missing(
            "unix-sockets",
            format!(
                "{}; the cgroup connect_unix/sendmsg_unix hooks (kernel >= 6.7) cannot be attached by this agent \
                 (aya 0.16 does not know them)",
                unavailable(other)
            ),
        ),
    });
    rows.push(match &plan.self_protection {
        Availability::Lsm => row(
            "no-way-out",
            "lsm/file_open+task_alloc+ptrace_access_check+task_kill+bpf",
            "a fenced process, even root, cannot write to cgroup.procs/cgroup.threads outside its identity, \
             clone3 into another cgroup, trace or signal processes outside its identity (the agent included), \
             or use bpf(2)",
        ),
        other => missing(
            "no-way-out",
            format!(
                "{}: a fenced process with CAP_SYS_ADMIN can leave its cgroup, detach fence's programs or stop the \
                 agent; run fenced workloads without CAP_SYS_ADMIN/CAP_BPF/CAP_KILL over the agent (e.g. non-root)",
                unavailable(other)
            ),
        ),
    });
    rows.push(match &plan.unit_follow {
        Availability::Tracepoint => row(
            "unit-restarts",
            "tp_btf/cgroup_mkdir",
            "a restarted unit's new cgroup is bound to its identity as the kernel creates it",
        ),
        other => FenceReport {
            fence: "unit-restarts",
            enforced: false,
            mechanism: "inotify (user space)".into(),
            notes: format!(
                "{}: a restarted unit's new cgroup is bound when the agent sees it, milliseconds later; a process \
                 the unit starts in that time runs unfenced",
                unavailable(other)
            ),
            remedy: None,
        },
    });
    rows
}

fn row(fence: &'static str, mechanism: &str, notes: &str) -> FenceReport {
    FenceReport { fence, enforced: true, mechanism: mechanism.into(), notes: notes.into(), remedy: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_bpf_lsm_says_so_per_fence() {
        let plan = KernelPlan {
            exec: Availability::TracepointKill,
            files: Availability::Unavailable("BPF LSM refused (EPERM)".into()),
            unix: Availability::Unavailable("BPF LSM refused (EPERM)".into()),
            self_protection: Availability::Unavailable("x".into()),
            unit_follow: Availability::Tracepoint,
            lsm_refusal: Some("BPF_PROG_LOAD: Operation not permitted".into()),
        };
        let rows = report(&plan, &Availability::Fanotify, Some("lockdown,capability,landlock,bpf"));
        let get = |f: &str| rows.iter().find(|r| r.fence == f).unwrap();
        assert!(get("egress").enforced);
        assert!(get("exec").enforced && get("exec").mechanism.contains("SIGKILL"));
        assert!(get("credential-files").enforced && get("credential-files").mechanism.contains("fanotify"));
        assert!(!get("unix-sockets").enforced);
        assert!(get("unix-sockets").remedy.as_deref().unwrap().contains("refuses BPF LSM programs"));
        let rows = report(&plan, &Availability::Fanotify, Some("lockdown,capability,landlock"));
        assert!(rows.iter().find(|r| r.fence == "unix-sockets").unwrap().remedy.as_deref().unwrap().contains("lsm="));
        assert!(get("exec").remedy.as_deref().unwrap().contains("Operation not permitted"));
    }

    #[test]
    fn a_bpf_lsm_host_needs_no_remedy() {
        let plan = KernelPlan {
            exec: Availability::Lsm,
            files: Availability::Lsm,
            unix: Availability::Lsm,
            self_protection: Availability::Lsm,
            unit_follow: Availability::Tracepoint,
            lsm_refusal: None,
        };
        let rows = report(&plan, &Availability::Lsm, None);
        for f in ["exec", "credential-files", "unix-sockets", "no-way-out", "unit-restarts"] {
            let r = rows.iter().find(|r| r.fence == f).unwrap();
            assert!(r.enforced && r.remedy.is_none(), "{r:?}");
        }
    }
}
