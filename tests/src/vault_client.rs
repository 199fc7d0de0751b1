//! The vault client against a real OpenBao dev server ([`crate::bao::Bao`]): AppRole login and
//! token renewal up to the max TTL and past it, wrapped secret_ids, KV v2 with check-and-set,
//! TLS with a pinned CA, and secrets kept out of errors and log lines.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fence_agent::{
    config::{Config, VaultConfig},
    vault::client::{Secret, VaultClient, VaultError},
};
use serde_json::json;

use crate::{
    bao::{Bao, random_hex, write_private},
    env::slow_factor,
    harness::{Test, note},
};

pub const TESTS: &[Test] = &[
    Test { name: "vault_approle_login_and_renewal", run: approle_login_and_renewal },
    Test { name: "vault_wrapped_secret_id", run: wrapped_secret_id },
    Test { name: "vault_kv_and_cas", run: kv_and_cas },
    Test { name: "vault_errors_never_carry_secrets", run: errors_never_carry_secrets },
    Test { name: "vault_tls_ca_pinning", run: tls_ca_pinning },
];

/// What fence's agent may do under its prefix.
const POLICY: &str = r#"
path "secret/data/fence/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/fence/*" { capabilities = ["read", "list"] }
path "secret/metadata/fence" { capabilities = ["list"] }
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Every log line of this process (tracing, and `log` records of the HTTP stack), at TRACE.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        // Shown with the test's output when it fails.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn start() -> Captured {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(captured.clone())
            .try_init()
            .expect("installing the log capture");
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// None of `secrets` in `text`.
#[track_caller]
fn assert_clean(what: &str, text: &str, secrets: &[&Secret]) {
    for (i, s) in secrets.iter().enumerate() {
        assert!(!text.contains(s.expose()), "{what} carries secret #{i}: {text}");
    }
}

#[track_caller]
fn assert_error_clean(e: &VaultError, secrets: &[&Secret]) {
    assert_clean("the error's Display", &e.to_string(), secrets);
    assert_clean("the error's Debug", &format!("{e:?}"), secrets);
}

fn vault_config(bao: &Bao, auth: &str) -> VaultConfig {
    vault_config_at(&bao.addr, auth)
}

fn vault_config_at(address: &str, auth: &str) -> VaultConfig {
    let insecure = if address.starts_with("http://") { "insecure = true\n" } else { "" };
    let text = format!("[vault]\naddress = \"{address}\"\n{insecure}{auth}");
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}")).vault.expect("a [vault] table")
}

fn approle_auth(role_id: &Path, secret_id: &Path) -> String {
    format!("role_id_file = \"{}\"\nsecret_id_file = \"{}\"\n", role_id.display(), secret_id.display())
}

/// AppRole at `approle` with role `agent` (fence's policy) and its role_id in a 0600 file.
fn approle_setup(bao: &Bao, token_ttl: &str, token_max_ttl: &str) -> (Secret, std::path::PathBuf) {
    bao.write_policy("fence-agent", POLICY);
    bao.enable_approle("approle");
    bao.create_role("approle", "agent", token_ttl, token_max_ttl, &["fence-agent"]);
    let role_id = bao.role_id("approle", "agent");
    let role_file = bao.dir.path("role-id");
    write_private(&role_file, &format!("{}\n", role_id.expose()), 0o600);
    (role_id, role_file)
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn approle_login_and_renewal() {
    let logs = Captured::start();
    let bao = Bao::start();
    let (role_id, role_file) = approle_setup(&bao, "4s", "12s");
    let secret_id = bao.secret_id("approle", "agent");
    let secret_file = bao.dir.path("secret-id");
    write_private(&secret_file, secret_id.expose(), 0o644);
    let client = VaultClient::new(&vault_config(&bao, &approle_auth(&role_file, &secret_file))).expect("client");
    let rt = runtime();
    rt.block_on(async {
        // A secret_id file others can read is refused, naming the file and its mode.
        let e = client.login().await.expect_err("a 0644 secret_id file");
        assert!(matches!(&e, VaultError::Permissions { path, mode: 0o644 } if path == &secret_file), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&secret_file.display().to_string()) && text.contains("0644"), "{text}");
        assert_error_clean(&e, &[&secret_id, &role_id]);
        let e = client.kv_read("renewal/probe", None).await.expect_err("requests log in first");
        assert!(matches!(e, VaultError::Permissions { .. }), "{e:?}");

        fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!((mode_of(&role_file), mode_of(&secret_file)), (0o600, 0o600));
        let before: BTreeSet<String> = bao.token_accessors().into_iter().collect();
        client.login().await.expect("AppRole login");
        let first = client.token_expires_in().expect("the token expires");
        assert!(first <= Duration::from_secs(4) && first > Duration::from_secs(2), "TTL {first:?}");

        // Requests for longer than the max TTL: renewals, then a new login, and no failure.
        let started = Instant::now();
        let (mut requests, mut jumps, mut prev) = (0u64, 0u32, first);
        let mut tokens = BTreeSet::new();
        let mut renewed_on_server = false;
        let mut polled = Instant::now() - Duration::from_secs(1);
        while started.elapsed() < Duration::from_secs(15) {
            let at = started.elapsed();
            client
                .kv_write("renewal/probe", &json!({ "n": requests }), None)
                .await
                .unwrap_or_else(|e| panic!("write {requests} at {at:?} failed: {e}"));
            let back = client
                .kv_read("renewal/probe", None)
                .await
                .unwrap_or_else(|e| panic!("read {requests} at {at:?} failed: {e}"))
                .expect("just written");
            assert_eq!(back.data["n"], requests);
            requests += 1;
            let left = client.token_expires_in().expect("the token expires");
            assert!(left > Duration::ZERO, "the token in use expired at {at:?}");
            if left > prev + Duration::from_millis(500) {
                jumps += 1;
            }
            prev = left;
            if polled.elapsed() >= Duration::from_secs(1) {
                polled = Instant::now();
                for accessor in bao.token_accessors().into_iter().filter(|a| !before.contains(a)) {
                    if let Some(info) = bao.lookup_accessor(&accessor) {
                        let created = info["creation_time"].as_i64().unwrap_or_default();
                        renewed_on_server |= info["last_renewal_time"].as_i64().is_some_and(|t| t > created);
                    }
                    tokens.insert(accessor);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(renewed_on_server, "the server never saw a renewal (renew-self)");
        assert!(jumps >= 3, "the token's lifetime was extended only {jumps} times in 15 s");
        assert!(tokens.len() >= 2, "no new login after the 12 s max TTL: tokens {tokens:?}");
        note(format!(
            "{} writes and reads in 15 s, none failed; lifetime extended {jumps} times; {} AppRole logins",
            requests,
            tokens.len()
        ));
    });
    assert_clean("the log", &logs.text(), &[&secret_id, &role_id]);
}

fn wrapped_secret_id() {
    let logs = Captured::start();
    let bao = Bao::start();
    let (role_id, role_file) = approle_setup(&bao, "1h", "2h");
    let wrapping = bao.wrapped_secret_id("approle", "agent", "120s");
    let secret_file = bao.dir.path("secret-id.wrapped");
    write_private(&secret_file, wrapping.expose(), 0o600);
    let cfg = vault_config(&bao, &format!("{}secret_id_wrapped = true\n", approle_auth(&role_file, &secret_file)));
    let client = VaultClient::new(&cfg).expect("client");
    // Made by another endpoint than a role's secret-id: refused before it is unwrapped.
    let foreign =
        bao.wrapped("POST", "/v1/auth/token/create", "120s", &json!({ "policies": ["default"], "ttl": "1h" }));
    let rt = runtime();
    rt.block_on(async {
        client.login().await.expect("login with a wrapped secret_id");
        assert_eq!(client.kv_write("wrapped/probe", &json!({ "ok": true }), None).await.expect("write"), 1);

        // The client unwrapped it: the wrapping token cannot be unwrapped again.
        let again = bao.call("POST", "/v1/sys/wrapping/unwrap", Some(wrapping.expose()), &[], None);
        assert_eq!(again.status, 400, "the wrapping token still unwraps: {}", again.body);
        assert!(again.body.to_string().contains("wrapping token is not valid"), "{}", again.body);

        // The secret_id is kept in memory: logging in again needs no file.
        fs::remove_file(&secret_file).expect("removing the secret_id file");
        client.login().await.expect("a second login from the secret_id in memory");
        assert!(client.kv_read("wrapped/probe", None).await.expect("read").is_some());

        // Another client given the used wrapping token cannot log in, and says why.
        write_private(&secret_file, wrapping.expose(), 0o600);
        let other = VaultClient::new(&cfg).expect("client");
        let e = other.login().await.expect_err("a used wrapping token");
        assert!(matches!(e, VaultError::Unwrap(_)), "{e:?}");
        assert!(e.to_string().contains("unwraps once"), "{e}");
        assert_error_clean(&e, &[&wrapping, &role_id]);

        write_private(&secret_file, foreign.expose(), 0o600);
        let third = VaultClient::new(&cfg).expect("client");
        let e = third.login().await.expect_err("a wrapping token of another endpoint");
        assert!(matches!(e, VaultError::Unwrap(_)) && e.to_string().contains("auth/token/create"), "{e}");
        assert_error_clean(&e, &[&foreign, &role_id]);
    });
    let unwrapped = bao.call("POST", "/v1/sys/wrapping/unwrap", Some(foreign.expose()), &[], None);
    assert_eq!(unwrapped.status, 200, "the client unwrapped a token it refused: {}", unwrapped.body);
    let foreign_token = Secret::new(unwrapped.body["auth"]["client_token"].as_str().unwrap_or("none"));
    assert_clean("the log", &logs.text(), &[&wrapping, &foreign, &foreign_token, &role_id]);
}

fn kv_and_cas() {
    let logs = Captured::start();
    let bao = Bao::start();
    bao.write_policy("fence-agent", POLICY);
    let token = bao.create_token(&["fence-agent"], "1h");
    let token_file = bao.dir.path("token");
    write_private(&token_file, token.expose(), 0o600);
    let client =
        VaultClient::new(&vault_config(&bao, &format!("token_file = \"{}\"\n", token_file.display()))).expect("client");
    let rt = runtime();
    rt.block_on(async {
        client.health().await.expect("an active, unsealed server");
        // By name too (the static binary's resolver reads /etc/hosts).
        let by_name = bao.addr.replace("127.0.0.1", "localhost");
        let named =
            VaultClient::new(&vault_config_at(&by_name, &format!("token_file = \"{}\"\n", token_file.display())))
                .expect("client");
        named.health().await.unwrap_or_else(|e| panic!("{by_name}: {e}"));
        assert_eq!(client.kv_read("identities/missing", None).await.expect("read"), None);
        assert_eq!(client.kv_metadata("identities/missing").await.expect("metadata"), None);
        assert_eq!(client.kv_list("identities").await.expect("list"), Vec::<String>::new());

        let path = "identities/ci-runner";
        assert_eq!(client.kv_write(path, &json!({ "v": 1 }), Some(0)).await.expect("create"), 1);
        assert_eq!(client.kv_write(path, &json!({ "v": 2 }), Some(1)).await.expect("update"), 2);
        let e = client.kv_write(path, &json!({ "v": 3 }), Some(1)).await.expect_err("a stale cas");
        assert!(
            matches!(&e, VaultError::CasConflict { path: p, expected: Some(1), current: Some(2) } if p == path),
            "{e:?}"
        );
        assert!(e.to_string().contains("expecting version 1, the current version is 2"), "{e}");
        let e = client.kv_write(path, &json!({ "v": 3 }), Some(0)).await.expect_err("cas 0 on an existing path");
        assert!(matches!(e, VaultError::CasConflict { expected: Some(0), current: Some(2), .. }), "{e:?}");
        assert_eq!(client.kv_write("index", &json!({ "serial": 7 }), None).await.expect("no cas"), 1);

        let latest = client.kv_read(path, None).await.expect("read").expect("present");
        assert_eq!((latest.data.clone(), latest.version), (json!({ "v": 2 }), 2));
        let old = client.kv_read(path, Some(1)).await.expect("read").expect("version 1");
        assert_eq!((old.data, old.version), (json!({ "v": 1 }), 1));
        assert_eq!(client.kv_read(path, Some(9)).await.expect("read"), None);
        let meta = client.kv_metadata(path).await.expect("metadata").expect("present");
        assert_eq!(meta.current_version, 2);
        assert!(meta.updated_time.is_some_and(|t| t.starts_with("20")));

        // A deleted version reads as absent; the others stay.
        bao.root("POST", "/v1/secret/delete/fence/identities/ci-runner", Some(&json!({ "versions": [1] })));
        assert_eq!(client.kv_read(path, Some(1)).await.expect("read"), None);
        assert_eq!(client.kv_read(path, None).await.expect("read").map(|s| s.version), Some(2));

        assert_eq!(client.kv_list("identities").await.expect("list"), vec!["ci-runner".to_owned()]);
        let mut top = client.kv_list("").await.expect("list the prefix");
        top.sort();
        assert_eq!(top, vec!["identities/".to_owned(), "index".to_owned()]);

        // Segments are escaped: the key is exactly what was asked for.
        assert_eq!(client.kv_write("status/web 1?x#y", &json!({ "ok": true }), None).await.expect("write"), 1);
        let raw = bao.root("GET", "/v1/secret/data/fence/status/web%201%3Fx%23y", None);
        assert_eq!(raw["data"]["data"], json!({ "ok": true }));
        assert_eq!(client.kv_list("status").await.expect("list"), vec!["web 1?x#y".to_owned()]);
        let e = client.kv_read("status/../index", None).await.expect_err("a .. segment");
        assert!(matches!(e, VaultError::Config(_)), "{e:?}");

        // Outside the policy: a status error, not a retry loop or a secret.
        bao.kv_put("elsewhere", &json!({ "x": 1 }));
        let outside = VaultClient::new(&vault_config(
            &bao,
            &format!("token_file = \"{}\"\nprefix = \"elsewhere\"\n", token_file.display()),
        ))
        .expect("client");
        let e = outside.kv_metadata("").await.expect_err("no read of secret/metadata/elsewhere");
        assert!(matches!(e, VaultError::Status { status: 403, .. }), "{e:?}");
        assert_error_clean(&e, &[&token]);
    });
    assert_clean("the log", &logs.text(), &[&token]);
}

fn errors_never_carry_secrets() {
    let logs = Captured::start();
    let bao = Bao::start();
    let (role_id, role_file) = approle_setup(&bao, "1h", "2h");
    let rt = runtime();
    let mut secrets: Vec<Secret> = vec![Secret::new(role_id.expose())];
    rt.block_on(async {
        // A wrong secret_id.
        let wrong = Secret::new(format!(
            "{}-{}-{}-{}-{}",
            random_hex(4),
            random_hex(2),
            random_hex(2),
            random_hex(2),
            random_hex(6)
        ));
        let secret_file = bao.dir.path("secret-id");
        write_private(&secret_file, wrong.expose(), 0o600);
        let client = VaultClient::new(&vault_config(&bao, &approle_auth(&role_file, &secret_file))).expect("client");
        let e = client.login().await.expect_err("a wrong secret_id");
        assert!(matches!(e, VaultError::Status { status: 400 | 403, .. }), "{e:?}");
        assert_error_clean(&e, &[&wrong, &role_id]);
        let e = client.kv_read("x", None).await.expect_err("a wrong secret_id");
        assert_error_clean(&e, &[&wrong, &role_id]);
        assert_clean("the client's Debug", &format!("{client:?}"), &[&wrong, &role_id]);

        // A bogus wrapping token.
        let bogus = Secret::new(format!("s.{}", random_hex(12)));
        write_private(&secret_file, bogus.expose(), 0o600);
        let wrapped = VaultClient::new(&vault_config(
            &bao,
            &format!("{}secret_id_wrapped = true\n", approle_auth(&role_file, &secret_file)),
        ))
        .expect("client");
        let e = wrapped.login().await.expect_err("a bogus wrapping token");
        assert!(matches!(e, VaultError::Unwrap(_)), "{e:?}");
        assert_error_clean(&e, &[&bogus, &role_id]);

        // An expired token.
        let expired = bao.create_token(&["fence-agent"], "2s");
        let token_file = bao.dir.path("token");
        write_private(&token_file, expired.expose(), 0o600);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let by_token = VaultClient::new(&vault_config(&bao, &format!("token_file = \"{}\"\n", token_file.display())))
            .expect("client");
        let e = by_token.login().await.expect_err("an expired token");
        assert!(matches!(e, VaultError::Status { status: 403, .. }), "{e:?}");
        assert_error_clean(&e, &[&expired]);
        let e = by_token.kv_metadata("index").await.expect_err("an expired token");
        assert_error_clean(&e, &[&expired]);

        // A token revoked while in use: the request fails once it is found dead, and says so
        // without the token.
        let revoked = bao.create_token(&["fence-agent"], "1h");
        write_private(&token_file, revoked.expose(), 0o600);
        let in_use = VaultClient::new(&vault_config(&bao, &format!("token_file = \"{}\"\n", token_file.display())))
            .expect("client");
        in_use.kv_write("probe", &json!({ "a": 1 }), None).await.expect("write with a live token");
        bao.root("POST", "/v1/auth/token/revoke", Some(&json!({ "token": revoked.expose() })));
        let e = in_use.kv_read("probe", None).await.expect_err("a revoked token");
        assert!(matches!(e, VaultError::Status { status: 403, .. }), "{e:?}");
        assert_error_clean(&e, &[&revoked]);
        assert_eq!(in_use.token_expires_in(), None, "a dead token is dropped");

        // Nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let nowhere = VaultClient::new(&vault_config_at(
            &format!("http://127.0.0.1:{closed}"),
            &format!("token_file = \"{}\"\n", token_file.display()),
        ))
        .expect("client");
        let e = nowhere.kv_read("index", None).await.expect_err("nothing listening");
        assert!(matches!(&e, VaultError::Http { method, .. } if method == "GET"), "{e:?}");
        assert_error_clean(&e, &[&revoked]);
        let e = nowhere.health().await.expect_err("nothing listening");
        assert!(e.to_string().contains("sys/health"), "{e}");

        // A redirect to another host is not followed (the token would go with it).
        let elsewhere = TcpListener::bind("127.0.0.2:0").expect("binding 127.0.0.2");
        elsewhere.set_nonblocking(true).expect("nonblocking");
        let target = format!("http://{}/v1/auth/token/lookup-self?x=1", elsewhere.local_addr().expect("addr"));
        let redirector = redirector(&target);
        let redirected = VaultClient::new(&vault_config_at(
            &format!("http://{}", redirector.local_addr().expect("addr")),
            &format!("token_file = \"{}\"\n", token_file.display()),
        ))
        .expect("client");
        let e = redirected.kv_read("index", None).await.expect_err("a redirect to another host");
        assert!(
            matches!(&e, VaultError::Status { status: 307, .. }) && e.to_string().contains("not followed"),
            "{e:?}"
        );
        assert!(!e.to_string().contains("x=1"), "{e}");
        assert_error_clean(&e, &[&revoked]);
        assert!(elsewhere.accept().is_err(), "the client followed the redirect to {target}");

        secrets.extend([wrong, bogus, expired, revoked]);
    });
    let secrets: Vec<&Secret> = secrets.iter().collect();
    let text = logs.text();
    assert!(text.contains("plain HTTP"), "the insecure warning was not logged (is the capture working?):\n{text}");
    assert_clean("the log", &text, &secrets);
    let environ = fs::read("/proc/self/environ").expect("environ");
    let cmdline = fs::read("/proc/self/cmdline").expect("cmdline");
    assert_clean("the environment", &String::from_utf8_lossy(&environ), &secrets);
    assert_clean("the command line", &String::from_utf8_lossy(&cmdline), &secrets);
    note(format!("{} bytes of log lines (TRACE) checked", text.len()));
}

/// A server on 127.0.0.1 that answers every request with a 307 to `location`, for 10 s at most.
fn redirector(location: &str) -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let server = listener.try_clone().expect("clone");
    let location = location.to_owned();
    std::thread::spawn(move || {
        server.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match server.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                             Connection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    listener
}

fn tls_ca_pinning() {
    let logs = Captured::start();
    let bao = Bao::start_tls();
    let ca = bao.ca_file.clone().expect("the dev CA");
    let token_file = bao.dir.path("token");
    write_private(&token_file, bao.root_token.expose(), 0o600);
    let auth = format!("token_file = \"{}\"\n", token_file.display());
    let pinned =
        VaultClient::new(&vault_config(&bao, &format!("{auth}ca_file = \"{}\"\n", ca.display()))).expect("client");
    let system = VaultClient::new(&vault_config(&bao, &auth)).expect("client with the system bundle");
    let rt = runtime();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30 * u64::from(slow_factor()));
        while let Err(e) = pinned.health().await {
            assert!(Instant::now() < deadline, "the TLS dev server never became healthy: {e}\n{}", bao.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(pinned.kv_write("tls/probe", &json!({ "ok": true }), None).await.expect("write over TLS"), 1);
        assert!(pinned.kv_read("tls/probe", None).await.expect("read over TLS").is_some());
        // The dev CA is not in the system bundle: without the pin, the server is not trusted.
        let e = system.health().await.expect_err("an untrusted certificate");
        assert!(matches!(e, VaultError::Http { .. }) && e.to_string().contains("certificate"), "{e:?}");
        let e = system.login().await.expect_err("no token goes to an untrusted server");
        assert!(matches!(e, VaultError::Http { .. }), "{e:?}");
        assert_error_clean(&e, &[&bao.root_token]);
    });
    assert_clean("the log", &logs.text(), &[&bao.root_token]);
}
