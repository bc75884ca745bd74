//! Time from starting `meshid up` to the first successful mTLS call between
//! its demo workloads (issue 5: under 2 s after the binary starts).
//!
//! Each run spawns the release binary (`CARGO_BIN_EXE_meshid`, built by
//! `cargo bench` itself) as `meshid up --port-base B --data-dir D` and
//! measures from just before the spawn until the backend's proxy reports, on
//! its own `/metrics` (polled every 5 ms), an inbound connection that it
//! allowed after verifying the peer `spiffe://cluster.local/ns/default/sa/frontend`
//! (`meshid_proxy_connections_total{direction="inbound",outcome="allowed",
//! source_principal=…frontend}` ≥ 1). That counter moves once the proxy has
//! finished the mTLS handshake, checked the frontend's SVID and connected to
//! the backend app: the call's answer follows on loopback. `up` is not asked
//! to time itself; what it prints is read only for comparison: when the
//! banner appears (everything started) and its own "first successful mTLS
//! call N ms after start" (measured from entering `up`, after process start
//! and flag parsing). Then `up` gets SIGTERM and must exit before the next run.
//!
//! Two variants, `--runs` each: a fresh data directory per run (new root, new
//! audit store, new manifests) and one reused data directory (created by a
//! warm-up run that is not counted), as a second `meshid up` finds it.
//!
//! `cargo bench --bench up_start -- [--runs 10] [--port-base 17000]`

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshid::test_helpers::cli_arg;

const BIN: &str = env!("CARGO_BIN_EXE_meshid");
const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
/// How often the backend proxy's metrics are read.
const POLL: Duration = Duration::from_millis(5);
/// A run that has not seen its first call by then failed.
const GIVE_UP: Duration = Duration::from_secs(30);

/// What one run saw, each from just before the spawn.
struct Run {
    first_call: Duration,
    banner: Option<Duration>,
    /// `up`'s own figure, from entering `up`.
    self_reported: Option<Duration>,
}

/// Lines of `up`'s stdout that matter here, with the time they were read.
enum Seen {
    Banner(Instant),
    FirstCall(Duration),
}

/// Kills `up` if a run fails half-way.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the backend proxy's metrics show an allowed inbound connection from the frontend.
fn backend_saw_frontend(metrics: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&metrics, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let principal = format!("source_principal=\"{FRONTEND}\"");
    text.lines().any(|l| {
        l.starts_with("meshid_proxy_connections_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("outcome=\"allowed\"")
            && l.contains(&principal)
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0)
    })
}

/// `up`'s own "first successful mTLS call N ms after start".
fn self_reported(line: &str) -> Option<Duration> {
    let ms = line
        .trim()
        .strip_prefix("first successful mTLS call ")?
        .strip_suffix(" ms after start")?;
    ms.parse().ok().map(Duration::from_millis)
}

fn one_run(data_dir: &Path, log: &Path, port_base: u16) -> anyhow::Result<Run> {
    let metrics = SocketAddr::from(([127, 0, 0, 1], port_base + 116));
    let start = Instant::now();
    let mut up = Up(Command::new(BIN)
        .args(["up", "--port-base", &port_base.to_string(), "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("spawning meshid up")?);
    let stdout = up.0.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let seen = if line.starts_with("meshid up: the mesh is running") {
                Some(Seen::Banner(Instant::now()))
            } else {
                self_reported(&line).map(Seen::FirstCall)
            };
            if let Some(seen) = seen {
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
    });

    let first_call = loop {
        if backend_saw_frontend(metrics) {
            break start.elapsed();
        }
        if let Some(status) = up.0.try_wait()? {
            bail!(
                "meshid up exited ({status}) before the first call; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if start.elapsed() > GIVE_UP {
            bail!(
                "no mTLS call from the frontend within {GIVE_UP:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(POLL);
    };

    // The status prints `up`'s own figure from 1.5 s after start-up on.
    let mut banner = None;
    let mut reported = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reported.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Seen::Banner(at)) => banner = Some(at.duration_since(start)),
            Ok(Seen::FirstCall(d)) => reported = Some(d),
            Err(_) => break,
        }
    }

    let pid = up.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let stopping = Instant::now();
    loop {
        if up.0.try_wait()?.is_some() {
            break;
        }
        if stopping.elapsed() > Duration::from_secs(10) {
            bail!("meshid up still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Run {
        first_call,
        banner,
        self_reported: reported,
    })
}

/// min / median / p90 (nearest rank) / max, in ms.
fn summary(mut values: Vec<Duration>) -> String {
    if values.is_empty() {
        return "n/a".to_owned();
    }
    values.sort();
    let n = values.len();
    let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.0} ms, median {:.0} ms, p90 {:.0} ms, max {:.0} ms (n = {n})",
        ms(values[0]),
        ms(rank(0.5)),
        ms(rank(0.9)),
        ms(values[n - 1])
    )
}

fn report(variant: &str, runs: &[Run]) {
    println!("\n{variant}:");
    println!(
        "  spawn → first mTLS call (backend proxy's metrics):  {}",
        summary(runs.iter().map(|r| r.first_call).collect())
    );
    println!(
        "  spawn → banner (everything started):                {}",
        summary(runs.iter().filter_map(|r| r.banner).collect())
    );
    println!(
        "  `up`'s own figure (from entering `up`):             {}",
        summary(runs.iter().filter_map(|r| r.self_reported).collect())
    );
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` does not: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let runs = cli_arg::<u64>("--runs", 10);
    let port_base = u16::try_from(cli_arg::<u64>("--port-base", 17000)).context("--port-base")?;
    let root = tempfile::tempdir()?;
    println!("meshid up, {runs} runs per variant, ports {port_base}+, binary {BIN}");

    let mut fresh = Vec::new();
    for i in 0..runs {
        let run = one_run(
            &root.path().join(format!("fresh-{i}")),
            &root.path().join(format!("fresh-{i}.log")),
            port_base,
        )?;
        println!(
            "  fresh  #{i}: first call {} ms",
            run.first_call.as_millis()
        );
        fresh.push(run);
    }

    let reused_dir = root.path().join("reused");
    one_run(&reused_dir, &root.path().join("warm-up.log"), port_base)?;
    let mut reused = Vec::new();
    for i in 0..runs {
        let run = one_run(
            &reused_dir,
            &root.path().join(format!("reused-{i}.log")),
            port_base,
        )?;
        println!(
            "  reused #{i}: first call {} ms",
            run.first_call.as_millis()
        );
        reused.push(run);
    }

    report(
        "fresh data directory (new root, audit store and manifests)",
        &fresh,
    );
    report(
        "reused data directory (the root and audit store of an earlier run)",
        &reused,
    );
    let worst = fresh
        .iter()
        .chain(&reused)
        .map(|r| r.first_call)
        .max()
        .unwrap_or_default();
    println!(
        "\ntarget: first mTLS call under 2 s after the binary starts: {} (worst run {} ms)",
        if worst < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        },
        worst.as_millis()
    );
    Ok(())
}
