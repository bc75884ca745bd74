//! Load generator for a running CA: N CSRs over C concurrent TLS connections,
//! each request with its own pre-generated key and its own token (so the
//! CA's token cache never helps: the worst case). Reports CSRs/s, p50/p99
//! latency, and the CA process's CPU-seconds per CSR next to the cost of the
//! unavoidable crypto (CSR verify + JWT verify + leaf sign) measured here.
//!
//! `cargo bench --bench ca_load -- --requests 5000 --concurrency 16 [--agent]`
//!
//! With `--agent`, every request is a node agent's (one token, reused, as
//! ztunnel does) asking for a pod's identity with `ImpersonatedIdentity`: the
//! CA verifies that token once and then serves it from its token cache.
//!
//! `--ca-bin <path>` runs another `meshid` binary as the CA (default: the one
//! cargo just built), so that two builds can be compared back to back under
//! the same machine load.
//!
//! `--audit-store sqlite|postgres|both` (default sqlite): where the CA keeps
//! its audit log. `postgres` starts a throwaway PostgreSQL cluster (fsync on,
//! 127.0.0.1) and also reports PostgreSQL's CPU per CSR; `both` runs SQLite
//! then PostgreSQL in the same run, on the same pre-generated work.

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meshid::test_helpers::{cli_arg, cli_value, key_and_csr, request, CaProcess, TestEnv};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// utime + stime of the CA's audit writer thread (`meshid-audit-writer`, which
/// the kernel shortens to 15 bytes), in seconds; 0 if there is none.
fn audit_writer_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == "meshid-audit-wr" {
            total += stat_cpu_seconds(&dir.join("stat").to_string_lossy())?;
        }
    }
    Ok(total)
}

/// `meshid_audit_commits_total` and `meshid_audit_records_committed_total` from
/// the CA's `/metrics` (zeros if the CA does not export them).
fn audit_commits(metrics: std::net::SocketAddr) -> anyhow::Result<(f64, f64)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(metrics)?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("meshid_audit_commits_total"),
        value("meshid_audit_records_committed_total"),
    ))
}

/// CPU seconds of a PostgreSQL cluster: the postmaster and its live children.
fn postgres_cpu_seconds(pg: &meshid::test_helpers::postgres::PgCluster) -> anyhow::Result<f64> {
    let postmaster = pg.pid().context("postmaster pid")?;
    let mut total = cpu_seconds(postmaster)?;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    Ok(total)
}

fn stat_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    let after_comm = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm field they are at 11 and 12.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    let hz: f64 = String::from_utf8_lossy(&hz.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0);
    Ok(ticks / hz)
}

/// Microseconds of CSR verify + JWT verify + leaf sign with ring, in this
/// process, and of the JWT verify alone.
fn crypto_baseline_us() -> (f64, f64) {
    let rng = SystemRandom::new();
    let gen = |alg: &'static ring::signature::EcdsaSigningAlgorithm| {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key")
    };
    let (workload, issuer, ca) = (
        gen(&ECDSA_P256_SHA256_ASN1_SIGNING),
        gen(&ECDSA_P256_SHA256_FIXED_SIGNING),
        gen(&ECDSA_P256_SHA256_ASN1_SIGNING),
    );
    let (csr_body, jwt_input, tbs) = (vec![0x30u8; 250], vec![b'e'; 900], vec![0x30u8; 450]);
    let csr_sig = workload.sign(&rng, &csr_body).expect("sign");
    let jwt_sig = issuer.sign(&rng, &jwt_input).expect("sign");
    let wpk = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        workload.public_key().as_ref().to_vec(),
    );
    let ipk = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        issuer.public_key().as_ref().to_vec(),
    );
    let n = 3000;
    let start = Instant::now();
    for _ in 0..n {
        wpk.verify(&csr_body, csr_sig.as_ref()).expect("ok");
        ipk.verify(&jwt_input, jwt_sig.as_ref()).expect("ok");
        std::hint::black_box(ca.sign(&rng, &tbs).expect("sign"));
    }
    let all = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let start = Instant::now();
    for _ in 0..n {
        ipk.verify(&jwt_input, jwt_sig.as_ref()).expect("ok");
    }
    (all, start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() -> anyhow::Result<()> {
    let total = cli_arg::<usize>("--requests", 5000);
    let agent_mode = meshid::test_helpers::cli_flag("--agent");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    env.add_node_agent("node-a");
    let id = env.id("default", "web");
    let agent_token = env.node_agent_token("node-a");
    let impersonate = agent_mode.then(|| id.to_string());
    eprintln!("pre-generating {total} keys, CSRs and tokens…");
    let work: Vec<(String, String)> = (0..total + 200)
        .map(|_| {
            let (_key, csr) = key_and_csr(&id);
            let token = if agent_mode {
                agent_token.clone()
            } else {
                env.token(
                    "default",
                    "web",
                    Some(("web-1", "uid-web-1")),
                    Some("node-a"),
                )
            };
            (csr, token)
        })
        .collect();
    let (warmup, work) = work.split_at(200);

    std::env::set_var("MESHID_TEST_CA_LOG", "info");
    let ca_bin = cli_value("--ca-bin").unwrap_or_else(|| env!("CARGO_BIN_EXE_meshid").to_owned());
    let stores = match cli_value("--audit-store").as_deref() {
        None | Some("sqlite") => vec!["sqlite"],
        Some("postgres") => vec!["postgres"],
        Some("both") => vec!["sqlite", "postgres"],
        Some(other) => anyhow::bail!("--audit-store {other}: sqlite, postgres or both"),
    };
    for store in stores {
        // Each store gets its own data directory (its own root and checkpoint key).
        let pg = match store {
            "postgres" => Some(
                meshid::test_helpers::postgres::PgCluster::start(true)?
                    .context("PostgreSQL is not installed")?,
            ),
            _ => None,
        };
        let mut flags: Vec<String> = [
            "--max-concurrent-requests",
            "1024",
            "--trusted-node-accounts",
            "meshid-system/meshid-agent",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(pg) = &pg {
            pg.create_db("audit")?;
            flags.extend(["--audit-store".to_owned(), pg.dsn("audit", true)]);
        }
        println!("audit store         {store}");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        measure(
            &runtime,
            &env,
            &ca_bin,
            &flags,
            warmup,
            work,
            impersonate.as_deref(),
            agent_mode,
            pg.as_ref(),
        )?;
        println!();
    }
    Ok(())
}

/// Starts the CA with `flags`, sends the warm-up and the work, prints the figures.
#[allow(clippy::too_many_arguments)]
fn measure(
    runtime: &tokio::runtime::Runtime,
    env: &TestEnv,
    ca_bin: &str,
    flags: &[&str],
    warmup: &[(String, String)],
    work: &[(String, String)],
    impersonate: Option<&str>,
    agent_mode: bool,
    pg: Option<&meshid::test_helpers::postgres::PgCluster>,
) -> anyhow::Result<()> {
    let total = work.len();
    let concurrency = cli_arg::<usize>("--concurrency", 16).max(1);
    let impersonate = impersonate.map(str::to_owned);
    let ca = CaProcess::spawn(std::path::Path::new(ca_bin), env, flags)?;
    let pid = ca.pid().context("CA pid")?;
    let root = env.root_pem();

    runtime.block_on(async {
        let mut client = ca.client(&root).await?;
        for (csr, token) in warmup {
            client
                .create_certificate(request(csr, 3600, Some(token), impersonate.as_deref()))
                .await?;
        }
        let cpu_before = cpu_seconds(pid)?;
        let pg_before = pg.map(postgres_cpu_seconds).transpose()?;
        let writer_before = audit_writer_cpu_seconds(pid)?;
        let commits_before = audit_commits(ca.metrics_addr)?;
        let work = Arc::new(work.to_vec());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..concurrency {
            let work = work.clone();
            let impersonate = impersonate.clone();
            let mut client = ca.client(&root).await?;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for (csr, token) in work.iter().skip(worker).step_by(concurrency) {
                    let t = Instant::now();
                    client
                        .create_certificate(request(csr, 3600, Some(token), impersonate.as_deref()))
                        .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let elapsed = started.elapsed();
        let cpu = cpu_seconds(pid)? - cpu_before;
        let pg_cpu = pg
            .map(postgres_cpu_seconds)
            .transpose()?
            .zip(pg_before)
            .map(|(after, before)| after - before);
        let writer_cpu = audit_writer_cpu_seconds(pid)? - writer_before;
        let commits_after = audit_commits(ca.metrics_addr)?;
        let commits = commits_after.0 - commits_before.0;
        let committed = commits_after.1 - commits_before.1;
        latencies.sort();
        let (baseline, jwt_us) = crypto_baseline_us();
        // In agent mode the token is verified once, not per CSR.
        let baseline = if agent_mode {
            baseline - jwt_us
        } else {
            baseline
        };
        let cpu_per_csr_us = cpu * 1e6 / total as f64;
        println!(
            "mode                {}",
            if agent_mode {
                "node agent, one token, impersonation"
            } else {
                "workload, one token per CSR"
            }
        );
        println!("requests            {total}");
        println!("concurrency         {concurrency}");
        println!(
            "throughput          {:.0} CSRs/s",
            total as f64 / elapsed.as_secs_f64()
        );
        println!(
            "latency p50         {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3
        );
        println!(
            "latency p99         {:.2} ms",
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
        println!("CA CPU per CSR      {cpu_per_csr_us:.0} µs");
        println!(
            "  of which audit    {:.0} µs (the audit writer thread)",
            writer_cpu * 1e6 / total as f64
        );
        if commits > 0.0 {
            println!(
                "audit commits       {commits:.0} ({:.1} records per commit)",
                committed / commits
            );
        }
        let steps = if agent_mode {
            "CSR verify + leaf sign"
        } else {
            "CSR verify + JWT verify + leaf sign"
        };
        println!("crypto baseline     {baseline:.0} µs ({steps}, ring)");
        println!("ratio               {:.2}x", cpu_per_csr_us / baseline);
        println!(
            "CSRs per CA CPU-s   {:.0}",
            total as f64 / cpu.max(1e-9)
        );
        if let Some(pg_cpu) = pg_cpu {
            println!(
                "PostgreSQL CPU      {:.0} µs per CSR (its processes); CA + PostgreSQL {:.0} CSRs per CPU-s",
                pg_cpu * 1e6 / total as f64,
                total as f64 / (cpu + pg_cpu).max(1e-9)
            );
        }
        anyhow::Ok(())
    })
}
