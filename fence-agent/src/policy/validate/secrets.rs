//! The identity's `secrets:` (what the broker may hand its processes), with errors named
//! `secrets[N].field`.

use super::{Ctx, PolicyErrorKind, check_name};
use crate::policy::{
    model::IdentityDoc,
    set::{Grantable, SecretSource, SecretSpec},
};

/// Longest vault path accepted.
const MAX_PATH: usize = 256;

/// The identity's `secrets:`, each checked; a wrong one is left out (with its errors pushed).
pub(super) fn secrets(ctx: &mut Ctx<'_>, doc: &IdentityDoc, grantable: &[Grantable]) -> Vec<SecretSpec> {
    let mut out: Vec<SecretSpec> = Vec::new();
    for (index, s) in doc.secrets.iter().enumerate() {
        let field = format!("secrets[{index}]");
        let invalid = |what, value: &str, why: &str| PolicyErrorKind::InvalidValue {
            what,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        if let Err(kind) = check_name(&s.name) {
            ctx.push(&format!("{field}.name"), kind);
            continue;
        }
        if out.iter().any(|o| o.name == s.name) {
            ctx.push(
                &format!("{field}.name"),
                invalid("secret name", &s.name, "another secret of this identity has this name"),
            );
            continue;
        }
        let source = match (&s.kv, &s.dynamic) {
            (Some(kv), None) => {
                let path = vault_path(&kv.path);
                let key_ok = !kv.key.is_empty() && kv.key.len() <= 128 && !kv.key.chars().any(char::is_control);
                if let Err(why) = &path {
                    ctx.push(&format!("{field}.kv.path"), invalid("KV path", &kv.path, why));
                }
                if !key_ok {
                    ctx.push(
                        &format!("{field}.kv.key"),
                        invalid("KV key", &kv.key, "must be 1 to 128 characters without control characters"),
                    );
                }
                match path {
                    Ok(()) if key_ok => SecretSource::Kv { path: kv.path.clone(), key: kv.key.clone() },
                    _ => continue,
                }
            }
            (None, Some(d)) => {
                let role = dynamic_role(&d.role);
                if let Err(why) = &role {
                    ctx.push(&format!("{field}.dynamic.role"), invalid("dynamic secret role", &d.role, why));
                }
                let ttl = match d.ttl.as_deref().map(crate::duration::parse) {
                    None => Ok(None),
                    Some(Ok(t)) if !t.is_zero() => Ok(Some(t)),
                    Some(Ok(_)) => Err("must be longer than 0s".to_owned()),
                    Some(Err(e)) => Err(e.to_string()),
                };
                if let Err(why) = &ttl {
                    ctx.push(
                        &format!("{field}.dynamic.ttl"),
                        invalid("ttl", d.ttl.as_deref().unwrap_or_default(), why),
                    );
                }
                match (role, ttl) {
                    (Ok(()), Ok(ttl)) => SecretSource::Dynamic { path: d.role.clone(), ttl },
                    _ => continue,
                }
            }
            _ => {
                let why = "give it exactly one of kv (a KV v2 value) and dynamic (a secrets engine's credential)";
                ctx.push(&field, invalid("secret", &s.name, why));
                continue;
            }
        };
        if let Some(g) = &s.grant
            && !grantable.iter().any(|t| &t.name == g)
        {
            let why = "this identity's grants: name no such target";
            ctx.push(&format!("{field}.grant"), invalid("grant", g, why));
            continue;
        }
        out.push(SecretSpec { name: s.name.clone(), source, grant: s.grant.clone() });
    }
    out
}

/// A path below a vault mount: segments of letters, digits, `.`, `_` and `-`, no `.` or `..`
/// segment, no leading or trailing `/`.
fn vault_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err(format!("must be 1 to {MAX_PATH} characters"));
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err("has an empty segment (a leading, trailing or double /)".into());
        }
        if segment == "." || segment == ".." {
            return Err("has a . or .. segment".into());
        }
        if let Some(c) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(format!("has {c:?}: segments are letters, digits, '.', '_' and '-'"));
        }
    }
    Ok(())
}

/// A secrets engine's credential endpoint: `MOUNT/creds/ROLE` (the mount may have several
/// segments).
fn dynamic_role(path: &str) -> Result<(), String> {
    vault_path(path)?;
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 3 || segments[segments.len() - 2] != "creds" {
        return Err("must be MOUNT/creds/ROLE, a secrets engine's credential endpoint (database, aws, rabbitmq, \
                    consul, nomad...); a KV value is written kv: {path, key}"
            .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_paths_and_roles() {
        assert!(vault_path("ai/openai").is_ok());
        assert!(vault_path("a/../b").is_err());
        assert!(vault_path("/a").is_err());
        assert!(vault_path("a b").is_err());
        assert!(dynamic_role("database/creds/ai-readonly").is_ok());
        assert!(dynamic_role("prod/db/creds/x").is_ok());
        assert!(dynamic_role("database/roles/x").is_err());
        assert!(dynamic_role("creds/x").is_err());
    }
}
