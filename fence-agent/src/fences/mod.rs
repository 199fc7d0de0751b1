//! The fences, each a unit that owns its programs, its policy maps, its section of the
//! compiled policy, the choice of its mechanism on this kernel, its doctor row, and the
//! operations its events name. Tetragon's "sensors" are the model.
//!
//! | unit | row | programs | maps |
//! |---|---|---|---|
//! | [`net`] | egress | cgroup connect4/6, sendmsg4/6, sock_create, cgroup_skb/egress; lsm/socket_create | `Host4`, `Host6`, `Net4`, `Net6` |
//! | [`dns`] | dns | cgroup recvmsg4/6, getpeername4/6 (steering in the egress programs) | `DnsResolvers`, `DnsSteered`, `Learned4`, `Learned6` (not generational) |
//! | [`exec`] | exec | lsm/bprm_check_security, else tp_btf/sched_process_exec + SIGKILL | `Exec` |
//! | [`files`] | credential-files | lsm/file_open, inode_unlink, inode_rmdir, inode_rename, inode_link, path_truncate; else fanotify in the agent | `Protected`, `FileExcept` |
//! | [`unix`] | unix-sockets | lsm/unix_stream_connect, unix_may_send | `Unix`, `UnixAbstract` |
//! | [`escape`] | no-way-out | lsm/task_alloc, ptrace_access_check, task_kill, bpf, file_ioctl, file_fcntl, file_send_sigiotask, file_set_fowner, lsm_cgroup/inode_permission (+ file_open) | |
//! | [`sysctl`] | host-settings | cgroup/sysctl | |
//! | [`grants`] | grants | (none: every fence's program checks a grant slot's end) | (`Grants`, `GrantUses`, not generational) |
//! | [`secrets`] | secrets | (none: the agent's broker, its callers attested by the kernel) | |
//! | [`bindings`] | unit-restarts | tp_btf/cgroup_mkdir | `Identities`, `Cgroups`, `Units` |
//!
//! A new fence is a new module here, its line in [`UNITS`], and its types in `fence-common`.
//! Everything that iterates fences (loading, `doctor`, the compiler, the metrics) goes
//! through [`UNITS`].

pub mod bindings;
pub mod dns;
pub mod escape;
pub mod exec;
pub mod files;
pub mod grants;
pub mod net;
pub mod secrets;
pub mod sysctl;
pub mod unix;

use fence_common::{Map, Mechanism, Operation};
use serde::Serialize;

use crate::{
    kernel::{MapEntry, loader::Loader},
    policy::{Identity, PolicyError},
    resolve::{Resolved, ResolvedIdentity},
};

/// The registration table, in the order `doctor` lists the rows and programs are loaded.
pub const UNITS: &[&Unit] = &[
    &net::UNIT,
    &dns::UNIT,
    &exec::UNIT,
    &files::UNIT,
    &unix::UNIT,
    &escape::UNIT,
    &sysctl::UNIT,
    &grants::UNIT,
    &secrets::UNIT,
    &bindings::UNIT,
];

/// One fence.
pub struct Unit {
    /// Its row in `doctor`, the startup log and the `fence_mechanism_active` metric.
    pub name: &'static str,
    /// The policy maps it writes.
    pub maps: &'static [Map],
    /// The operations its events carry (`fence.operation`).
    pub operations: &'static [Operation],
    /// Loads its programs, choosing the best mechanism this kernel accepts.
    pub load: fn(&mut LoadContext<'_>) -> Availability,
    /// Without it the agent cannot run at all (the load error stops it).
    pub required: bool,
    /// Its doctor row for the mechanism it got.
    pub report: fn(&Availability, &ReportContext<'_>) -> FenceReport,
    /// `IdentityInfo::flags` bits it needs for an identity.
    pub flags: fn(&Identity) -> u8,
    /// Host-wide entries (identity 0).
    pub compile_host: fn(&Resolved, &mut Vec<MapEntry>),
    /// One identity's entries.
    pub compile_identity: fn(&IdentityInput<'_>, &mut Vec<MapEntry>) -> Result<(), PolicyError>,
    /// Whether it still writes entries for an expired identity (only the bindings do: an
    /// expired identity is fenced with nothing allowed).
    pub keeps_expired: bool,
}

/// What a unit compiles one identity from.
pub struct IdentityInput<'a> {
    pub identity: &'a Identity,
    pub compiled: &'a crate::compile::CompiledIdentity,
    /// What the identity's paths resolved to on this host.
    pub resolved: Option<&'a ResolvedIdentity>,
}

/// No host-wide entries.
pub fn no_host_entries(_: &Resolved, _: &mut Vec<MapEntry>) {}

/// Nothing per identity (a unit without maps of its own).
pub fn no_identity_entries(_: &IdentityInput<'_>, _: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    Ok(())
}

/// No identity flags.
pub fn no_flags(_: &Identity) -> u8 {
    0
}

/// How a fence is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum Availability {
    /// A BPF LSM hook refuses the operation (EPERM).
    Lsm,
    /// BPF LSM hooks refuse most of it; the rest, and why, is named.
    LsmPartly(String),
    /// A tp_btf program kills the task at exec, before its first instruction.
    TracepointKill,
    /// A tp_btf program acts as the kernel does it (binding a unit's new cgroup).
    Tracepoint,
    /// The agent answers fanotify permission events (EPERM).
    Fanotify,
    /// cgroup hooks refuse the operation (EPERM).
    CgroupHooks,
    /// cgroup hooks, and BPF LSM for what they cannot see.
    CgroupHooksAndLsm,
    /// Ends judged on the kernel's clock; `Some(why)` when connections cannot be torn down.
    KernelClock(Option<String>),
    /// Callers attested by the kernel; `Some(why)` when pid reuse is only narrowed.
    Attested(Option<String>),
    /// Not enforced on this host, and why.
    Unavailable(String),
}

impl Availability {
    pub fn enforced(&self) -> bool {
        !matches!(self, Availability::Unavailable(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Availability::Unavailable(r) => r,
            _ => "",
        }
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
    /// The `fence.mechanism` values of the events this fence's mechanism here reports (also
    /// the `mechanism` labels of `fence_mechanism_active`); empty for fences that log none.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "mechanism_names")]
    pub events: Vec<Mechanism>,
}

fn mechanism_names<S: serde::Serializer>(list: &[Mechanism], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|m| m.as_str()))
}

impl FenceReport {
    /// An enforced row without a remedy.
    pub fn enforced(fence: &'static str, mechanism: &str, notes: &str) -> FenceReport {
        FenceReport {
            fence,
            enforced: true,
            mechanism: mechanism.into(),
            notes: notes.into(),
            remedy: None,
            events: Vec::new(),
        }
    }

    /// This row with the event mechanism values its fence reports.
    pub fn with_events(mut self, events: &[Mechanism]) -> FenceReport {
        self.events = events.to_vec();
        self
    }

    /// A row not enforced for `why`, with no remedy to offer.
    pub fn not_enforced(fence: &'static str, why: &str) -> FenceReport {
        FenceReport {
            fence,
            enforced: false,
            mechanism: "unavailable".into(),
            notes: why.into(),
            remedy: None,
            events: Vec::new(),
        }
    }

    /// A fence with no mechanism on this kernel: BPF LSM is the remedy.
    pub fn unavailable(fence: &'static str, notes: String, ctx: &ReportContext<'_>) -> FenceReport {
        FenceReport {
            fence,
            enforced: false,
            mechanism: "unavailable".into(),
            notes,
            remedy: Some(ctx.lsm_remedy()),
            events: Vec::new(),
        }
    }
}

/// What a unit's `load` sees: the loader, and the mechanisms of the units loaded before it.
pub struct LoadContext<'a> {
    pub loader: &'a mut Loader,
    pub earlier: &'a [(&'static str, Availability)],
    /// Set by a required unit whose programs did not load.
    pub fatal: Option<crate::kernel::loader::LoadError>,
}

impl LoadContext<'_> {
    /// The mechanism an earlier unit got.
    pub fn earlier(&self, name: &str) -> Option<&Availability> {
        self.earlier.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }

    /// Loads LSM programs (all or none); `Lsm`, or why not.
    pub fn lsm(&mut self, programs: &[(&'static str, &'static str)]) -> Availability {
        match self.loader.load_lsm_all(programs) {
            Ok(()) => Availability::Lsm,
            Err(e) => Availability::Unavailable(self.refused(&e)),
        }
    }

    /// `why`, or the missing BTF when that is the cause.
    pub fn refused(&self, why: &str) -> String {
        match self.loader.btf_missing() {
            Some(btf) => format!("needs the kernel's BTF ({btf}); build the kernel with CONFIG_DEBUG_INFO_BTF=y"),
            None => why.to_owned(),
        }
    }
}

/// What a unit's `report` needs about the host.
pub struct ReportContext<'a> {
    /// /sys/kernel/security/lsm.
    pub lsm_list: Option<&'a str>,
    /// The kernel's answer when it refused BPF LSM programs.
    pub lsm_refusal: Option<&'a str>,
}

impl ReportContext<'_> {
    /// What to do to get BPF LSM on this host.
    pub fn lsm_remedy(&self) -> String {
        let refused = self.lsm_refusal.map(|r| format!(" The kernel answered: {r}.")).unwrap_or_default();
        let listed = self.lsm_list.is_some_and(|l| l.split(',').any(|m| m.trim() == "bpf"));
        if listed {
            format!(
                "This kernel lists `bpf` as an active LSM but refuses BPF LSM programs (a platform restriction: a \
                 lockdown policy or a vendor patch).{refused} Run a kernel that accepts them, e.g. a distribution kernel \
                 built with CONFIG_BPF_LSM=y such as Debian 12's."
            )
        } else {
            let current =
                self.lsm_list.map(|l| format!(" (/sys/kernel/security/lsm reads \"{l}\")")).unwrap_or_default();
            format!(
                "Enable BPF LSM: a kernel with CONFIG_BPF_LSM=y and `bpf` in the lsm= boot parameter{current}, e.g. \
                 lsm=lockdown,capability,landlock,yama,apparmor,bpf.{refused}"
            )
        }
    }
}

/// The mechanism of each fence on this host, as loading found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub mechanisms: Vec<(&'static str, Availability)>,
    /// The kernel's answer when it refused BPF LSM programs.
    pub lsm_refusal: Option<String>,
}

impl Plan {
    /// The mechanism of fence `name` (unavailable if there is no such fence).
    pub fn get(&self, name: &str) -> Availability {
        self.mechanisms
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| Availability::Unavailable("not loaded".into()), |(_, a)| a.clone())
    }

    /// Every fence's doctor row.
    pub fn report(&self, lsm_list: Option<&str>) -> Vec<FenceReport> {
        let ctx = ReportContext { lsm_list, lsm_refusal: self.lsm_refusal.as_deref() };
        UNITS.iter().map(|u| (u.report)(&self.get(u.name), &ctx)).collect()
    }
}

/// Loads every unit's programs into `loader`. Fails only when a required unit (egress) cannot
/// load: the agent is of no use without it.
pub fn load(loader: &mut Loader) -> Result<Plan, crate::kernel::loader::LoadError> {
    let mut mechanisms: Vec<(&'static str, Availability)> = Vec::new();
    for unit in UNITS {
        let mut ctx = LoadContext { loader, earlier: &mechanisms, fatal: None };
        let got = (unit.load)(&mut ctx);
        if let Some(e) = ctx.fatal.take()
            && unit.required
        {
            return Err(e);
        }
        mechanisms.push((unit.name, got));
    }
    Ok(Plan { mechanisms, lsm_refusal: loader.lsm_refusal().map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_of(rows: &[FenceReport], f: &str) -> FenceReport {
        rows.iter().find(|r| r.fence == f).unwrap().clone()
    }

    fn plan(pairs: &[(&'static str, Availability)], refusal: Option<&str>) -> Plan {
        Plan { mechanisms: pairs.to_vec(), lsm_refusal: refusal.map(str::to_owned) }
    }

    #[test]
    fn a_host_without_bpf_lsm_says_so_per_fence() {
        let refused = Availability::Unavailable("lsm/file_open refused (BPF_PROG_LOAD: EPERM)".into());
        let p = plan(
            &[
                ("egress", Availability::CgroupHooks),
                ("exec", Availability::TracepointKill),
                ("credential-files", Availability::Fanotify),
                ("unix-sockets", refused.clone()),
                ("no-way-out", refused),
                ("host-settings", Availability::CgroupHooks),
                ("unit-restarts", Availability::Tracepoint),
            ],
            Some("BPF_PROG_LOAD: Operation not permitted"),
        );
        let rows = p.report(Some("lockdown,capability,landlock,bpf"));
        assert!(get_of(&rows, "egress").notes.contains("NOT refused"), "{rows:?}");
        let get = |f: &str| rows.iter().find(|r| r.fence == f).unwrap().clone();
        assert!(get("egress").enforced);
        assert!(get("exec").enforced && get("exec").mechanism.contains("SIGKILL"));
        assert!(get("credential-files").enforced && get("credential-files").mechanism.contains("fanotify"));
        assert!(!get("unix-sockets").enforced);
        assert!(get("unix-sockets").remedy.as_deref().unwrap().contains("refuses BPF LSM programs"));
        let rows = p.report(Some("lockdown,capability,landlock"));
        assert!(rows.iter().find(|r| r.fence == "unix-sockets").unwrap().remedy.as_deref().unwrap().contains("lsm="));
        assert!(get("exec").remedy.as_deref().unwrap().contains("Operation not permitted"));
    }

    #[test]
    fn a_bpf_lsm_host_needs_no_remedy() {
        let p = plan(
            &[
                ("egress", Availability::CgroupHooksAndLsm),
                ("dns", Availability::CgroupHooks),
                ("exec", Availability::Lsm),
                ("credential-files", Availability::Lsm),
                ("unix-sockets", Availability::Lsm),
                ("no-way-out", Availability::Lsm),
                ("host-settings", Availability::CgroupHooks),
                ("grants", Availability::KernelClock(None)),
                ("secrets", Availability::Attested(None)),
                ("unit-restarts", Availability::Tracepoint),
            ],
            None,
        );
        for r in p.report(None) {
            assert!(r.enforced && r.remedy.is_none(), "{r:?}");
        }
    }

    #[test]
    fn every_event_mechanism_is_reported_by_a_fence_on_some_kernel() {
        let fallback = plan(
            &[
                ("egress", Availability::CgroupHooks),
                ("exec", Availability::TracepointKill),
                ("credential-files", Availability::Fanotify),
            ],
            None,
        );
        let lsm = plan(
            &[
                ("egress", Availability::CgroupHooksAndLsm),
                ("dns", Availability::CgroupHooks),
                ("exec", Availability::Lsm),
                ("credential-files", Availability::Lsm),
                ("unix-sockets", Availability::Lsm),
                ("no-way-out", Availability::Lsm),
                ("host-settings", Availability::CgroupHooks),
                ("secrets", Availability::Attested(None)),
            ],
            None,
        );
        let mut seen: Vec<Mechanism> =
            [fallback, lsm].iter().flat_map(|p| p.report(None)).flat_map(|r| r.events).collect();
        seen.sort_by_key(|m| *m as u8);
        seen.dedup();
        let mut all = Mechanism::ALL.to_vec();
        all.sort_by_key(|m| *m as u8);
        assert_eq!(seen, all, "the metric's mechanism labels cover every fence.mechanism value of events");
        // Not enforced: no event values.
        assert!(plan(&[], None).report(None).iter().all(|r| r.events.is_empty()));
    }

    #[test]
    fn every_unit_names_distinct_maps_and_operations() {
        let mut maps: Vec<Map> = UNITS.iter().flat_map(|u| u.maps.iter().copied()).collect();
        maps.sort();
        let mut policy = Map::POLICY.to_vec();
        policy.sort();
        assert_eq!(maps, policy, "every policy map has exactly one owning unit");
        let mut ops: Vec<Operation> = UNITS.iter().flat_map(|u| u.operations.iter().copied()).collect();
        ops.sort();
        assert_eq!(ops, Operation::ALL.to_vec(), "every operation is named by exactly one unit");
    }
}
