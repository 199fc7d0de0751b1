//! A real PostgreSQL server for the broker's tests: a cluster made by `initdb` in a temporary
//! directory, run by the `postgres` user (the server refuses root) on a free loopback port
//! and a unix socket in that directory, password logins (scram) over TCP; stopped by pid
//! (SIGTERM, then SIGKILL) when dropped. From Debian's `postgresql` package, which `cargo xtask
//! setup` installs; where it is absent the test is skipped, saying so. Passwords reach `psql`
//! through a 0600 password file, never its command line or environment.

use std::{
    fs,
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fence_agent::vault::client::Secret;

use crate::{
    bao::{random_hex, write_private},
    env::{TempDir, slow_factor, stop_child, wait_for},
};

pub struct Postgres {
    pub port: u16,
    /// The superuser OpenBao's database engine logs in as.
    pub admin: String,
    pub admin_password: Secret,
    dir: TempDir,
    child: Option<Child>,
}

/// `/usr/lib/postgresql/<newest>/bin`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

impl Postgres {
    pub fn start() -> Postgres {
        let Some(bin) = bin_dir() else {
            crate::harness::skip("PostgreSQL (Debian's postgresql package) is not installed; run cargo xtask setup");
        };
        let Some(user) = nix::unistd::User::from_name("postgres").ok().flatten() else {
            crate::harness::skip("there is no postgres user (Debian's postgresql package makes it)");
        };
        let dir = TempDir::new("postgres");
        // The server runs as postgres: it must reach its directory.
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.path("data");
        let admin_password = Secret::new(random_hex(16));
        let pwfile = dir.path("admin-password");
        write_private(&pwfile, admin_password.expose(), 0o600);
        nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).expect("chown");
        let as_postgres = |program: PathBuf| {
            let mut c = Command::new(program);
            c.uid(user.uid.as_raw()).gid(user.gid.as_raw()).current_dir(&dir.0);
            c
        };
        fs::create_dir(&data).expect("data dir");
        nix::unistd::chown(&data, Some(user.uid), Some(user.gid)).expect("chown");
        let admin = "fence_admin".to_owned();
        let out = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", &admin, "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let _ = fs::remove_file(&pwfile);
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = fs::File::create(dir.path("postgres.log")).expect("postgres.log");
        nix::unistd::chown(&dir.path("postgres.log"), Some(user.uid), Some(user.gid)).expect("chown");
        let child = as_postgres(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let pg = Postgres { port, admin, admin_password, dir, child: Some(child) };
        let ready = wait_for(Duration::from_secs(30 * u64::from(slow_factor())), || {
            pg.login(&pg.admin, pg.admin_password.expose()).ok()
        });
        assert!(
            ready.is_some(),
            "PostgreSQL did not start:\n{}",
            fs::read_to_string(pg.dir.path("postgres.log")).unwrap_or_default()
        );
        pg
    }

    /// `psql` logs in as `user` with `password` over TCP and runs `SELECT 1`.
    pub fn login(&self, user: &str, password: &str) -> Result<(), String> {
        let passfile = self.dir.path(&format!("pgpass-{}", random_hex(4)));
        write_private(&passfile, &format!("127.0.0.1:{}:postgres:{user}:{password}\n", self.port), 0o600);
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                "postgres",
                "-w",
                "-tAc",
                "SELECT 1",
            ])
            .env("PGPASSFILE", &passfile)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        let _ = fs::remove_file(&passfile);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1" {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(self.child.take());
    }
}
