//! Bindings: which cgroups carry which identity, each identity's mode and flags, and the
//! cgroup paths of followed units, which the kernel binds as it creates them
//! (`tp_btf/cgroup_mkdir`), before any process of a restarted unit can run. Without that
//! program the agent binds a restarted unit's cgroup when it sees it (inotify), milliseconds
//! later.

use fence_common::{IdentityInfo, Map, SCOPE_ALL, SCOPE_POINTS, Scope, ScopePoint, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags, no_host_entries};
use crate::{
    kernel::MapEntry,
    policy::{PolicyError, SelectorKind},
};

pub const UNIT: Unit = Unit {
    name: "unit-restarts",
    maps: &[Map::Identities, Map::Cgroups, Map::Units, Map::Scope],
    operations: &[],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: true,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    match ctx.loader.load_tracepoint(programs::TP_CGROUP_MKDIR, "cgroup_mkdir") {
        Ok(()) => Availability::Tracepoint,
        Err(e) => Availability::Unavailable(ctx.refused(&format!("tp_btf/cgroup_mkdir refused ({e})"))),
    }
}

fn report(a: &Availability, _: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Tracepoint => FenceReport::enforced(
            UNIT.name,
            "tp_btf/cgroup_mkdir",
            "a restarted unit's new cgroup is bound to its identity as the kernel creates it",
        ),
        other => FenceReport {
            fence: UNIT.name,
            enforced: false,
            mechanism: "inotify (user space)".into(),
            notes: format!(
                "{}: a restarted unit's new cgroup is bound when the agent sees it, milliseconds later; a process \
                 the unit starts in that time runs unfenced",
                other.reason()
            ),
            remedy: None,
            events: Vec::new(),
        },
    }
}

/// The identity's info, its bound cgroups, and its units' cgroup paths.
fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let c = input.compiled;
    out.push(MapEntry::Identity { identity: c.id, info: c.info });
    for cg in &input.identity.cgroups {
        if let SelectorKind::Unit(_) = cg.kind {
            out.push(MapEntry::Unit { path: cg.path.clone(), identity: c.id });
        }
    }
    out.extend(c.cgroups.iter().map(|&(_, cgroup_id)| MapEntry::Cgroup { cgroup_id, identity: c.id }));
    Ok(())
}

/// The value of an identity's entry in [`Map::Identities`].
pub fn info(mode: u8, flags: u8, policy_version: u32) -> IdentityInfo {
    IdentityInfo { mode, flags, _pad: [0; 2], policy_version }
}

/// Where the cgroup programs attach for `set`: each bound cgroup; for a unit, its parent (a
/// unit's cgroup is created again at every restart, and a new cgroup inherits the programs of
/// its parent from its first instant); the nearest existing ancestor of a cgroup that does not
/// exist yet; and none below another (a program attached twice on one path would run twice).
/// Processes outside these subtrees never run fence's cgroup programs.
pub fn attach_points(
    set: &crate::policy::PolicySet,
    exists: impl Fn(&str) -> bool,
) -> std::collections::BTreeSet<String> {
    let parent = |p: &str| match p.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => p[..i].to_owned(),
    };
    let mut points = std::collections::BTreeSet::new();
    for identity in &set.identities {
        for cg in &identity.cgroups {
            let mut p = match cg.kind {
                SelectorKind::Unit(_) => parent(&cg.path),
                SelectorKind::Cgroup | SelectorKind::Managed => cg.path.clone(),
            };
            while p != "/" && !exists(&p) {
                p = parent(&p);
            }
            points.insert(p);
        }
    }
    // A point goes when another point is "/" or a path ending just before one of its '/':
    // its own slashes name every candidate, so each point costs its length, not the number
    // of points.
    let below_another = |p: &str| {
        (p != "/" && points.contains("/"))
            || p.match_indices('/').any(|(i, _)| p.get(..i).is_some_and(|q| points.contains(q)))
    };
    points.iter().filter(|p| !below_another(p)).cloned().collect()
}

/// The cgroup id of the root of the cgroup v2 hierarchy.
const ROOT_CGROUP_ID: u64 = 1;

/// The kernel's scope for attach points `points` (see [`Scope`]): each point's cgroup id and
/// level. Every cgroup bound in the generation is at or below one of them, and so is every
/// cgroup the kernel binds while it is live (a restarted unit's, below its parent). It is
/// [`SCOPE_ALL`] (the identity lookup for every task, as without a scope) when the points
/// cannot be named exactly: more than [`SCOPE_POINTS`] of them, a point whose id cannot be
/// read (`id_of`: a path's cgroup id now), or a cgroup2 mount whose root is not the
/// hierarchy's (in a cgroup namespace paths do not give the kernel's levels).
pub fn scope(points: &std::collections::BTreeSet<String>, id_of: impl Fn(&str) -> Option<u64>) -> Scope {
    let all = Scope { count: SCOPE_ALL, ..Scope::default() };
    if points.len() > SCOPE_POINTS || id_of("/") != Some(ROOT_CGROUP_ID) {
        return all;
    }
    let mut scope = Scope::default();
    for (slot, p) in scope.points.iter_mut().zip(points) {
        let Some(cgroup_id) = id_of(p) else { return all };
        let level = p.split('/').filter(|c| !c.is_empty()).count() as u32;
        *slot = ScopePoint { cgroup_id, level, _pad: 0 };
    }
    scope.count = points.len() as u32;
    scope
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::tests::{identity, set},
        policy::BoundCgroup,
    };

    fn bound(path: &str, kind: SelectorKind) -> BoundCgroup {
        BoundCgroup { path: path.into(), id: None, kind }
    }

    #[test]
    fn scope_names_each_point_with_its_level_or_falls_back_to_all() {
        let points = |ps: &[&str]| ps.iter().map(|p| (*p).to_owned()).collect::<std::collections::BTreeSet<_>>();
        let ids = |p: &str| match p {
            "/" => Some(1),
            "/fence.slice" => Some(40),
            "/a/b/c" => Some(77),
            _ => None,
        };
        let s = scope(&points(&["/a/b/c", "/fence.slice"]), ids);
        assert_eq!(s.count, 2);
        assert_eq!((s.points[0].cgroup_id, s.points[0].level), (77, 3));
        assert_eq!((s.points[1].cgroup_id, s.points[1].level), (40, 1));
        // The root: level 0, every task in scope.
        let s = scope(&points(&["/"]), ids);
        assert_eq!((s.count, s.points[0].cgroup_id, s.points[0].level), (1, 1, 0));
        // Nothing bound: nothing in scope.
        assert_eq!(scope(&points(&[]), ids).count, 0);
        // A point whose id cannot be read, too many points, a mount that is not the root.
        assert_eq!(scope(&points(&["/gone"]), ids).count, SCOPE_ALL);
        let many: Vec<String> = (0..=SCOPE_POINTS).map(|i| format!("/p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(scope(&points(&many), |_| Some(1)).count, SCOPE_ALL);
        let namespaced = |p: &str| if p == "/" { Some(9_001) } else { Some(5) };
        assert_eq!(scope(&points(&["/x"]), namespaced).count, SCOPE_ALL);
    }

    #[test]
    fn attach_points_cover_bound_subtrees_once() {
        let mut a = identity("a", vec![]);
        a.cgroups = vec![bound("/fence/a", SelectorKind::Cgroup), bound("/fence/a/sub", SelectorKind::Cgroup)];
        let mut b = identity("b", vec![]);
        b.cgroups = vec![bound("/system.slice/ci.service", SelectorKind::Unit("ci.service".into()))];
        let mut c = identity("c", vec![]);
        c.cgroups = vec![bound("/agent/fence-managed/c", SelectorKind::Managed)];
        let mut d = identity("d", vec![]);
        d.cgroups = vec![bound("/not/yet/there", SelectorKind::Unit("there".into()))];
        let existing = ["/fence/a", "/fence/a/sub", "/system.slice", "/agent/fence-managed/c", "/not"];
        let points = attach_points(&set(vec![a, b, c, d]), |p| existing.contains(&p));
        let points: Vec<&str> = points.iter().map(String::as_str).collect();
        assert_eq!(points, ["/agent/fence-managed/c", "/fence/a", "/not", "/system.slice"]);
        // A unit at the top level attaches at the root.
        let mut e = identity("e", vec![]);
        e.cgroups = vec![bound("/top.service", SelectorKind::Unit("top.service".into()))];
        let points = attach_points(&set(vec![e]), |_| true);
        assert_eq!(points.into_iter().collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn attach_points_drop_exactly_the_paths_below_another() {
        // The pairwise rule attach_points implemented before (quadratic in the points).
        let below = |p: &str, q: &str| p != q && (q == "/" || p.starts_with(&format!("{q}/")));
        let paths =
            ["", "/", "//", "/a", "/a/b", "/a/b/c", "/ab", "/ab/c", "/b", "/b/a", "/a//b", "/a/", "/c/a/b", "/c/a"];
        // Every subset of the paths, as the bound cgroups of one identity.
        for mask in 0u32..1 << paths.len() {
            let chosen: Vec<&str> = (0..paths.len()).filter(|i| mask & (1 << i) != 0).map(|i| paths[i]).collect();
            let mut a = identity("a", vec![]);
            a.cgroups = chosen.iter().map(|p| bound(p, SelectorKind::Cgroup)).collect();
            let got: Vec<String> = attach_points(&set(vec![a]), |_| true).into_iter().collect();
            let all: std::collections::BTreeSet<&str> = chosen.iter().copied().collect();
            let expected: Vec<String> =
                all.iter().filter(|p| !all.iter().any(|q| below(p, q))).map(|p| p.to_string()).collect();
            assert_eq!(got, expected, "{chosen:?}");
        }
    }
}
