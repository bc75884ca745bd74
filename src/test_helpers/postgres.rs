//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory (as the `postgres` user when the test runs as root, since
//! PostgreSQL refuses to run as root), a postmaster on a free port of
//! 127.0.0.1, password (SCRAM) authentication over TCP, stopped and removed
//! on drop. [`PgCluster::start`] returns `None`, with the reason, when
//! PostgreSQL's binaries are not installed (`.ci/run` installs them).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// The superuser's password in every test cluster.
pub const PASSWORD: &str = "meshid-test-password";

/// A running test cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    postmaster: Option<Child>,
    /// The uid/gid to run PostgreSQL as (when we are root).
    as_user: Option<(u32, u32)>,
    /// `fsync` setting (off for unit tests, on for durability tests).
    fsync: bool,
    /// Serve TLS with the certificate and key files in the cluster's directory.
    tls: bool,
}

/// The directory holding `initdb`, `postgres` and `psql`: the newest
/// `/usr/lib/postgresql/N/bin`, else the PATH's.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((n, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Why PostgreSQL tests are skipped here, if they are.
/// Under CI (`CI` set) a missing PostgreSQL fails the test instead: a green
/// run must not hide a missing install step.
pub fn unavailable() -> Option<String> {
    match bin_dir() {
        Some(_) => None,
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "CI: PostgreSQL is not installed; .ci/run installs it (apt-get install postgresql)"
            )
        }
        None => Some(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): \
             `apt-get install postgresql` (.ci/run does)"
                .to_owned(),
        ),
    }
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let out = Command::new("id").args(["-u", "postgres"]).output()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let out = Command::new("id").args(["-g", "postgres"]).output()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok((uid, gid))
}

impl PgCluster {
    /// Initialises and starts a cluster (`fsync` as given); `Ok(None)`
    /// when PostgreSQL is not installed (print [`unavailable`] and skip).
    pub fn start(fsync: bool) -> anyhow::Result<Option<Self>> {
        Self::start_in(&std::env::temp_dir(), fsync)
    }

    /// [`PgCluster::start`] with the cluster's directory under `parent`
    /// (a small file system, to fill it).
    pub fn start_in(parent: &Path, fsync: bool) -> anyhow::Result<Option<Self>> {
        let Some(bin) = bin_dir() else {
            return Ok(None);
        };
        let as_user = if super::my_unix_uid() == 0 {
            Some(postgres_user().context("finding the postgres user")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("meshid-pg")
            .tempdir_in(parent)?;
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let out = run_as(&mut initdb, as_user).output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = super::free_port()?.port();
        let mut cluster = Self {
            dir,
            bin,
            port,
            postmaster: None,
            as_user,
            fsync,
            tls: false,
        };
        cluster.start_postmaster()?;
        Ok(Some(cluster))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the postmaster (again) and waits until it accepts connections.
    pub fn start_postmaster(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            .args(["-c", "max_connections=60", "-c", "shared_buffers=64MB"]);
        if self.tls {
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    self.dir.path().join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.dir.path().join("server.key").display()
                ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = run_as(&mut cmd, self.as_user).spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = self.dir.path().join("postmaster.log");
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to accept connections") {
                    let _ = ready_tx.send(Ok(()));
                }
                if line.contains("FATAL") && line.contains("could not") {
                    let _ = ready_tx.send(Err(line.clone()));
                }
                if let Some(log) = &mut log {
                    use std::io::Write as _;
                    let _ = writeln!(log, "{line}");
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {
                self.postmaster = Some(child);
                Ok(())
            }
            Ok(Err(line)) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not start: {line}")
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not say it was ready within 60 s")
            }
        }
    }

    /// Stops the postmaster (fast shutdown: sessions are cut, as in a
    /// restart) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.postmaster.take() {
            // SIGINT: "fast" shutdown.
            let pid = i32::try_from(child.id())?;
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            child.wait()?;
        }
        Ok(())
    }

    /// The DSN of database `db` as the superuser, without the password
    /// (pass [`PASSWORD`] in a file) or with it.
    pub fn dsn(&self, db: &str, with_password: bool) -> String {
        if with_password {
            format!(
                "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
                self.port
            )
        } else {
            format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
        }
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) -> anyhow::Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE {db}"))
            .map(|_| ())
    }

    /// Runs `sql` with `psql` (over the Unix socket, as the superuser) in
    /// database `db`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]);
        let out = run_as(&mut cmd, self.as_user).output()?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Restarts the cluster serving TLS with a new CA's certificate for
    /// 127.0.0.1 and localhost; returns that CA's certificate (PEM).
    pub fn restart_with_tls(&mut self) -> anyhow::Result<String> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let key = KeyPair::generate()?;
        let cert = server.signed_by(&key, &ca)?;
        let (crt, pem_key) = (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        );
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&pem_key, key.serialize_pem())?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pem_key, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.as_user {
            std::os::unix::fs::chown(&crt, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&pem_key, Some(uid), Some(gid))?;
        }
        self.stop()?;
        self.tls = true;
        self.start_postmaster()?;
        Ok(ca.pem())
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            // SIGQUIT: immediate shutdown, nothing to keep.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
