use std::time::Duration;

use super::*;
use crate::vault::sign::SigningKey;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults_and_fields() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
    let c = Config::parse("[events]\nstdout = false\nfile = \"/tmp/e.jsonl\"\n").unwrap();
    assert!(!c.events.stdout);
    assert_eq!(c.events.file.as_deref(), Some(Path::new("/tmp/e.jsonl")));
}

#[test]
fn event_file_rotation_defaults_and_limits() {
    let c = Config::parse("").unwrap();
    assert_eq!((c.events.max_bytes, c.events.keep), (64 * 1024 * 1024, 5));
    let c = Config::parse("[events]\nmax_bytes = 0\nkeep = 1\n").unwrap();
    assert_eq!((c.events.max_bytes, c.events.keep), (0, 1));
    let e = Config::parse("[events]\nkeep = 0\n").unwrap_err();
    assert!(e.starts_with("events.keep: must be at least 1"), "{e}");
    let e = Config::parse("[events]\nkeep = 1001\n").unwrap_err();
    assert!(e.starts_with("events.keep: must be at most 1000"), "{e}");
    let e = Config::parse("[events]\nkeep = -1\n").unwrap_err();
    assert!(e.starts_with("events.keep: "), "{e}");
    let e = Config::parse("[events]\nmax_bytes = -5\n").unwrap_err();
    assert!(e.starts_with("events.max_bytes: "), "{e}");
    let e = Config::parse("[events]\nmax_bytes = \"64M\"\n").unwrap_err();
    assert!(e.starts_with("events.max_bytes: "), "{e}");
}

#[test]
fn event_formats_default_to_ecs_and_the_file_follows_stdout_unless_set() {
    use super::events::EventFormat;
    let c = Config::parse("").unwrap();
    assert_eq!((c.events.format, c.events.file_format()), (EventFormat::Ecs, EventFormat::Ecs));
    let c = Config::parse("[events]\nformat = \"both\"\n").unwrap();
    assert_eq!((c.events.format, c.events.file_format()), (EventFormat::Both, EventFormat::Both));
    let c = Config::parse("[events]\nformat = \"ocsf\"\nfile_format = \"ecs\"\n").unwrap();
    assert_eq!((c.events.format, c.events.file_format()), (EventFormat::Ocsf, EventFormat::Ecs));
    for (text, field) in [("format = \"OCSF1\"", "events.format"), ("file_format = \"json\"", "events.file_format")] {
        let e = Config::parse(&format!("[events]\n{text}\n")).unwrap_err();
        assert!(e.starts_with(field) && e.contains("`ecs`, `ocsf`, `both`"), "{e}");
    }
}

#[test]
fn unknown_and_mistyped_fields_name_the_field() {
    let e = Config::parse("[events]\nstdot = true\n").unwrap_err();
    assert!(e.contains("events") && e.contains("stdot"), "{e}");
    let e = Config::parse("[events]\nstdout = \"yes\"\n").unwrap_err();
    assert!(e.starts_with("events.stdout"), "{e}");
}

#[test]
fn protected_set_defaults_extend_and_replace() {
    let c = Config::parse("").unwrap();
    let h = &c.protection;
    assert!(h.files.iter().any(|g| g.as_str() == "/etc/shadow"));
    assert!(h.unix_deny.iter().any(|g| g.as_str() == "/run/docker.sock"));
    let c = Config::parse("[protect]\ndefaults = false\npaths = [\"/srv/keys/**\"]\nenv_roots = [\"/srv\"]\n[unix]\ndefaults = false\ndeny = [\"@admin\"]\n").unwrap();
    let h = &c.protection;
    // The configured tree, and the agent's own audit log (always protected).
    assert_eq!(h.files.len(), 2, "{:?}", h.files);
    assert!(h.files[0].is_tree());
    assert_eq!(h.files[1].as_str(), "/var/log/fence/audit.jsonl*");
    assert_eq!(h.unix_deny_abstract, vec![b"admin".to_vec()]);
    assert!(h.unix_deny.is_empty());
}

#[test]
fn vault_credentials_ca_and_state_are_always_protected() {
    let c = Config::parse(
        "[protect]\ndefaults = false\n[persist]\nstate_dir = \"/srv/fence-state/\"\n[vault]\naddress = \"https://v\"\n\
         role_id_file = \"/k/role\"\nsecret_id_file = \"/k/secret\"\nca_file = \"/k/ca.pem\"\n",
    )
    .unwrap();
    let h = &c.protection;
    let globs: Vec<&str> = h.files.iter().map(|g| g.as_str()).collect();
    assert_eq!(globs, ["/k/role", "/k/secret", "/k/ca.pem", "/srv/fence-state/**", "/var/log/fence/audit.jsonl*"]);
}

#[test]
fn the_agent_logs_are_always_protected() {
    let c = Config::parse(
        "[protect]\ndefaults = false\n[events]\nfile = \"/srv/log/events.jsonl\"\n[audit]\nfile = \"/srv/log/audit\"\n",
    )
    .unwrap();
    let globs: Vec<&str> = c.protection.files.iter().map(|g| g.as_str()).collect();
    assert_eq!(globs, ["/srv/log/audit*", "/srv/log/events.jsonl*"], "each log and its rotated copies");
}

#[test]
fn bad_protected_paths_name_the_field() {
    let e = Config::parse("[protect]\npaths = [\"relative/x\"]\n").unwrap_err();
    assert!(e.starts_with("protect.paths[0]") && e.contains("must be absolute"), "{e}");
    let e = Config::parse("[protect]\nenv_roots = [\"srv\"]\n").unwrap_err();
    assert!(e.starts_with("protect.env_roots[0]"), "{e}");
    let e = Config::parse("[unix]\ndeny = [\"@\"]\n").unwrap_err();
    assert!(e.starts_with("unix.deny[0]"), "{e}");
}

#[test]
fn metrics_are_off_by_default_and_served_only_on_loopback() {
    assert_eq!(Config::parse("").unwrap().metrics.listen, None);
    assert_eq!(Config::parse("[metrics]\n").unwrap().metrics.listen, None);
    for ok in ["127.0.0.1:9477", "127.1.2.3:9477", "[::1]:9477"] {
        let c = Config::parse(&format!("[metrics]\nlisten = \"{ok}\"\n")).unwrap();
        assert_eq!(c.metrics.listen, Some(ok.parse().unwrap()));
    }
    let e = Config::parse("[metrics]\nlisten = \"10.0.0.5:9477\"\n").unwrap_err();
    assert_eq!(
        e,
        "metrics.listen: 10.0.0.5:9477 is not a loopback address (metrics are served only on loopback unless \
         metrics.allow_remote = true; there is no TLS or authentication)"
    );
    let c = Config::parse("[metrics]\nlisten = \"10.0.0.5:9477\"\nallow_remote = true\n").unwrap();
    assert_eq!((c.metrics.listen, c.metrics.allow_remote), (Some("10.0.0.5:9477".parse().unwrap()), true));
    for bad in ["0.0.0.0:9477", "[::]:9477", "[::ffff:127.0.0.1]:9477", "192.168.1.1:80"] {
        let e = Config::parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).unwrap_err();
        assert!(e.starts_with("metrics.listen: ") && e.contains("is not a loopback address"), "{e}");
    }
    let e = Config::parse("[metrics]\nlisten = \"localhost:9477\"\n").unwrap_err();
    assert!(e.starts_with("metrics.listen: \"localhost:9477\" is not an IP address and port"), "{e}");
    let e = Config::parse("[metrics]\nlisten = \"127.0.0.1\"\n").unwrap_err();
    assert!(e.contains("is not an IP address and port"), "{e}");
    let e = Config::parse("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
    assert!(e.starts_with("metrics.listen: 127.0.0.1:0 has no port"), "{e}");
    let e = Config::parse("[metrics]\nlisten = 9477\n").unwrap_err();
    assert!(e.starts_with("metrics.listen: "), "{e}");
    let e = Config::parse("[metrics]\nlisen = \"127.0.0.1:9477\"\n").unwrap_err();
    assert!(e.contains("metrics") && e.contains("lisen"), "{e}");
}

const VAULT_MIN: &str = "[vault]\naddress = \"https://vault.example.com:8200\"\ntoken_file = \"/root/.vault-token\"\n";

fn vault_err(extra: &str) -> String {
    Config::parse(&format!("{VAULT_MIN}{extra}")).unwrap_err()
}

#[test]
fn vault_is_off_by_default_and_has_defaults() {
    assert_eq!(Config::parse("").unwrap().vault, None);
    let v = Config::parse(VAULT_MIN).unwrap().vault.unwrap();
    assert_eq!((v.mount.as_str(), v.prefix.as_str(), v.auth_mount.as_str()), ("secret", "fence", "approle"));
    assert_eq!((v.poll_interval, v.full_resync, v.timeout), (secs(5), secs(600), secs(10)));
    assert_eq!(v.max_index_age, None);
    assert!(!v.insecure && v.signing_keys.is_empty() && v.labels.is_empty() && v.hostname.is_none());
    assert_eq!(v.auth, VaultAuth::TokenFile("/root/.vault-token".into()));
    assert_eq!(v.address.as_str(), "https://vault.example.com:8200/");
    assert_eq!(v.base_address(), "https://vault.example.com:8200");
}

#[test]
fn vault_full_table() {
    let public = SigningKey::generate().unwrap().public();
    let key = public.to_string();
    let text = format!(
        "[vault]\naddress = \"https://vault:8200/\"\ninsecure = false\nca_file = \"/etc/fence/vault-ca.pem\"\n\
         namespace = \"team-a/sub\"\nmount = \"kv/fleet\"\nprefix = \"\"\nrole_id_file = \"/etc/fence/r\"\n\
         secret_id_file = \"/etc/fence/s\"\nsecret_id_wrapped = true\nauth_mount = \"approle-fence\"\n\
         poll_interval = 3600\nfull_resync = 10\nsigning_keys = [\"{key}\"]\nlabels = {{ env = \"prod\", \"team/x\" = \"a b\" }}\n\
         hostname = \"web-1.example\"\ntimeout = 300\nmax_index_age = 86400\n"
    );
    let v = Config::parse(&text).unwrap().vault.unwrap();
    assert_eq!(v.namespace.as_deref(), Some("team-a/sub"));
    assert_eq!((v.mount.as_str(), v.prefix.as_str()), ("kv/fleet", ""));
    assert_eq!(
        v.auth,
        VaultAuth::AppRole {
            role_id_file: "/etc/fence/r".into(),
            secret_id_file: "/etc/fence/s".into(),
            secret_id_wrapped: true
        }
    );
    assert_eq!(v.signing_keys, [public]);
    assert_eq!(signing_key_bytes(&key).unwrap().len(), 32);
    assert_eq!(v.base_address(), "https://vault:8200");
    assert_eq!(v.ca_file.as_deref(), Some(Path::new("/etc/fence/vault-ca.pem")));
    assert_eq!(v.labels["env"], "prod");
    assert_eq!(v.labels["team/x"], "a b");
    assert_eq!(v.hostname.as_deref(), Some("web-1.example"));
    assert_eq!((v.poll_interval, v.full_resync, v.timeout), (secs(3600), secs(10), secs(300)));
    assert_eq!(v.max_index_age, Some(secs(86400)));
}

#[test]
fn vault_address_must_be_https_unless_insecure() {
    let plain = "[vault]\naddress = \"http://x\"\ntoken_file = \"/t\"\n";
    assert_eq!(
        Config::parse(plain).unwrap_err(),
        "vault.address: http://x is plain HTTP; set vault.insecure = true to allow it (development only)"
    );
    assert!(Config::parse(&format!("{plain}insecure = true\n")).unwrap().vault.unwrap().insecure);
    for (address, why) in [
        ("vault:8200", "scheme"),
        ("ftp://vault", "scheme \"ftp\""),
        ("not a url", "is not a URL"),
        ("https://user:pw@vault", "user name or password"),
        ("https://vault/?x=1", "no query or fragment"),
    ] {
        let e = Config::parse(&format!("[vault]\naddress = \"{address}\"\ntoken_file = \"/t\"\n")).unwrap_err();
        assert!(e.starts_with("vault.address: ") && e.contains(why), "{address}: {e}");
        assert!(!e.contains("pw"), "{e}");
    }
    let e = Config::parse("[vault]\ntoken_file = \"/t\"\n").unwrap_err();
    assert!(e.contains("vault") && e.contains("address"), "{e}");
}

#[test]
fn vault_auth_is_approle_or_token_file() {
    let base = "[vault]\naddress = \"https://v\"\n";
    let e = Config::parse(base).unwrap_err();
    assert_eq!(e, "vault: give role_id_file and secret_id_file (AppRole) or token_file");
    let e = Config::parse(&format!("{base}role_id_file = \"/r\"\nsecret_id_file = \"/s\"\ntoken_file = \"/t\"\n"))
        .unwrap_err();
    assert_eq!(e, "vault: give either role_id_file and secret_id_file (AppRole) or token_file, not both");
    let e = Config::parse(&format!("{base}role_id_file = \"/r\"\n")).unwrap_err();
    assert!(e.starts_with("vault.secret_id_file: is required"), "{e}");
    let e = Config::parse(&format!("{base}secret_id_file = \"/s\"\n")).unwrap_err();
    assert!(e.starts_with("vault.role_id_file: is required"), "{e}");
    let e = vault_err("secret_id_wrapped = true\n");
    assert!(e.starts_with("vault.secret_id_wrapped: "), "{e}");
    let e = Config::parse(&format!("{base}role_id_file = \"r\"\nsecret_id_file = \"/s\"\n")).unwrap_err();
    assert!(e.starts_with("vault.role_id_file: \"r\" must be an absolute path"), "{e}");
    assert!(vault_err("ca_file = \"ca.pem\"\n").starts_with("vault.ca_file: "));
    let ok = Config::parse(&format!("{base}role_id_file = \"/r\"\nsecret_id_file = \"/s\"\n")).unwrap();
    assert_eq!(
        ok.vault.unwrap().auth,
        VaultAuth::AppRole { role_id_file: "/r".into(), secret_id_file: "/s".into(), secret_id_wrapped: false }
    );
}

#[test]
fn vault_numbers_names_and_keys_name_the_field() {
    for (extra, field) in [
        ("poll_interval = 0\n", "vault.poll_interval: must be between 1 and 3600 seconds (got 0)"),
        ("poll_interval = 3601\n", "vault.poll_interval: must be between 1 and 3600"),
        ("full_resync = 9\n", "vault.full_resync: must be between 10 and 86400"),
        ("full_resync = 86401\n", "vault.full_resync: must be between 10 and 86400"),
        ("timeout = 0\n", "vault.timeout: must be between 1 and 300"),
        ("max_index_age = 59\n", "vault.max_index_age: must be between 60 and 31536000"),
        ("timeout = \"10s\"\n", "vault.timeout: "),
        ("mount = \"\"\n", "vault.mount: must not be empty"),
        ("mount = \"/secret\"\n", "vault.mount: "),
        ("prefix = \"a//b\"\n", "vault.prefix: "),
        ("prefix = \"../x\"\n", "vault.prefix: "),
        ("auth_mount = \"approle/\"\n", "vault.auth_mount: "),
        ("namespace = \"\"\n", "vault.namespace: "),
        ("namespace = \"a b\"\n", "vault.namespace: "),
        ("hostname = \"web/1\"\n", "vault.hostname: "),
        ("labels = { \"\" = \"x\" }\n", "vault.labels: "),
        ("labels = { env = \"a\\nb\" }\n", "vault.labels.env: "),
        ("signing_keys = [\"AAAA\"]\n", "vault.signing_keys: [0]: \"AAAA\" is not an Ed25519 public key"),
        ("signing_keys = [\"ed25519:!!\"]\n", "vault.signing_keys: [0]: \"ed25519:!!\" is not valid base64"),
        ("signing_keys = [\"ed25519:AAAA\"]\n", "vault.signing_keys: [0]: \"ed25519:AAAA\" is 3 bytes"),
        ("adress = \"x\"\n", "vault.adress: unknown field `adress`"),
    ] {
        let e = vault_err(extra);
        assert!(e.starts_with(field), "{extra}: {e}");
    }
}

#[test]
fn vault_hostname_follows_the_status_path_rule() {
    for bad in ["-web", ".web", "web/1", "", "a b", "web*"] {
        let e = vault_err(&format!("hostname = {bad:?}\n"));
        assert!(e.starts_with(&format!("vault.hostname: {bad:?} is not a host name fence can use: ")), "{e}");
        assert!(crate::vault::layout::status_path(bad).is_err(), "{bad:?}");
    }
    let e = vault_err("hostname = \"-web\"\n");
    assert!(e.ends_with("must start with a letter or a digit"), "{e}");
    for ok in ["web-1", "WEB_1.example.com", "1"] {
        let v = Config::parse(&format!("{VAULT_MIN}hostname = {ok:?}\n")).unwrap().vault.unwrap();
        let host = v.hostname.as_deref().unwrap();
        assert_eq!(crate::vault::layout::status_path(host).unwrap(), format!("status/{ok}"));
    }
}

#[test]
fn vault_labels_follow_the_label_rules() {
    let v = Config::parse(&format!("{VAULT_MIN}labels = {{ \"a.b/c_d-e\" = \"any text\" }}\n")).unwrap().vault.unwrap();
    assert_eq!(v.labels["a.b/c_d-e"], "any text");
    let long_key = "k".repeat(64);
    let e = vault_err(&format!("labels = {{ {long_key} = \"x\" }}\n"));
    assert!(e.starts_with("vault.labels: ") && e.contains("longer than 63"), "{e}");
    let e = vault_err(&format!("labels = {{ env = \"{}\" }}\n", "v".repeat(257)));
    assert!(e.starts_with("vault.labels.env: ") && e.contains("256"), "{e}");
}

#[test]
fn vault_signing_keys_are_parsed_public_keys() {
    // 32 zero bytes: a well-formed key, but a small-order point that verifies anything.
    let weak = format!("ed25519:{}", "A".repeat(43) + "=");
    assert_eq!(signing_key_bytes(&weak).unwrap(), [0u8; 32]);
    let e = vault_err(&format!("signing_keys = [{weak:?}]\n"));
    assert_eq!(
        e,
        format!("vault.signing_keys: [0]: {weak:?} is not a usable Ed25519 public key: a weak key (small-order point)")
    );
    let (a, b) = (SigningKey::generate().unwrap().public(), SigningKey::generate().unwrap().public());
    let v = Config::parse(&format!("{VAULT_MIN}signing_keys = [\"{a}\", \"{b}\"]\n")).unwrap().vault.unwrap();
    assert_eq!(v.signing_keys, [a, b]);
    let e = vault_err(&format!("signing_keys = [\"{a}\", {weak:?}]\n"));
    assert!(e.starts_with("vault.signing_keys: [1]: "), "{e}");
}

#[test]
fn intervals_are_durations() {
    assert_eq!(Config::default().events.summary_interval, secs(10));
    let c = Config::parse("[events]\nsummary_interval = 3600\n").unwrap();
    assert_eq!(c.events.summary_interval, secs(3600));
    for bad in ["0", "3601"] {
        let e = Config::parse(&format!("[events]\nsummary_interval = {bad}\n")).unwrap_err();
        assert_eq!(e, format!("events.summary_interval: must be between 1 and 3600 seconds (got {bad})"));
    }
    let e = Config::parse("[events]\nsummary_interval = \"10s\"\n").unwrap_err();
    assert!(e.starts_with("events.summary_interval: "), "{e}");
}

#[test]
fn vault_agent_files_name_their_fields() {
    let v = Config::parse(&format!("{VAULT_MIN}ca_file = \"/k/ca.pem\"\n")).unwrap().vault.unwrap();
    assert_eq!(
        v.agent_files(),
        [("vault.token_file", Path::new("/root/.vault-token")), ("vault.ca_file", Path::new("/k/ca.pem"))]
    );
    let e = Config::parse("[vault]\naddress = \"https://v\"\ntoken_file = \"/k/./t\"\n").unwrap_err();
    assert!(e.starts_with("vault.token_file: ") && e.contains("'.' and '..'"), "{e}");
    let e = Config::parse("[persist]\nstate_dir = \"/\"\n[vault]\naddress = \"https://v\"\ntoken_file = \"/t\"\n")
        .unwrap_err();
    assert!(e.starts_with("persist.state_dir: "), "{e}");
}

#[test]
fn the_packaged_config_parses() {
    let c = Config::parse(include_str!("../../packaging/agent.toml")).expect("packaging/agent.toml");
    assert_eq!(c.control.workload_socket, std::path::PathBuf::from(crate::config::DEFAULT_WORKLOAD_SOCKET));
    assert_eq!(c.grants.max_ttl.as_secs(), 8 * 3600);
    // Events go to one place by default (the file): shipping both would count each twice.
    assert!(!c.events.stdout && c.events.file.is_some(), "{:?}", c.events);
    assert_eq!(c.managed.cgroup_parent.as_deref(), Some("/fence.slice/fence-workloads.service"));
}

#[test]
fn managed_cgroup_parent_is_a_path_below_the_root() {
    let c = Config::parse("[managed]\ncgroup_parent = \"/fence.slice//w.service/\"\n").unwrap();
    assert_eq!(c.managed.cgroup_parent.as_deref(), Some("/fence.slice/w.service"));
    for (bad, why) in [("\"/\"", "root cgroup"), ("\"a/b\"", "from the root"), ("\"/a/../b\"", "'..'")] {
        let e = Config::parse(&format!("[managed]\ncgroup_parent = {bad}\n")).unwrap_err();
        assert!(e.starts_with("managed.cgroup_parent: ") && e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn drop_ins_merge_tables_and_replace_values_in_name_order() {
    let dir = std::env::temp_dir().join(format!("fence-dropin-test-{}", std::process::id()));
    let d = dir.join("agent.d");
    std::fs::create_dir_all(&d).unwrap();
    let main = dir.join("agent.toml");
    std::fs::write(&main, "[events]\nstdout = false\nfile = \"/var/log/fence/events.jsonl\"\nrate_limit = 50\n")
        .unwrap();
    std::fs::write(d.join("20-b.toml"), "[events]\nrate_limit = 7\n").unwrap();
    std::fs::write(d.join("10-a.toml"), "[events]\nstdout = true\nrate_limit = 3\n").unwrap();
    std::fs::write(d.join("30-c.toml.dpkg-old"), "not toml at all [").unwrap();
    let c = Config::load(Some(&main)).unwrap();
    assert!(c.events.stdout, "10-a turns stdout on");
    assert_eq!(c.events.rate_limit, 7, "20-b comes after 10-a");
    assert_eq!(c.events.file.as_deref(), Some(Path::new("/var/log/fence/events.jsonl")), "kept from agent.toml");
    // A bad drop-in names itself; a bad value names the field and says drop-ins were read.
    std::fs::write(d.join("40-d.toml"), "[events\n").unwrap();
    let e = Config::load(Some(&main)).unwrap_err().to_string();
    assert!(e.contains("40-d.toml"), "{e}");
    std::fs::write(d.join("40-d.toml"), "[events]\nkeep = \"many\"\n").unwrap();
    let e = Config::load(Some(&main)).unwrap_err().to_string();
    assert!(e.contains("events.keep") && e.contains("drop-ins"), "{e}");
    // Writable by others, or a link: not read, and said so.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(d.join("40-d.toml"), "[events]\nkeep = 2\n").unwrap();
    std::fs::set_permissions(d.join("40-d.toml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = Config::load(Some(&main)).unwrap_err().to_string();
    assert!(e.contains("40-d.toml") && e.contains("writable by group or others"), "{e}");
    std::fs::set_permissions(d.join("40-d.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(d.join("40-d.toml"), d.join("50-link.toml")).unwrap();
    let e = Config::load(Some(&main)).unwrap_err().to_string();
    assert!(e.contains("50-link.toml") && e.contains("regular file"), "{e}");
    std::fs::remove_file(d.join("50-link.toml")).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Config::load(Some(&main)).unwrap_err().to_string();
    assert!(e.contains("agent.d") && e.contains("writable"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoint_interval_is_whole_seconds_within_a_day() {
    assert_eq!(Config::default().audit.checkpoint_interval, secs(300));
    assert_eq!(Config::parse("[audit]\ncheckpoint_interval = 60\n").unwrap().audit.checkpoint_interval, secs(60));
    for bad in ["0", "86401", "\"5m\""] {
        let e = Config::parse(&format!("[audit]\ncheckpoint_interval = {bad}\n")).unwrap_err().to_string();
        assert!(e.contains("checkpoint_interval"), "{bad}: {e}");
    }
}
