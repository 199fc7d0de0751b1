//! The identity's `grants:`: each grantable target checked like the standing sections it
//! mirrors (egress rules, exec programs, file exceptions, unix sockets), with its errors named
//! `grants[N].field`.

use super::{Ctx, PolicyErrorKind, check_name, egress_rule, exec_policy, globs, unix_policy};
use crate::policy::{
    model::{ExecDoc, GrantDoc, IdentityDoc},
    set::{EgressRule, Grantable},
};

/// The identity's `grants:`, each checked like the standing sections it mirrors.
pub(super) fn grantables(ctx: &mut Ctx<'_>, doc: &IdentityDoc) -> Vec<Grantable> {
    let mut out: Vec<Grantable> = Vec::new();
    for (index, g) in doc.grants.iter().enumerate() {
        let field = format!("grants[{index}]");
        if let Err(kind) = check_name(&g.name) {
            ctx.push(&format!("{field}.name"), kind);
            continue;
        }
        if out.iter().any(|o| o.name == g.name) {
            let why = "another grant of this identity has this name".to_owned();
            ctx.push(
                &format!("{field}.name"),
                PolicyErrorKind::InvalidValue { what: "grant name", value: g.name.clone(), why },
            );
            continue;
        }
        if g.egress.is_empty() && g.exec.is_empty() && g.files.is_empty() && g.unix.is_empty() {
            let why = "grants nothing: give it egress, exec, files or unix".to_owned();
            ctx.push(&field, PolicyErrorKind::InvalidValue { what: "grant", value: g.name.clone(), why });
            continue;
        }
        if !g.exec.is_empty() && doc.exec.is_none() {
            let why = "the identity has no exec allow-list, so every program may already run".to_owned();
            ctx.push(
                &format!("{field}.exec"),
                PolicyErrorKind::InvalidValue { what: "grant", value: g.name.clone(), why },
            );
            continue;
        }
        if let Some(t) = grantable(ctx, &field, g) {
            out.push(t);
        }
    }
    out
}

/// One grantable target; `None` (with the errors pushed) when any part is wrong.
fn grantable(ctx: &mut Ctx<'_>, field: &str, g: &GrantDoc) -> Option<Grantable> {
    let before = ctx.errors.len();
    let max_ttl = match g.max_ttl.as_deref().map(crate::duration::parse) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => {
            let why = "must be longer than 0s".to_owned();
            ctx.push(
                &format!("{field}.max_ttl"),
                PolicyErrorKind::InvalidValue { what: "max_ttl", value: "0".into(), why },
            );
            None
        }
        Some(Err(e)) => {
            ctx.push(
                &format!("{field}.max_ttl"),
                PolicyErrorKind::InvalidValue { what: "max_ttl", value: e.text.clone(), why: e.to_string() },
            );
            None
        }
    };
    let saved = std::mem::replace(&mut ctx.prefix, format!("{field}."));
    let egress: Vec<EgressRule> = g.egress.iter().enumerate().filter_map(|(i, r)| egress_rule(ctx, i, r)).collect();
    let exec = exec_policy(ctx, &ExecDoc { allow: g.exec.clone(), fileless: false }).allow;
    let files = globs(ctx, "files", &g.files, true);
    let unix = unix_policy(ctx, &g.unix);
    ctx.prefix = saved;
    if ctx.errors.len() != before {
        return None;
    }
    Some(Grantable { name: g.name.clone(), max_ttl, approval: g.approval, egress, exec, files, unix })
}
