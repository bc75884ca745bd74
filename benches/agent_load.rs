//! Load generator for a running node agent: N workloads, each with its own
//! service account (so N distinct identities), attested by their bound
//! service-account token over SDS (`authorization: Bearer …`, the Istio 1.1
//! node-agent way). Each workload opens a NEW connection to the agent's Unix
//! socket and calls `FetchSecrets` for `default`; the time measured runs from
//! before the connect to the response, so on the first pass it includes the
//! agent's key generation and the CSR round trip to the CA (on loopback) for a
//! never-seen identity. A second pass over the same workloads measures the
//! cached path. Reports p50/p99/max and throughput of both passes, the agent's
//! RSS before any identity and with N identities cached, and the agent's and
//! CA's CPU per identity.
//!
//! `cargo bench --bench agent_load -- --identities 1000 --concurrency 32 [--max-concurrent-csrs 16]`
//!
//! Without `--max-concurrent-csrs` the agent runs with its default (8).
//! `--pause S` waits S seconds after start (pids on stderr) to attach a profiler.

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshid::proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use meshid::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshid::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshid::test_helpers::{cli_arg, cli_value, AgentProcess, CaProcess, TestEnv};
use prost::Message;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const NAMESPACE: &str = "bench";
const NODE: &str = "node-a";

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

/// (VmRSS, VmHWM) of `pid`, in KiB, from /proc/<pid>/status.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A plain HTTP/1.1 GET; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A gRPC channel over the agent's Unix socket: a new connection each call.
async fn uds_channel(path: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let path = path.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://agent.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// One workload's first contact: connect, `FetchSecrets(default)` with its
/// token. Returns the latency and the response.
async fn fetch_default(
    socket: &Path,
    token: &str,
) -> anyhow::Result<(Duration, DiscoveryResponse)> {
    let started = Instant::now();
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(socket).await?);
    let mut request = tonic::Request::new(DiscoveryRequest {
        resource_names: vec!["default".to_owned()],
        type_url: SECRET_TYPE.to_owned(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let response = client.fetch_secrets(request).await?.into_inner();
    Ok((started.elapsed(), response))
}

/// Checks that the response carries `default` with a key and a chain whose
/// leaf names `expected` (outside the timed section).
fn check_response(response: &DiscoveryResponse, expected: &str) -> anyhow::Result<()> {
    let any = response
        .resources
        .iter()
        .find(|r| r.type_url == SECRET_TYPE)
        .context("no secret in the response")?;
    let secret = Secret::decode(any.value.as_slice())?;
    if secret.name != "default" {
        bail!("got secret {:?}, wanted default", secret.name);
    }
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        bail!("default is not a tls_certificate");
    };
    use meshid::proto::envoy::config::core::v3::data_source::Specifier;
    let inline = |ds: &Option<meshid::proto::envoy::config::core::v3::DataSource>| match ds
        .as_ref()
        .and_then(|d| d.specifier.as_ref())
    {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).ok(),
        Some(Specifier::InlineString(s)) => Some(s.clone()),
        _ => None,
    };
    let chain = inline(&tls.certificate_chain).context("chain not inline")?;
    let key = inline(&tls.private_key).context("key not inline")?;
    if !key.contains("PRIVATE KEY") {
        bail!("no private key");
    }
    let certs = meshid::pki::bundle::parse_pem_certs(&chain)?;
    let leaf = certs.first().context("empty chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())?;
    let san = cert
        .subject_alternative_name()?
        .context("leaf has no subjectAltName")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    if uris != [expected] {
        bail!("leaf names {uris:?}, wanted {expected}");
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Pass {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: Vec<String>,
}

/// Every workload once, `concurrency` at a time; each on a new connection.
async fn run_pass(
    socket: &Path,
    work: &Arc<Vec<(String, String)>>,
    concurrency: usize,
) -> anyhow::Result<Pass> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, work, socket) = (next.clone(), work.clone(), socket.to_path_buf());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((token, expected)) = work.get(i) else {
                    break;
                };
                match fetch_default(&socket, token).await {
                    Ok((latency, response)) => match check_response(&response, expected) {
                        Ok(()) => latencies.push(latency),
                        Err(e) => errors.push(format!("workload {i}: {e:#}")),
                    },
                    Err(e) => errors.push(format!("workload {i}: {e:#}")),
                }
            }
            (latencies, errors)
        }));
    }
    let mut pass = Pass {
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        errors: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await?;
        pass.latencies.extend(latencies);
        pass.errors.extend(errors);
    }
    pass.elapsed = started.elapsed();
    pass.latencies.sort();
    Ok(pass)
}

fn report_pass(label: &str, pass: &Pass) {
    let n = pass.latencies.len();
    println!("{label}");
    println!(
        "  ok / errors       {n} / {}{}",
        pass.errors.len(),
        pass.errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if n == 0 {
        return;
    }
    println!(
        "  throughput        {:.0} workloads/s ({:.2} s)",
        n as f64 / pass.elapsed.as_secs_f64(),
        pass.elapsed.as_secs_f64()
    );
    println!(
        "  latency p50       {:.2} ms",
        ms(percentile(&pass.latencies, 0.50))
    );
    println!(
        "  latency p99       {:.2} ms",
        ms(percentile(&pass.latencies, 0.99))
    );
    println!(
        "  latency max       {:.2} ms",
        ms(*pass.latencies.last().unwrap_or(&Duration::ZERO))
    );
}

/// Writes `n` Running pods `bench/w-<i>` (service account `sa-<i>`, node-a)
/// into a few multi-document manifests.
fn write_pods(manifests: &Path, n: usize) -> anyhow::Result<()> {
    const PER_FILE: usize = 250;
    for (file, start) in (0..n).step_by(PER_FILE).enumerate() {
        let mut yaml = String::new();
        for i in start..(start + PER_FILE).min(n) {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: w-{i}\n  namespace: {NAMESPACE}\n  \
                 uid: uid-w-{i}\nspec:\n  nodeName: {NODE}\n  serviceAccountName: sa-{i}\n\
                 status:\n  phase: Running\n"
            ));
        }
        let path: PathBuf = manifests.join(format!("pods-bench-{file}.yaml"));
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let identities = cli_arg::<usize>("--identities", 1000).max(1);
    let concurrency = cli_arg::<usize>("--concurrency", 32).max(1);
    let max_csrs = cli_value("--max-concurrent-csrs").and_then(|v| v.parse::<usize>().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let env = TestEnv::new();
    env.add_node_agent(NODE);
    write_pods(&env.manifests, identities)?;
    eprintln!("pre-generating {identities} bound tokens…");
    let work: Vec<(String, String)> = (0..identities)
        .map(|i| {
            let token = env.token(
                NAMESPACE,
                &format!("sa-{i}"),
                Some((&format!("w-{i}"), &format!("uid-w-{i}"))),
                Some(NODE),
            );
            let id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/sa-{i}");
            (token, id)
        })
        .collect();
    let work = Arc::new(work);
    let agent_token = env.node_agent_token_file(NODE);

    std::env::set_var("MESHID_TEST_CA_LOG", "warn");
    std::env::set_var("MESHID_TEST_AGENT_LOG", "warn");
    let bin = Path::new(env!("CARGO_BIN_EXE_meshid"));
    let ca = CaProcess::spawn(
        bin,
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )?;
    let max_csrs_text = max_csrs.map(|m| m.to_string());
    let mut agent_args = vec!["--workload-ttl", "1h"];
    if let Some(m) = &max_csrs_text {
        agent_args.extend(["--max-concurrent-csrs", m.as_str()]);
    }
    let agent = AgentProcess::spawn(bin, &env, ca.addr, NODE, &agent_token, &agent_args)?;
    let agent_pid = agent.pid().context("agent pid")?;
    let ca_pid = ca.pid().context("CA pid")?;

    eprintln!("agent pid {agent_pid}, CA pid {ca_pid}");
    // `--pause S`: time to attach a profiler (`perf record -g -p <pid>`).
    std::thread::sleep(
        Duration::from_millis(500) + Duration::from_secs(cli_arg::<u64>("--pause", 0)),
    );
    let (rss_start, _) = memory_kib(agent_pid)?;
    let metrics_start = http_get(agent.metrics_addr, "/metrics")?;
    let cached_at_start = metric(&metrics_start, "meshid_agent_cache_identities").unwrap_or(0.0);

    let (first, second, cpu_agent, cpu_ca, rss_after, hwm_after) = runtime.block_on(async {
        let (agent_cpu0, ca_cpu0) = (cpu_seconds(agent_pid)?, cpu_seconds(ca_pid)?);
        let first = run_pass(&agent.socket, &work, concurrency).await?;
        let cpu_agent = cpu_seconds(agent_pid)? - agent_cpu0;
        let cpu_ca = cpu_seconds(ca_pid)? - ca_cpu0;
        let (rss, hwm) = memory_kib(agent_pid)?;
        let second = run_pass(&agent.socket, &work, concurrency).await?;
        anyhow::Ok((first, second, cpu_agent, cpu_ca, rss, hwm))
    })?;
    let (rss_end, hwm_end) = memory_kib(agent_pid)?;
    let metrics = http_get(agent.metrics_addr, "/metrics")?;
    let cached = metric(&metrics, "meshid_agent_cache_identities");
    let ttfc = metric(&metrics, "meshid_agent_time_to_first_cert_seconds_sum").zip(metric(
        &metrics,
        "meshid_agent_time_to_first_cert_seconds_count",
    ));

    println!("identities          {identities} (one service account each, node-a)");
    println!("concurrency         {concurrency} workloads at a time, a new connection each");
    println!(
        "agent CSR slots     {}",
        max_csrs.map_or_else(|| "8 (default)".to_owned(), |m| m.to_string())
    );
    report_pass(
        "first pass (never-seen identities: keygen + CSR to the CA)",
        &first,
    );
    report_pass("second pass (identities cached)", &second);
    if let Some((sum, count)) = ttfc {
        if count > 0.0 {
            println!(
                "agent-side time to first cert, mean  {:.2} ms over {count:.0}",
                sum / count * 1e3
            );
        }
    }
    let n = first.latencies.len().max(1) as f64;
    println!(
        "CPU per identity    agent {:.0} µs, CA {:.0} µs (first pass)",
        cpu_agent * 1e6 / n,
        cpu_ca * 1e6 / n
    );
    println!(
        "agent RSS           {:.1} MiB at start ({cached_at_start:.0} identities), \
         {:.1} MiB after the first pass (VmHWM {:.1} MiB), {:.1} MiB at the end (VmHWM {:.1} MiB)",
        mib(rss_start),
        mib(rss_after),
        mib(hwm_after),
        mib(rss_end),
        mib(hwm_end)
    );
    println!(
        "per identity        {:.1} KiB (RSS after first pass − RSS at start, / {identities})",
        (rss_after as f64 - rss_start as f64) / identities as f64
    );
    println!(
        "cache identities    {} (meshid_agent_cache_identities; expected {identities})",
        cached.map_or_else(|| "absent".to_owned(), |c| format!("{c:.0}"))
    );
    if !first.errors.is_empty() || !second.errors.is_empty() {
        for e in first.errors.iter().chain(&second.errors).take(5) {
            eprintln!("error: {e}");
        }
        bail!(
            "{} + {} workloads failed",
            first.errors.len(),
            second.errors.len()
        );
    }
    if cached != Some(identities as f64) {
        bail!("meshid_agent_cache_identities is {cached:?}, expected {identities}");
    }
    Ok(())
}
