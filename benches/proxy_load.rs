//! Load generator for a proxy pair as real processes on loopback: a CA, an
//! agent on node-a, a backend server behind the backend's proxy (inbound) and
//! the frontend's proxy (outbound → mTLS → the backend's inbound), the same
//! mesh as `tests/e2e/proxy.rs`. Every figure is measured direct to the
//! backend server and through the pair:
//!
//! 1. small HTTP/1.1 request/response, keep-alive, over C connections: req/s, p50/p99;
//! 2. bulk upload through one connection: MB/s;
//! 3. a new connection per request (a new mTLS handshake between the proxies): conn/s;
//! 4. idle RSS of each proxy after its first certificate, before any traffic;
//! 5. the time from `meshid mtls set-mode` (a process) until the backend's
//!    inbound port enforces the new mode (plaintext refused for STRICT,
//!    served again for PERMISSIVE), polled every 20 ms.
//!
//! `cargo bench --bench proxy_load -- [--seconds 5] [--connections 32]
//! [--bulk-mib 256] [--handshake-workers 8] [--mode-changes 10] [--all-in-one] [--wrk]
//! [--proxy-bin PATH]`
//!
//! `--proxy-bin` runs another build of `meshid-proxy` (A/B runs of two builds).
//!
//! `--wrk` adds the keep-alive phase with `wrk` against `nginx` (Debian's
//! packages `wrk` and `nginx-light`), direct and through the pair.
//!
//! The proxies run as `meshid-proxy` (the sidecar binary); `--all-in-one`
//! runs them as `meshid proxy` instead.

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
#[path = "proxy_load/third_party.rs"]
mod third_party;

use meshid::test_helpers::{
    cli_arg, cli_flag, cli_value, AgentProcess, CaProcess, ProxyProcess, TestEnv,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use third_party::{wrk, Nginx};

const BIN: &str = env!("CARGO_BIN_EXE_meshid");
/// The proxies run as this binary: `meshid-proxy` (the sidecar alone), or the
/// all-in-one `meshid proxy` with `--all-in-one`.
const PROXY_BIN: &str = env!("CARGO_BIN_EXE_meshid-proxy");
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";
const BODY: &str = "hello from backend";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n";
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n";

fn response() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm field they are at 11 and 12.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = Command::new("getconf").arg("CLK_TCK").output()?;
    let hz: f64 = String::from_utf8_lossy(&hz.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0);
    Ok(ticks / hz)
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `… kB` field of /proc/PID/status (`VmRSS:`, `RssAnon:`, `RssFile:`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field}"))
}

fn rss_parts(pid: u32) -> anyhow::Result<String> {
    Ok(format!(
        "anonymous {:.1} MiB + file-backed {:.1} MiB",
        status_kib(pid, "RssAnon:")? as f64 / 1024.0,
        status_kib(pid, "RssFile:")? as f64 / 1024.0
    ))
}

/// The pid of our child `meshid proxy` whose command line names `metrics`
/// (`ProxyProcess` does not expose its pid).
fn proxy_pid(metrics: SocketAddr) -> anyhow::Result<u32> {
    let me = std::process::id();
    let wanted = metrics.to_string();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_proxy = args.contains(&b"proxy".as_slice())
            || args.first().is_some_and(|a| a.ends_with(b"meshid-proxy"));
        if is_proxy && args.contains(&wanted.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!("no child proxy with metrics on {metrics}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The backend application. A connection starting with `BULK` + a u64 length
/// is a bulk upload: the server discards that many bytes and answers `DONE`.
/// Anything else is HTTP/1.1: every request (headers only) gets [`BODY`];
/// the connection is kept open unless the request says `Connection: close`.
async fn backend_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream));
        }
    });
    Ok(addr)
}

async fn serve(mut s: TcpStream) {
    let answer = response();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < 4 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if buf.starts_with(b"BULK") {
        while buf.len() < 12 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&buf[4..12]);
        let total = u64::from_be_bytes(len);
        let mut got = (buf.len() - 12) as u64;
        while got < total {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
        let _ = s.write_all(b"DONE").await;
        return;
    }
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let close = buf[..end]
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
            buf.drain(..end + 4);
            if s.write_all(&answer).await.is_err() || close {
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads exactly one [`response`] (`want` bytes) from `s`.
async fn read_answer(s: &mut TcpStream, buf: &mut [u8], want: usize) -> anyhow::Result<()> {
    let mut got = 0;
    while got < want {
        let n = s.read(&mut buf[got..]).await?;
        if n == 0 {
            bail!("closed after {got} of {want} bytes");
        }
        got += n;
    }
    Ok(())
}

struct Run {
    count: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<8} {:>9.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} in {:.1} s, {} errors)",
            self.rate(),
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            self.count,
            self.elapsed.as_secs_f64(),
            self.errors
        )
    }
}

/// `connections` keep-alive connections, each sending one request at a time
/// for `seconds` (and at most `cap` requests each).
async fn keepalive(addr: SocketAddr, connections: usize, seconds: u64) -> anyhow::Result<Run> {
    let want = response().len();
    let cap = 2_000_000 / connections.max(1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(cap.min(200_000));
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; want];
            while Instant::now() < deadline && lat.len() < cap {
                let t = Instant::now();
                s.write_all(REQUEST).await?;
                read_answer(&mut s, &mut buf, want).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(l) => latencies.extend(l),
            Err(e) => {
                errors += 1;
                eprintln!("keep-alive connection failed: {e:#}");
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run {
        count: latencies.len(),
        errors,
        elapsed,
        latencies,
    })
}

/// `workers` loops of: connect, one request with `Connection: close`, read the
/// answer, drop; for `seconds` (at most `cap` connections in all).
async fn handshakes(
    addr: SocketAddr,
    workers: usize,
    seconds: u64,
    cap: usize,
) -> anyhow::Result<Run> {
    let want = response().len();
    let per_worker = cap / workers.max(1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut buf = vec![0u8; want];
            while Instant::now() < deadline && lat.len() + errors < per_worker {
                let t = Instant::now();
                let one = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(REQUEST_CLOSE).await?;
                    read_answer(&mut s, &mut buf, want).await
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run {
        count: latencies.len(),
        errors,
        elapsed,
        latencies,
    })
}

/// Uploads `bytes` through one connection; returns MB/s (10^6 bytes) from the
/// first byte written to the server's `DONE`.
async fn bulk(addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut header = b"BULK".to_vec();
    header.extend_from_slice(&bytes.to_be_bytes());
    s.write_all(&header).await?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        s.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    let mut done = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut done))
        .await
        .context("no DONE within 60 s")??;
    if &done != b"DONE" {
        bail!("unexpected answer {done:?}");
    }
    Ok(bytes as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Whether a plaintext GET to `addr` is served (`true`) or refused / closed (`false`).
async fn plaintext_served(addr: SocketAddr) -> bool {
    let want = response().len();
    let one = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(REQUEST_CLOSE).await?;
        let mut buf = vec![0u8; want];
        read_answer(&mut s, &mut buf, want).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), one).await,
        Ok(Ok(()))
    )
}

fn set_mode(manifests: &Path, mode: &str) -> anyhow::Result<()> {
    let out = Command::new(BIN)
        .args(["mtls", "set-mode", "-n", "default", mode, "--manifests"])
        .arg(manifests)
        .env_remove("MESHID_ROOT_NAMESPACE")
        .output()?;
    if !out.status.success() {
        bail!("set-mode {mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The mesh of `tests/e2e/proxy.rs`: pods `frontend-1`, `backend-1` and the
/// agent's, a CA, the agent on node-a, both proxies with their own tokens.
struct Mesh {
    env: TestEnv,
    _ca: CaProcess,
    _agent: AgentProcess,
    backend: ProxyProcess,
    frontend: ProxyProcess,
}

fn start_mesh(app: SocketAddr, nginx: Option<SocketAddr>) -> anyhow::Result<Mesh> {
    let bin = Path::new(BIN);
    let other = cli_value("--proxy-bin").map(PathBuf::from);
    let proxy_bin = match &other {
        Some(path) => path.as_path(),
        None if cli_flag("--all-in-one") => bin,
        None => Path::new(PROXY_BIN),
    };
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    for sa in ["frontend", "backend"] {
        env.add_pod(
            "default",
            &format!("{sa}-1"),
            &format!("uid-{sa}-1"),
            sa,
            "node-a",
        );
    }
    let ca = CaProcess::spawn(
        bin,
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )?;
    let agent_token = env.node_agent_token_file("node-a");
    let agent = AgentProcess::spawn(
        bin,
        &env,
        ca.addr,
        "node-a",
        &agent_token,
        &["--workload-ttl", "1h"],
    )?;
    let token = |sa: &str| -> PathBuf {
        env.token_file(
            &format!("{sa}.token"),
            "default",
            sa,
            Some((&format!("{sa}-1"), &format!("uid-{sa}-1"))),
            Some("node-a"),
        )
    };
    let (backend_token, frontend_token) = (token("backend"), token("frontend"));
    let dir = env.dir.path().to_owned();
    // Inbound routes: the in-process backend, then nginx when there is one.
    let mut backend_args = vec!["--inbound".to_owned(), format!("127.0.0.1:0={app}")];
    if let Some(nginx) = nginx {
        backend_args.extend(["--inbound".to_owned(), format!("127.0.0.1:0={nginx}")]);
    }
    backend_args.extend([
        "--token-file".to_owned(),
        backend_token.to_str().context("path")?.to_owned(),
    ]);
    let backend_args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    let backend = ProxyProcess::spawn(proxy_bin, &dir, "backend", &agent.socket, &backend_args)?;
    let mut frontend_args = Vec::new();
    for inbound in &backend.inbound {
        frontend_args.extend([
            "--outbound".to_owned(),
            format!("127.0.0.1:0={inbound}@{BACKEND}"),
        ]);
    }
    frontend_args.extend([
        "--token-file".to_owned(),
        frontend_token.to_str().context("path")?.to_owned(),
    ]);
    let frontend_args: Vec<&str> = frontend_args.iter().map(String::as_str).collect();
    let frontend = ProxyProcess::spawn(proxy_bin, &dir, "frontend", &agent.socket, &frontend_args)?;
    Ok(Mesh {
        env,
        _ca: ca,
        _agent: agent,
        backend,
        frontend,
    })
}

fn main() -> anyhow::Result<()> {
    let seconds = cli_arg::<usize>("--seconds", 5) as u64;
    let connections = cli_arg::<usize>("--connections", 32).max(1);
    let bulk_mib = cli_arg::<usize>("--bulk-mib", 256) as u64;
    let hs_workers = cli_arg::<usize>("--handshake-workers", 8).max(1);
    let hs_cap = cli_arg::<usize>("--handshake-cap", 12_000);
    let mode_changes = cli_arg::<usize>("--mode-changes", 10);
    for (var, default) in [
        ("MESHID_TEST_CA_LOG", "warn"),
        ("MESHID_TEST_AGENT_LOG", "warn"),
        ("MESHID_TEST_PROXY_LOG", "warn"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, default);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let app = runtime.block_on(backend_server())?;
    let nginx = if cli_flag("--wrk") {
        Some(Nginx::start()?)
    } else {
        None
    };
    eprintln!("starting CA, agent and two proxies…");
    let mesh = start_mesh(app, nginx.as_ref().map(|n| n.addr))?;
    let via = mesh.frontend.outbound[0];
    let inbound = mesh.backend.inbound[0];
    let backend_pid = proxy_pid(mesh.backend.metrics_addr)?;
    let frontend_pid = proxy_pid(mesh.frontend.metrics_addr)?;
    // Give both a moment to settle after their first certificate and policy.
    std::thread::sleep(Duration::from_millis(500));
    let (rss_backend, rss_frontend) = (rss_kib(backend_pid)?, rss_kib(frontend_pid)?);

    let mut report = Vec::new();
    report.push(format!(
        "idle RSS (VmRSS after first certificate, no traffic): backend proxy {:.1} MiB = {:.1} MB, frontend proxy {:.1} MiB = {:.1} MB",
        rss_backend as f64 / 1024.0,
        rss_backend as f64 * 1024.0 / 1e6,
        rss_frontend as f64 / 1024.0,
        rss_frontend as f64 * 1024.0 / 1e6,
    ));
    report.push(format!(
        "  backend: {}; frontend: {}",
        rss_parts(backend_pid)?,
        rss_parts(frontend_pid)?
    ));

    runtime.block_on(async {
        if !plaintext_served(via).await {
            bail!("no answer through the proxy pair");
        }
        // Warm-up.
        keepalive(app, connections, 1).await?;
        keepalive(via, connections, 1).await?;

        eprintln!("keep-alive HTTP/1.1, {connections} connections, {seconds} s each…");
        let direct = keepalive(app, connections, seconds).await?;
        let cpu = (cpu_seconds(frontend_pid)?, cpu_seconds(backend_pid)?);
        let proxied = keepalive(via, connections, seconds).await?;
        let cpu = (
            cpu_seconds(frontend_pid)? - cpu.0,
            cpu_seconds(backend_pid)? - cpu.1,
        );
        let inbound_only = keepalive(inbound, connections, seconds).await?;
        report.push(format!(
            "keep-alive HTTP/1.1, {connections} connections, {seconds} s:"
        ));
        report.push(format!("  {}", direct.line("direct")));
        report.push(format!("  {}", proxied.line("pair")));
        report.push(format!("  {}  (backend inbound alone, plaintext, PERMISSIVE)", inbound_only.line("inbound")));
        report.push(format!(
            "  ratio {:.2}× (target ≥ 0.45×): {};  proxy CPU per request: frontend {:.1} µs, backend {:.1} µs",
            proxied.rate() / direct.rate(),
            if proxied.rate() / direct.rate() >= 0.45 { "met" } else { "MISSED" },
            cpu.0 * 1e6 / proxied.count.max(1) as f64,
            cpu.1 * 1e6 / proxied.count.max(1) as f64,
        ));

        if let Some(nginx) = &nginx {
            eprintln!("wrk against nginx, {connections} connections, {seconds} s each…");
            let direct = wrk(nginx.addr, connections, seconds)?;
            let proxied = wrk(mesh.frontend.outbound[1], connections, seconds)?;
            report.push(format!(
                "wrk (1 thread, {connections} connections, {seconds} s) against nginx (1 worker, `return 200`, no access log):"
            ));
            report.push(format!("  direct {direct}"));
            report.push(format!("  pair   {proxied}"));
            report.push(format!(
                "  ratio {:.2}× (target ≥ 0.45×): {}",
                proxied.rate / direct.rate,
                if proxied.rate / direct.rate >= 0.45 { "met" } else { "MISSED" }
            ));
        }

        eprintln!("bulk upload, {bulk_mib} MiB…");
        let bytes = bulk_mib * 1024 * 1024;
        let mut direct_mbs = Vec::new();
        let mut pair_mbs = Vec::new();
        for _ in 0..3 {
            direct_mbs.push(bulk(app, bytes).await?);
            pair_mbs.push(bulk(via, bytes).await?);
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let (d, p) = (best(&direct_mbs), best(&pair_mbs));
        report.push(format!(
            "bulk upload, {bulk_mib} MiB through one connection (best of 3): direct {d:.0} MB/s, pair {p:.0} MB/s"
        ));
        report.push(format!(
            "  runs: direct {:?}, pair {:?}",
            direct_mbs.iter().map(|v| v.round()).collect::<Vec<_>>(),
            pair_mbs.iter().map(|v| v.round()).collect::<Vec<_>>()
        ));
        report.push(format!(
            "  ratio {:.2}× (target ≥ 0.35×): {}",
            p / d,
            if p / d >= 0.35 { "met" } else { "MISSED" }
        ));

        eprintln!("new connection per request, {hs_workers} workers…");
        let hs_seconds = seconds.min(3);
        let direct = handshakes(app, hs_workers, hs_seconds, hs_cap).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = (cpu_seconds(frontend_pid)?, cpu_seconds(backend_pid)?);
        let proxied = handshakes(via, hs_workers, hs_seconds, hs_cap).await?;
        let cpu = (
            cpu_seconds(frontend_pid)? - cpu.0,
            cpu_seconds(backend_pid)? - cpu.1,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let inbound_only = handshakes(inbound, hs_workers, hs_seconds, hs_cap).await?;
        report.push(format!(
            "new connection per request (pair: a new mTLS handshake each), {hs_workers} at a time:"
        ));
        report.push(format!("  {}", direct.line("direct")));
        report.push(format!("  {}", proxied.line("pair")));
        report.push(format!("  {}  (backend inbound alone, plaintext, PERMISSIVE)", inbound_only.line("inbound")));
        report.push(format!(
            "  ratio {:.3}×;  proxy CPU per connection: frontend {:.0} µs, backend {:.0} µs",
            proxied.rate() / direct.rate(),
            cpu.0 * 1e6 / proxied.count.max(1) as f64,
            cpu.1 * 1e6 / proxied.count.max(1) as f64,
        ));
        report.push(format!(
            "RSS after the load: backend proxy {:.1} MiB, frontend proxy {:.1} MiB",
            rss_kib(backend_pid)? as f64 / 1024.0,
            rss_kib(frontend_pid)? as f64 / 1024.0
        ));

        eprintln!("mode changes ×{mode_changes}…");
        let mut times = Vec::new();
        for i in 0..mode_changes {
            let strict = i % 2 == 0;
            let mode = if strict { "STRICT" } else { "PERMISSIVE" };
            let start = Instant::now();
            let manifests = mesh.env.manifests.clone();
            tokio::task::spawn_blocking(move || set_mode(&manifests, mode)).await??;
            let cli = start.elapsed();
            loop {
                if plaintext_served(inbound).await != strict {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("{mode} not enforced within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = start.elapsed();
            eprintln!("  → {mode}: {:.0} ms (set-mode process {:.0} ms)", ms(took), ms(cli));
            times.push(took);
            // Let the next change start from a quiet state, out of phase with the 250 ms poll.
            tokio::time::sleep(Duration::from_millis(300 + 37 * i as u64)).await;
        }
        let (direct_ok, pair_ok) = (plaintext_served(app).await, plaintext_served(via).await);
        if !(direct_ok && pair_ok) {
            bail!("after the mode changes: direct {direct_ok}, pair {pair_ok}");
        }
        times.sort();
        if times.is_empty() {
            report.push("mode change: not measured (--mode-changes 0)".to_owned());
        } else {
        report.push(format!(
            "mode change (set-mode process → backend inbound enforces; {} changes, STRICT/PERMISSIVE alternating): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 ≤ 1 s): {}",
            times.len(),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            ms(times.last().copied().unwrap_or_default()),
            if percentile(&times, 0.99) <= Duration::from_secs(1) { "met" } else { "MISSED" }
        ));
        }
        report.push(format!(
            "idle RSS target ≤ 10 MB: {}",
            if rss_backend.max(rss_frontend) * 1024 <= 10_000_000 { "met" } else { "MISSED" }
        ));
        anyhow::Ok(())
    })?;

    println!();
    for line in report {
        println!("{line}");
    }
    Ok(())
}
