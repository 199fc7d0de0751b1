//! The `managed: true` selector: where the identity's cgroup is made (below `[managed]
//! cgroup_parent`, or below the agent's own cgroup), and the cgroup of workloads started
//! before that setting.

use super::{CgroupResolver, Ctx, MANAGED_DIR, PolicyErrorKind, ResolveError};
use crate::policy::set::{BoundCgroup, SelectorKind};

/// The bound cgroup of a `managed: true` selector at `base` (`selectors[N]`); `None` (with
/// the error pushed) when the configured parent is not there.
pub(super) fn managed(
    ctx: &mut Ctx<'_>,
    base: &str,
    identity: &str,
    resolver: Option<&dyn CgroupResolver>,
) -> Option<BoundCgroup> {
    let parent = match resolver {
        Some(r) => match r.managed_parent() {
            Some(parent) => match r.resolve(parent) {
                Ok(_) => Some(parent.to_owned()),
                Err(e) => {
                    let why = match e {
                        ResolveError::NotFound => {
                            "it does not exist (under systemd: is fence-workloads.service running?)".to_owned()
                        }
                        ResolveError::Other(why) => why,
                    };
                    let path = parent.to_owned();
                    let why = format!(
                        "the parent of managed cgroups ([managed] cgroup_parent in the agent's configuration): {why}"
                    );
                    ctx.push(&format!("{base}.managed"), PolicyErrorKind::CgroupUnusable { path, why });
                    return None;
                }
            },
            None => r.own_cgroup(),
        },
        None => None,
    };
    let path = match parent {
        Some(p) => format!("{}/{MANAGED_DIR}/{identity}", p.trim_end_matches('/')),
        None => format!("/<agent>/{MANAGED_DIR}/{identity}"),
    };
    Some(BoundCgroup { path, id: None, kind: SelectorKind::Managed })
}

/// Workloads of a managed identity started before `[managed] cgroup_parent` was set (an
/// upgrade to the packaged configuration) still run in the identity's cgroup below the agent's
/// own: while that cgroup is there it stays bound to the identity, so they stay fenced.
pub(super) fn legacy(
    cgroups: &[BoundCgroup],
    identity: &str,
    resolver: Option<&dyn CgroupResolver>,
) -> Option<BoundCgroup> {
    let r = resolver?;
    r.managed_parent()?;
    if !cgroups.iter().any(|c| c.kind == SelectorKind::Managed) {
        return None;
    }
    let path = format!("{}/{MANAGED_DIR}/{identity}", r.own_cgroup()?.trim_end_matches('/'));
    let id = r.resolve(&path).ok()?;
    Some(BoundCgroup { path, id: Some(id), kind: SelectorKind::Cgroup })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::super::validate;
    use crate::policy::{CgroupResolver, Format, PolicySet, ResolveError, SourceDocument, parse_document};

    /// Cgroups by path; the agent in /system.slice/agent.service.
    struct Hosts {
        ids: HashMap<&'static str, u64>,
        managed: Option<String>,
    }

    impl CgroupResolver for Hosts {
        fn root(&self) -> &Path {
            Path::new("/sys/fs/cgroup")
        }
        fn resolve(&self, path: &str) -> Result<u64, ResolveError> {
            self.ids.get(path).copied().ok_or(ResolveError::NotFound)
        }
        fn own_cgroup(&self) -> Option<String> {
            Some("/system.slice/agent.service".into())
        }
        fn find_unit(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn managed_parent(&self) -> Option<&str> {
            self.managed.as_deref()
        }
    }

    #[test]
    fn managed_cgroups_go_below_the_configured_parent_or_the_agent() {
        let text =
            "schema: 1\nidentities:\n  - name: bot\n    owner: o\n    purpose: p\n    selectors: [{managed: true}]\n";
        let doc = || SourceDocument { path: "p.yaml".into(), document: parse_document(text, Format::Yaml).unwrap() };
        let now = "2026-11-25T12:00:00Z".parse().unwrap();
        let check = |h: &Hosts| validate(&[doc()], Some(h), now);
        let paths =
            |set: PolicySet| -> Vec<String> { set.identities[0].cgroups.iter().map(|c| c.path.clone()).collect() };
        let mut h = Hosts { ids: HashMap::from([("/system.slice/agent.service", 13)]), managed: None };
        assert_eq!(paths(check(&h).unwrap()), ["/system.slice/agent.service/fence-managed/bot"]);
        h.ids.insert("/fence.slice/fence-workloads.service", 20);
        h.managed = Some("/fence.slice/fence-workloads.service".into());
        assert_eq!(paths(check(&h).unwrap()), ["/fence.slice/fence-workloads.service/fence-managed/bot"]);
        // Workloads started before the setting (an upgrade) stay bound where they run.
        h.ids.insert("/system.slice/agent.service/fence-managed/bot", 21);
        let set = check(&h).unwrap();
        assert_eq!(set.identities[0].cgroups[1].id, Some(21));
        assert_eq!(
            paths(set),
            ["/fence.slice/fence-workloads.service/fence-managed/bot", "/system.slice/agent.service/fence-managed/bot"]
        );
        // A parent that is not there is an error naming the selector and the setting.
        h.managed = Some("/fence.slice/gone.service".into());
        let e = check(&h).unwrap_err().to_string();
        assert!(
            e.contains("selectors[0].managed")
                && e.contains("/fence.slice/gone.service")
                && e.contains("cgroup_parent"),
            "{e}"
        );
    }
}
