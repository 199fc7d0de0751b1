use std::os::unix::fs::PermissionsExt as _;

use super::{
    http::strip_url_queries,
    secret::{read_credential, scrub},
    *,
};

fn config(extra: &str) -> VaultConfig {
    crate::config::Config::parse(&format!("[vault]\n{extra}")).unwrap().vault.unwrap()
}

#[test]
fn vault_secret_is_redacted() {
    let s = Secret::new("hvs.s3cr3t-token");
    assert_eq!(format!("{s}"), "<redacted>");
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
    assert_eq!(s.expose(), "hvs.s3cr3t-token");
    assert_eq!(scrub("bad token hvs.s3cr3t-token here", &[&s]), "bad token <redacted> here");
}

#[test]
fn vault_paths_are_built_and_escaped() {
    assert_eq!(
        kv_api_path("secret", "data", "fence", "identities/ci-runner").unwrap(),
        "secret/data/fence/identities/ci-runner"
    );
    assert_eq!(kv_api_path("secret", "metadata", "fence", "").unwrap(), "secret/metadata/fence");
    assert_eq!(kv_api_path("secret", "metadata", "fence", "identities/").unwrap(), "secret/metadata/fence/identities");
    assert_eq!(kv_api_path("kv/team", "data", "", "index").unwrap(), "kv/team/data/index");
    assert_eq!(
        kv_api_path("secret", "data", "fence", "status/web 1?x=y#z%").unwrap(),
        "secret/data/fence/status/web%201%3Fx%3Dy%23z%25"
    );
    assert_eq!(kv_api_path("secret", "data", "fence", "é").unwrap(), "secret/data/fence/%C3%A9");
    for bad in ["a//b", "a/../b", "./a", "a/.", ".."] {
        let e = kv_api_path("secret", "data", "fence", bad).unwrap_err();
        assert!(matches!(e, VaultError::Config(_)), "{bad}: {e}");
    }
}

#[test]
fn vault_url_queries_are_stripped() {
    assert_eq!(
        strip_url_queries("error for url (http://v:8200/v1/x?version=2): refused"),
        "error for url (http://v:8200/v1/x): refused"
    );
    assert_eq!(strip_url_queries("plain text? yes"), "plain text? yes");
}

#[test]
fn vault_credential_files_must_be_private() {
    let dir_guard = tempfile::tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret-id");
    std::fs::write(&file, "s3cr3t-id\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read_credential(&file).unwrap().expose(), "s3cr3t-id");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(read_credential(&file).unwrap().expose(), "s3cr3t-id");
    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = read_credential(&file).unwrap_err();
        assert!(matches!(e, VaultError::Permissions { mode: m, .. } if m == mode), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&file.display().to_string()) && text.contains(&format!("{mode:04o}")), "{text}");
        assert!(!text.contains("s3cr3t") && !format!("{e:?}").contains("s3cr3t"), "{text}");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, "\n").unwrap();
    assert!(read_credential(&file).unwrap_err().to_string().ends_with("is empty"));
    std::fs::write(&file, "two\nlines\n").unwrap();
    assert!(!read_credential(&file).unwrap_err().to_string().contains("two"));
    let e = read_credential(&dir.join("missing")).unwrap_err();
    assert!(matches!(e, VaultError::Io { .. }), "{e}");
}

#[test]
fn vault_client_new_checks_config_and_warns_nothing_secret() {
    let c =
        VaultClient::new(&config("address = \"http://127.0.0.1:1\"\ninsecure = true\ntoken_file = \"/nonexistent\"\n"))
            .unwrap();
    assert_eq!(c.token_expires_in(), None);
    assert_eq!(c.kv_api("data", "index").unwrap(), "secret/data/fence/index");
    // The configuration is taken as checked: the address without its trailing `/`.
    assert!(format!("{c:?}").contains("address: \"http://127.0.0.1:1\""), "{c:?}");
    let prefixed =
        VaultClient::new(&config("address = \"http://v:8200/bao/\"\ninsecure = true\ntoken_file = \"/t\"\n")).unwrap();
    assert!(format!("{prefixed:?}").contains("address: \"http://v:8200/bao\""), "{prefixed:?}");
    // A plain-HTTP address without `insecure` never gets this far.
    let e = crate::config::Config::parse("[vault]\naddress = \"http://v\"\ntoken_file = \"/t\"\n").unwrap_err();
    assert!(e.starts_with("vault.address: "), "{e}");
    let missing_ca = config("address = \"https://v\"\ntoken_file = \"/t\"\nca_file = \"/nonexistent/ca.pem\"\n");
    assert!(matches!(VaultClient::new(&missing_ca), Err(VaultError::Io { .. })));
}

#[test]
fn vault_error_texts() {
    let e = VaultError::CasConflict { path: "index".into(), expected: Some(3), current: Some(5) };
    assert_eq!(
        e.to_string(),
        "vault: index: check-and-set conflict: written expecting version 3, the current version is 5"
    );
    let e = VaultError::Status {
        method: "GET".into(),
        path: "sys/health".into(),
        status: 429,
        errors: vec!["standby".into()],
    };
    assert_eq!(e.to_string(), "vault: GET sys/health: HTTP 429: standby");
    let e = VaultError::Permissions { path: "/etc/fence/s".into(), mode: 0o644 };
    assert_eq!(
        e.to_string(),
        "vault: /etc/fence/s: mode 0644 lets group or others read or write it; refusing it (chmod 600 /etc/fence/s)"
    );
}
