//! `--wrk`: the keep-alive phase again with third-party programs from
//! Debian's packages, `wrk` as the client and `nginx` as the backend, as the
//! issue suggests. nginx runs with one worker, no access log and a fixed
//! `return 200`; the mesh gets a second route pair to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// nginx as a child process, stopped on drop.
pub(crate) struct Nginx {
    pub(crate) addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts `nginx` on a free port of 127.0.0.1 with its own prefix directory.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let addr = meshid::test_helpers::free_port()?;
        Self::start_in(&[], addr, || std::net::TcpStream::connect(addr).is_ok())
    }

    /// Starts `nginx` on `addr`, run through `prefix` (e.g. `ip netns exec
    /// NS`), until `listening` says it answers.
    pub(crate) fn start_in(
        prefix: &[&str],
        addr: SocketAddr,
        listening: impl Fn() -> bool,
    ) -> anyhow::Result<Self> {
        let bin = which("nginx")
            .context("--wrk needs nginx: apt-get install nginx-light (or nginx) and wrk")?;
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {pid};\nerror_log {err} warn;\n\
                 events {{ worker_connections 16384; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
                   fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
                   keepalive_requests 1000000;\n  keepalive_timeout 600s;\n\
                   server {{\n    listen {addr};\n    location / {{ return 200 \"hello from backend\"; }}\n  }}\n}}\n",
                pid = dir.path().join("nginx.pid").display(),
                err = dir.path().join("error.log").display(),
                dir = dir.path().display(),
            ),
        )?;
        let mut cmd = prefixed(prefix, &bin);
        let child = cmd
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx")?;
        let started = Instant::now();
        while !listening() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not listen on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            addr,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin` run through `prefix` (nothing, or e.g. `ip netns exec NS`).
fn prefixed(prefix: &[&str], bin: &std::path::Path) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
}

/// What one wrk run reported.
pub(crate) struct WrkRun {
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: bool,
}

impl std::fmt::Display for WrkRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms{}",
            self.rate,
            self.p50_ms,
            self.p99_ms,
            if self.errors {
                "  (wrk reported errors)"
            } else {
                ""
            }
        )
    }
}

/// `wrk -t1 -c<connections> -d<seconds>s --latency http://addr/`.
pub(crate) fn wrk(addr: SocketAddr, connections: usize, seconds: u64) -> anyhow::Result<WrkRun> {
    wrk_in(&[], &format!("http://{addr}/"), connections, seconds)
}

/// [`wrk`] against `url`, run through `prefix` (e.g. `ip netns exec NS`).
pub(crate) fn wrk_in(
    prefix: &[&str],
    url: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<WrkRun> {
    wrk_with(prefix, url, connections, seconds, &[])
}

/// [`wrk_in`] with more wrk arguments (`-H "Connection: close"`: a new
/// connection per request).
pub(crate) fn wrk_with(
    prefix: &[&str],
    url: &str,
    connections: usize,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<WrkRun> {
    let bin = which("wrk").context("--wrk needs wrk: apt-get install wrk")?;
    let mut cmd = prefixed(prefix, &bin);
    let out = cmd
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(extra)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let latency = |p: &str| field(p).and_then(parse_wrk_duration_ms).unwrap_or(f64::NAN);
    Ok(WrkRun {
        rate,
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        errors: text.contains("Socket errors") || text.contains("Non-2xx"),
    })
}

/// wrk prints durations as `512.00us`, `1.20ms` or `2.00s`.
fn parse_wrk_duration_ms(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}
