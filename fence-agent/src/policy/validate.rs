//! Checks a set of policy documents as a whole and turns it into a [`PolicySet`]: every
//! value parsed, every cgroup resolved, every conflict found. All problems are reported
//! together; a set with any problem is refused as a whole.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use fence_common::{MAX_CGROUP_DEPTH, PROTO_TCP, PROTO_UDP};
use jiff::{Timestamp, civil::Date, tz::TimeZone};

use super::{
    PolicyError, PolicyErrorKind, PolicyErrors, SCHEMA_VERSION, SourceDocument,
    dns::Destination,
    glob::PathGlob,
    model::{ExecEntryDoc, IdentityDoc, Protocol},
    net::PortRange,
    set::{
        BoundCgroup, EgressRule, ExecPolicy, ExecRule, Identity, PolicySet, PolicyVersion, SelectorKind, UnixPolicy,
    },
};
use crate::names;

mod grants;
mod managed;
mod secrets;

/// Looks cgroups up on the host. `fence-agent` uses the real cgroup2 mount; unit tests use a
/// table.
pub trait CgroupResolver {
    /// Where the cgroup2 hierarchy is mounted (for messages).
    fn root(&self) -> &Path;
    /// The cgroup id of `path` (normalised, starting with `/`).
    fn resolve(&self, path: &str) -> Result<u64, ResolveError>;
    /// The agent's own cgroup, which no identity may contain.
    fn own_cgroup(&self) -> Option<String>;
    /// The cgroup paths of a systemd unit currently on the host (normally one).
    fn find_unit(&self, unit: &str) -> Vec<String>;
    /// The configured parent of managed identities' cgroups (`[managed] cgroup_parent`);
    /// `None`: the agent's own cgroup.
    fn managed_parent(&self) -> Option<&str> {
        None
    }
}

/// Where managed identities' cgroups live, below their parent (the agent's own cgroup, or
/// `[managed] cgroup_parent`).
pub const MANAGED_DIR: &str = "fence-managed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    NotFound,
    Other(String),
}

/// Validates `docs` as one policy set. `resolver` is `None` only for offline checks.
pub fn validate(
    docs: &[SourceDocument],
    resolver: Option<&dyn CgroupResolver>,
    now: Timestamp,
) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut identities = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for doc in docs {
        let file_err =
            |field: &str, kind| PolicyError { file: doc.path.clone(), identity: None, field: field.to_owned(), kind };
        match doc.document.schema {
            None => errors.push(file_err("schema", PolicyErrorKind::Required(" (schema: 1)"))),
            Some(s) if s != u64::from(SCHEMA_VERSION) => errors
                .push(file_err("schema", PolicyErrorKind::UnsupportedSchema { found: s, supported: SCHEMA_VERSION })),
            Some(_) => {}
        }
        for (index, idoc) in doc.document.identities.iter().enumerate() {
            let mut ctx = Ctx { file: &doc.path, identity: None, errors: &mut errors, prefix: String::new() };
            if let Err(kind) = check_name(&idoc.name) {
                ctx.push(&format!("identities[{index}].name"), kind);
                continue;
            }
            ctx.identity = Some(&idoc.name);
            if let Some(other) = names.get(&idoc.name) {
                let other = if other == &doc.path { "this file".to_owned() } else { other.display().to_string() };
                ctx.push("name", PolicyErrorKind::DuplicateIdentity { other });
                continue;
            }
            names.insert(idoc.name.clone(), doc.path.clone());
            if let Some(identity) = identity(&mut ctx, idoc, resolver, now) {
                identities.push(identity);
            }
        }
    }
    check_cgroup_conflicts(&identities, &mut errors);
    if errors.is_empty() { Ok(PolicySet { identities }) } else { Err(PolicyErrors(errors)) }
}

struct Ctx<'a> {
    file: &'a Path,
    identity: Option<&'a str>,
    errors: &'a mut Vec<PolicyError>,
    /// Put before every field named (`grants[2].` while a grant's sections are checked).
    prefix: String,
}

impl Ctx<'_> {
    fn push(&mut self, field: &str, kind: PolicyErrorKind) {
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            identity: self.identity.map(str::to_owned),
            field: format!("{}{field}", self.prefix),
            kind,
        });
    }
}

/// The identity-name rule ([`names::check_name`]), as a policy error.
fn check_name(name: &str) -> Result<(), PolicyErrorKind> {
    names::check_name(name).map_err(|why| PolicyErrorKind::InvalidName { value: name.to_owned(), why })
}

fn identity(
    ctx: &mut Ctx<'_>,
    doc: &IdentityDoc,
    resolver: Option<&dyn CgroupResolver>,
    now: Timestamp,
) -> Option<Identity> {
    let before = ctx.errors.len();
    let owner = required_text(ctx, "owner", doc.owner.as_deref(), " (who answers for this identity)");
    let purpose = required_text(ctx, "purpose", doc.purpose.as_deref(), " (why this identity exists)");
    let created = doc.created.as_deref().and_then(|t| timestamp(ctx, "created", t));
    let expires = doc.expires.as_deref().and_then(|t| timestamp(ctx, "expires", t));
    if let (Some(c), Some(e)) = (created, expires)
        && e <= c
    {
        ctx.push(
            "expires",
            PolicyErrorKind::ExpiresBeforeCreated {
                created: doc.created.clone().unwrap_or_default(),
                expires: doc.expires.clone().unwrap_or_default(),
            },
        );
    }
    if doc.selectors.is_empty() {
        ctx.push("selectors", PolicyErrorKind::EmptyList);
    }
    let mut cgroups: Vec<BoundCgroup> =
        doc.selectors.iter().enumerate().filter_map(|(i, s)| selector(ctx, i, s, &doc.name, resolver)).collect();
    if let Some(legacy) = managed::legacy(&cgroups, &doc.name, resolver) {
        cgroups.push(legacy);
    }
    let egress: Vec<EgressRule> = doc.egress.iter().enumerate().filter_map(|(i, r)| egress_rule(ctx, i, r)).collect();
    let exec = doc.exec.as_ref().map(|e| exec_policy(ctx, e));
    let file_exceptions = doc.files.as_ref().map(|f| globs(ctx, "files.allow", &f.allow, true)).unwrap_or_default();
    let unix = doc.unix.as_ref().map(|u| unix_policy(ctx, &u.allow));
    let grantable = grants::grantables(ctx, doc);
    let secrets = secrets::secrets(ctx, doc, &grantable);
    if ctx.errors.len() != before {
        return None;
    }
    Some(Identity {
        name: doc.name.clone(),
        owner: owner?,
        purpose: purpose?,
        created,
        expires,
        expired: expires.is_some_and(|e| e <= now),
        mode: doc.mode,
        cgroups,
        egress,
        exec,
        file_exceptions,
        unix,
        grantable,
        grants_in_force: Vec::new(),
        secrets,
        version: PolicyVersion::of(doc),
        source: ctx.file.to_owned(),
    })
}

fn required_text(ctx: &mut Ctx<'_>, field: &str, value: Option<&str>, hint: &'static str) -> Option<String> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => Some(v.to_owned()),
        _ => {
            ctx.push(field, PolicyErrorKind::Required(hint));
            None
        }
    }
}

/// A date (`2027-06-30`, midnight UTC: the identity expires as that day starts) or an RFC 3339
/// timestamp.
fn timestamp(ctx: &mut Ctx<'_>, field: &str, text: &str) -> Option<Timestamp> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    match text.parse::<Date>().and_then(|d| d.to_zoned(TimeZone::UTC)) {
        Ok(z) => Some(z.timestamp()),
        Err(_) => {
            ctx.push(
                field,
                PolicyErrorKind::InvalidValue {
                    what: "date",
                    value: text.to_owned(),
                    why: "write a date (2027-06-30) or an RFC 3339 timestamp \
                          (2027-06-30T12:00:00Z)"
                        .to_owned(),
                },
            );
            None
        }
    }
}

fn selector(
    ctx: &mut Ctx<'_>,
    index: usize,
    s: &super::model::SelectorDoc,
    identity: &str,
    resolver: Option<&dyn CgroupResolver>,
) -> Option<BoundCgroup> {
    let base = format!("selectors[{index}]");
    let set = [s.cgroup.is_some(), s.unit.is_some(), s.managed.is_some()].iter().filter(|b| **b).count();
    if set != 1 {
        ctx.push(
            &base,
            PolicyErrorKind::InvalidValue {
                what: "selector",
                value: format!("{s:?}"),
                why: "give exactly one of `cgroup`, `unit` or `managed`".to_owned(),
            },
        );
        return None;
    }
    if s.slice.is_some() && s.unit.is_none() {
        ctx.push(
            &format!("{base}.slice"),
            PolicyErrorKind::InvalidValue {
                what: "selector",
                value: s.slice.clone().unwrap_or_default(),
                why: "`slice` only goes with `unit`".to_owned(),
            },
        );
        return None;
    }
    if let Some(raw) = &s.cgroup {
        return cgroup(ctx, &format!("{base}.cgroup"), raw, resolver);
    }
    if let Some(unit) = &s.unit {
        return unit_selector(ctx, &format!("{base}.unit"), unit, s.slice.as_deref(), resolver);
    }
    if s.managed != Some(true) {
        ctx.push(
            &format!("{base}.managed"),
            PolicyErrorKind::InvalidValue {
                what: "selector",
                value: "false".into(),
                why: "write `managed: true`, or leave the selector out".to_owned(),
            },
        );
        return None;
    }
    managed::managed(ctx, &base, identity, resolver)
}

const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount", ".swap", ".timer", ".target"];

fn unit_name_ok(name: &str) -> bool {
    UNIT_SUFFIXES.iter().any(|s| name.ends_with(s) && name.len() > s.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))
}

/// systemd's cgroup path of a slice: `a-b.slice` lives at `/a.slice/a-b.slice`.
fn slice_path(slice: &str) -> String {
    let stem = slice.trim_end_matches(".slice");
    if stem == "-" || stem.is_empty() {
        return String::new();
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&format!("/{prefix}.slice"));
    }
    path
}

fn unit_selector(
    ctx: &mut Ctx<'_>,
    field: &str,
    unit: &str,
    slice: Option<&str>,
    resolver: Option<&dyn CgroupResolver>,
) -> Option<BoundCgroup> {
    let invalid = |why: String| PolicyErrorKind::InvalidValue { what: "unit", value: unit.to_owned(), why };
    if !unit_name_ok(unit) {
        ctx.push(field, invalid(format!("not a systemd unit name (one of {})", UNIT_SUFFIXES.join(", "))));
        return None;
    }
    if let Some(sl) = slice
        && !(unit_name_ok(sl) && sl.ends_with(".slice"))
    {
        ctx.push(field, invalid(format!("slice {sl:?} is not a slice name")));
        return None;
    }
    let found = resolver.map(|r| r.find_unit(unit)).unwrap_or_default();
    let path = match found.as_slice() {
        [one] => one.clone(),
        [] => match (unit.ends_with(".slice"), slice) {
            (true, _) => slice_path(unit),
            (false, Some(sl)) => format!("{}/{unit}", slice_path(sl)),
            (false, None) => format!("/system.slice/{unit}"),
        },
        many => {
            ctx.push(
                field,
                invalid(format!("found in several cgroups ({}); name the cgroup instead", many.join(", "))),
            );
            return None;
        }
    };
    if path.len() >= fence_common::UNIT_PATH_LEN {
        ctx.push(
            field,
            invalid(format!("its cgroup path {path} is longer than {} bytes", fence_common::UNIT_PATH_LEN - 1)),
        );
        return None;
    }
    if let Some(own) = resolver.and_then(|r| r.own_cgroup())
        && (own == path || own.starts_with(&format!("{path}/")))
    {
        ctx.push(field, invalid("its cgroup contains the fence agent itself".into()));
        return None;
    }
    Some(BoundCgroup { path, id: None, kind: SelectorKind::Unit(unit.to_owned()) })
}

fn cgroup(ctx: &mut Ctx<'_>, field: &str, raw: &str, resolver: Option<&dyn CgroupResolver>) -> Option<BoundCgroup> {
    let unusable = |why: &str| PolicyErrorKind::CgroupUnusable { path: raw.to_owned(), why: why.to_owned() };
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        let why = "the root cgroup holds every process on the host, the agent included";
        ctx.push(field, unusable(why));
        return None;
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        ctx.push(field, unusable("'.' and '..' are not allowed in cgroup paths"));
        return None;
    }
    if parts.len() > MAX_CGROUP_DEPTH as usize {
        ctx.push(field, unusable(&format!("deeper than {MAX_CGROUP_DEPTH} levels")));
        return None;
    }
    let path = format!("/{}", parts.join("/"));
    let Some(resolver) = resolver else {
        return Some(BoundCgroup { path, id: None, kind: SelectorKind::Cgroup });
    };
    if let Some(own) = resolver.own_cgroup()
        && (own == path || own.starts_with(&format!("{path}/")))
    {
        ctx.push(field, unusable("it contains the fence agent itself"));
        return None;
    }
    match resolver.resolve(&path) {
        Ok(id) => Some(BoundCgroup { path, id: Some(id), kind: SelectorKind::Cgroup }),
        Err(ResolveError::NotFound) => {
            let root = resolver.root().display().to_string();
            ctx.push(field, PolicyErrorKind::CgroupNotFound { path, root });
            None
        }
        Err(ResolveError::Other(why)) => {
            ctx.push(field, unusable(&why));
            None
        }
    }
}

fn egress_rule(ctx: &mut Ctx<'_>, index: usize, doc: &super::model::EgressDoc) -> Option<EgressRule> {
    let before = ctx.errors.len();
    let base = format!("egress[{index}]");
    if doc.to.is_empty() {
        ctx.push(&format!("{base}.to"), PolicyErrorKind::EmptyList);
    }
    if doc.ports.is_empty() {
        ctx.push(&format!("{base}.ports"), PolicyErrorKind::EmptyList);
    }
    let (mut nets, mut names) = (Vec::new(), Vec::new());
    for (i, t) in doc.to.iter().enumerate() {
        match Destination::parse(t) {
            Ok(Destination::Net(n)) => nets.push(n),
            Ok(Destination::Name(n)) => names.push(n),
            Err(kind) => ctx.push(&format!("{base}.to[{i}]"), kind),
        }
    }
    let mut ports = Vec::new();
    for (i, p) in doc.ports.iter().enumerate() {
        match PortRange::parse(p) {
            Ok(r) => ports.push(r),
            Err(kind) => ctx.push(&format!("{base}.ports[{i}]"), kind),
        }
    }
    let name = match &doc.name {
        Some(n) => match check_name(n) {
            Ok(()) => n.clone(),
            Err(kind) => {
                ctx.push(&format!("{base}.name"), kind);
                return None;
            }
        },
        None => base,
    };
    if ctx.errors.len() != before {
        return None;
    }
    let protocols = match doc.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Any => PROTO_TCP | PROTO_UDP,
    };
    Some(EgressRule { name, nets, names, ports, protocols, grant: 0 })
}

fn path_glob(ctx: &mut Ctx<'_>, field: &str, text: &str, trees: bool) -> Option<PathGlob> {
    match PathGlob::parse(text) {
        Ok(g) if g.is_tree() && !trees => {
            ctx.push(
                field,
                PolicyErrorKind::InvalidValue {
                    what: "path",
                    value: text.to_owned(),
                    why: "'/**' is not allowed here; list the files (a '*' matches the files of a directory)"
                        .to_owned(),
                },
            );
            None
        }
        Ok(g) => Some(g),
        Err(kind) => {
            ctx.push(field, kind);
            None
        }
    }
}

fn globs(ctx: &mut Ctx<'_>, field: &str, list: &[String], trees: bool) -> Vec<PathGlob> {
    list.iter().enumerate().filter_map(|(i, t)| path_glob(ctx, &format!("{field}[{i}]"), t, trees)).collect()
}

/// File names of dynamic loaders: allowing one lets any file run through it (`ld.so ./prog`).
pub fn is_dynamic_loader(name: &str) -> bool {
    name.starts_with("ld-linux") || name.starts_with("ld.so") || (name.starts_with("ld-") && name.contains(".so"))
}

fn exec_policy(ctx: &mut Ctx<'_>, doc: &super::model::ExecDoc) -> ExecPolicy {
    let mut allow = Vec::new();
    for (i, entry) in doc.allow.iter().enumerate() {
        let field = format!("exec.allow[{i}]");
        let (path, sha) = match entry {
            ExecEntryDoc::Path(p) => (p.as_str(), None),
            ExecEntryDoc::Pinned(p) => (p.path.as_str(), p.sha256.as_deref()),
        };
        let Some(glob) = path_glob(ctx, &field, path, false) else { continue };
        if glob.components().last().is_some_and(|n| is_dynamic_loader(n)) {
            ctx.push(
                &field,
                PolicyErrorKind::InvalidValue {
                    what: "program",
                    value: path.to_owned(),
                    why: "the dynamic loader runs any file given to it (`ld.so ./program`), which would \
                          defeat the allow-list; dynamically linked programs do not need it listed"
                        .to_owned(),
                },
            );
            continue;
        }
        let sha256 = match sha {
            None => None,
            Some(hex) => match parse_sha256(hex) {
                Some(h) => Some(h),
                None => {
                    ctx.push(
                        &format!("{field}.sha256"),
                        PolicyErrorKind::InvalidValue {
                            what: "sha256",
                            value: hex.to_owned(),
                            why: "expected 64 hexadecimal digits".to_owned(),
                        },
                    );
                    continue;
                }
            },
        };
        allow.push(ExecRule { glob, sha256 });
    }
    ExecPolicy { allow, fileless: doc.fileless }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_policy(ctx: &mut Ctx<'_>, list: &[String]) -> UnixPolicy {
    let mut paths = Vec::new();
    let mut abstract_names = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let field = format!("unix.allow[{i}]");
        if let Some(name) = entry.strip_prefix('@') {
            if name.is_empty() || name.len() > fence_common::ABSTRACT_NAME_LEN {
                ctx.push(
                    &field,
                    PolicyErrorKind::InvalidValue {
                        what: "abstract socket name",
                        value: entry.clone(),
                        why: format!("must be 1 to {} bytes after '@'", fence_common::ABSTRACT_NAME_LEN),
                    },
                );
                continue;
            }
            abstract_names.push(name.as_bytes().to_vec());
        } else if let Some(g) = path_glob(ctx, &field, entry, false) {
            paths.push(g);
        }
    }
    UnixPolicy { paths, abstract_names }
}

/// One cgroup, one identity: two identities on one cgroup would make its mode and rules
/// ambiguous.
fn check_cgroup_conflicts(identities: &[Identity], errors: &mut Vec<PolicyError>) {
    let mut seen: BTreeMap<String, (&Identity, &str)> = BTreeMap::new();
    for identity in identities {
        for (i, cg) in identity.cgroups.iter().enumerate() {
            let key = match cg.id {
                Some(id) => format!("id:{id}"),
                None => cg.path.clone(),
            };
            if let Some((other, _)) = seen.get(&key) {
                if other.name == identity.name {
                    continue;
                }
                errors.push(PolicyError {
                    file: identity.source.clone(),
                    identity: Some(identity.name.clone()),
                    field: format!("selectors[{i}]"),
                    kind: PolicyErrorKind::CgroupConflict {
                        path: cg.path.clone(),
                        other: other.name.clone(),
                        other_mode: other.mode.as_str(),
                    },
                });
            } else {
                seen.insert(key, (identity, cg.path.as_str()));
            }
        }
    }
}
