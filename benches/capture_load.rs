//! The data plane with transparent capture against the same with explicit
//! routes, in the same run: two network namespaces on a bridge, `wrk` (one
//! thread) in the client's and `nginx` (one worker, `return 200`) in the
//! server's, each side with a `meshid-proxy` (one thread). First direct (no
//! proxy, no rule); then, with `proxy init`'s rules in both namespaces and
//! each side's proxy (uid 1337) serving both an explicit route and
//! `--capture`, interleaved rounds of explicit routes (the client calls the
//! frontend's outbound route, which names the server's identity) and
//! capture (the client calls the server's pod IP on nginx's own port). For
//! each: requests/s, p50/p99, and each proxy's CPU per request
//! (utime+stime from /proc).
//!
//! Then the cost of a connection (issue 16), routes against capture (HBONE
//! between the proxies) in the same run:
//! - a new connection per request (`wrk -H "Connection: close"`): the
//!   proxies' CPU per request;
//! - idle connections (`--idle 1000,10000`): a Python client in the client's
//!   namespace opens N keep-alive connections, one request each, and holds
//!   them; each proxy's RSS before, while held (KB per connection), and
//!   10 s after they close (against the baseline). Routes only at the first
//!   N: each routed connection costs the frontend two descriptors, and the
//!   limit here is 20,000;
//! - bulk (iperf3, one stream): Gbit/s and the proxies' CPU per GB, direct,
//!   routes and capture.
//!
//! Root only (network namespaces, netfilter); needs `wrk`, `nginx`,
//! `iptables`, `iperf3`, `python3` (Debian's `wrk`, `nginx-light`,
//! `iptables`, `iperf3`).
//!
//! `cargo bench --bench capture_load -- [--seconds 10] [--connections 10] [--rounds 3] [--idle 1000,10000] [--baseline OLD-meshid-proxy]`
//!
//! `MESHID_BENCH_PHASES=wrk,bulk,idle`: only those phases of the proxies.
//!
//! `--baseline`: an older `meshid-proxy` binary is measured first, the same
//! phases (idle at the first N only), before the current one.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

// Shared with proxy_load, which uses the parts this bench does not.
#[allow(dead_code)]
#[path = "proxy_load/third_party.rs"]
mod third_party;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use meshid::test_helpers::netns::Lan;
use meshid::test_helpers::{
    cli_arg, cpu_seconds, rss_kib, InProcessAgent, InProcessCa, Managed, NetNs, TestEnv,
};
use third_party::{wrk_with, Nginx, WrkRun};

const CLIENT_IP: &str = "10.79.0.2";
const SERVER_IP: &str = "10.79.0.3";
const NGINX_PORT: u16 = 8080;
const PROXY: &str = env!("CARGO_BIN_EXE_meshid-proxy");
const MESHID: &str = env!("CARGO_BIN_EXE_meshid");

fn write_pod(env: &TestEnv, name: &str, ip: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  uid: uid-{name}\n  \
         labels:\n    security.meshid.io/tlsMode: meshid\nspec:\n  nodeName: node-a\n  \
         serviceAccountName: {name}\nstatus:\n  phase: Running\n  podIP: {ip}\n"
    );
    std::fs::write(env.manifests.join(format!("pod-default-{name}.yaml")), yaml).unwrap();
}

/// `meshid-proxy` in `ns` as uid 1337 with `args`, attested by pod `name`'s token.
fn proxy(
    bin: &str,
    ns: &NetNs,
    env: &TestEnv,
    agent: &InProcessAgent,
    name: &str,
    args: &[&str],
) -> Managed {
    let token = env.token_file(
        &format!("{name}.token"),
        "default",
        name,
        Some((name, &format!("uid-{name}"))),
        Some("node-a"),
    );
    chmod(&token, 0o644);
    let mut cmd = ns.command("setpriv");
    cmd.args(["--reuid", "1337", "--regid", "1337", "--clear-groups", bin])
        .arg("--agent-socket")
        .arg(&agent.socket)
        .arg("--token-file")
        .arg(&token)
        .args(args)
        .env("RUST_LOG", "warn");
    let log = env
        .dir
        .path()
        .join(format!("proxy-{name}-{}.log", crate::next_log()));
    Managed::start(&mut cmd, log, "meshid-proxy", "meshid proxy ready: ")
        .unwrap()
        .0
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One wrk run (with `extra` wrk arguments), and the CPU each proxy spent
/// per request meanwhile.
fn measure(
    client: &NetNs,
    url: &str,
    proxies: &[&Managed],
    connections: usize,
    seconds: u64,
    extra: &[&str],
) -> (WrkRun, Vec<f64>) {
    let pids: Vec<u32> = proxies.iter().map(|p| p.pid().unwrap()).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let prefix = ["ip", "netns", "exec", client.name.as_str()];
    let run = wrk_with(&prefix, url, connections, seconds, extra).unwrap();
    let requests = run.rate * seconds as f64;
    let per_request: Vec<f64> = pids
        .iter()
        .zip(before)
        .map(|(pid, b)| (cpu_seconds(*pid) - b) * 1e6 / requests.max(1.0))
        .collect();
    (run, per_request)
}

fn report(what: &str, (run, cpu): &(WrkRun, Vec<f64>)) {
    let cpu: Vec<String> = cpu.iter().map(|c| format!("{c:.1}")).collect();
    println!(
        "{what:<20} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  proxy CPU µs/request [{}]{}",
        run.rate,
        run.p50_ms,
        run.p99_ms,
        cpu.join(", "),
        if run.errors { "  (errors)" } else { "" }
    );
}

/// One iperf3 run from the client to `host:port` (a server started for it
/// on port 5201 in the server's namespace): Gbit/s and the proxies' CPU
/// seconds per GB moved; `None` without iperf3.
fn iperf(
    client: &NetNs,
    server: &NetNs,
    host: &str,
    port: u16,
    proxies: &[&Managed],
    seconds: u64,
) -> Option<(f64, f64)> {
    let mut daemon = server
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let pids: Vec<u32> = proxies.iter().map(|p| p.pid().unwrap()).collect();
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let mut out = None;
    let mut failure = String::new();
    let mut before = cpu();
    for _ in 0..50 {
        before = cpu();
        let run = client.exec(&[
            "iperf3",
            "-c",
            host,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        if run.status.success() {
            out = Some(run.stdout);
            break;
        }
        failure = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if out.is_none() {
        eprintln!("iperf3 to {host}:{port} failed: {failure}");
    }
    let spent = cpu() - before;
    let _ = daemon.kill();
    let _ = daemon.wait();
    let json: serde_json::Value = serde_json::from_slice(&out?).ok()?;
    let bits = json["end"]["sum_received"]["bits_per_second"].as_f64()?;
    let bytes = json["end"]["sum_received"]["bytes"].as_f64()?;
    Some((bits / 1e9, spent / (bytes / 1e9).max(1e-9)))
}

/// Holds N keep-alive connections to `host:port`, one request answered on
/// each, opened in batches of 100; prints `ready`, and `closed` after its
/// standard input closes.
const HOLDER: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
socks = []
for start in range(0, n, 100):
    batch = [socket.create_connection((host, port)) for _ in range(min(100, n - start))]
    for s in batch:
        s.sendall(req)
    for s in batch:
        data = b""
        while b"hello from backend" not in data:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("a connection closed before its response")
            data += chunk
    socks.extend(batch)
print("ready", flush=True)
sys.stdin.read()
for s in socks:
    s.close()
print("closed", flush=True)
"#;

/// RSS of each proxy (KiB): before, while `n` idle connections to
/// `host:port` are held, and 10 s after they closed.
fn idle_phase(
    client: &NetNs,
    host: &str,
    port: u16,
    n: usize,
    proxies: &[&Managed],
) -> [Vec<u64>; 3] {
    let rss = || -> Vec<u64> { proxies.iter().map(|p| rss_kib(p.pid().unwrap())).collect() };
    let base = rss();
    let mut holder = client
        .command("python3")
        .args(["-c", HOLDER, host, &port.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "the idle holder failed (see above)"
    );
    // Let the proxies settle (deferred frees, the release policy's tick).
    std::thread::sleep(Duration::from_secs(3));
    let held = rss();
    drop(holder.stdin.take());
    let closed = lines.next().and_then(Result::ok);
    assert_eq!(closed.as_deref(), Some("closed"));
    let _ = holder.wait();
    std::thread::sleep(Duration::from_secs(10));
    [base, held, rss()]
}

fn report_idle(what: &str, n: usize, [base, held, after]: &[Vec<u64>; 3]) {
    let names = ["frontend", "backend"];
    for (i, name) in names.iter().enumerate() {
        let per = (held[i] as f64 - base[i] as f64) * 1024.0 / 1000.0 / n as f64;
        let back = (after[i] as f64 / base[i] as f64 - 1.0) * 100.0;
        println!(
            "idle {what:<15} {n:>6} conns  {name:<8} baseline {:>7} KiB  held {:>7} KiB  {per:>5.1} KB/conn  10 s after close {:>7} KiB ({back:+.0} % of baseline)",
            base[i], held[i], after[i]
        );
    }
}

/// More ports and reuse of TIME_WAIT ports in `ns`: a connection per request
/// for tens of seconds would run out of ephemeral ports otherwise. The
/// range stays above the proxies' ports (150xx), which a connection's
/// ephemeral port would otherwise take from a restarted proxy.
fn tune(ns: &NetNs) {
    for setting in [
        "net.ipv4.ip_local_port_range=20000 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        let _ = ns.exec(&["sysctl", "-q", "-w", setting]);
    }
}

fn main() {
    if let Some(why) = NetNs::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let seconds: u64 = cli_arg("--seconds", 10);
    let connections: usize = cli_arg("--connections", 10);
    let rounds: usize = cli_arg("--rounds", 3);
    let idle: String = cli_arg("--idle", "1000".to_owned());
    let idle: Vec<usize> = idle.split(',').map(|n| n.parse().unwrap()).collect();
    // An older meshid-proxy binary to measure first, in the same run.
    let baseline: Option<String> = std::env::args().skip_while(|a| a != "--baseline").nth(1);

    let env = TestEnv::new();
    chmod(env.dir.path(), 0o755);
    env.add_node_agent("node-a");
    write_pod(&env, "client", CLIENT_IP);
    write_pod(&env, "server", SERVER_IP);
    let ca = InProcessCa::with_flags(
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let agent_token = env.node_agent_token_file("node-a");
    let agent = InProcessAgent::with_flags(&env, ca.addr, "node-a", &agent_token, &[]).unwrap();

    let mut lan = Lan::new();
    let (c, s) = (lan.pod("cli", CLIENT_IP), lan.pod("srv", SERVER_IP));
    let (client, server) = (&lan.pods[c], &lan.pods[s]);
    tune(client);
    tune(server);
    let nginx_addr = format!("0.0.0.0:{NGINX_PORT}").parse().unwrap();
    let probe = || {
        server
            .exec(&[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{NGINX_PORT}"),
            ])
            .status
            .success()
    };
    let _nginx =
        Nginx::start_in(&["ip", "netns", "exec", &server.name], nginx_addr, probe).unwrap();
    let direct_url = format!("http://{SERVER_IP}:{NGINX_PORT}/");
    let close = ["-H", "Connection: close"];

    let mut out = Results::default();
    eprintln!("direct, before any capture rule…");
    out.wrk.push((
        "direct".into(),
        measure(client, &direct_url, &[], connections, seconds, &[]),
    ));
    out.wrk.push((
        "direct new".into(),
        measure(client, &direct_url, &[], connections, seconds, &close),
    ));
    out.bulk.push((
        "direct".into(),
        iperf(client, server, SERVER_IP, 5201, &[], seconds),
    ));

    // The same kernel for both: capture rules in both namespaces, and each
    // side's one proxy serving explicit routes and capture at once (the
    // routes' traffic is loopback, the proxy's own uid or an excluded port,
    // so it is not captured); rounds interleaved.
    // The explicit routes' inbound ports are excluded, or their connections
    // would be captured too and cross the backend proxy twice.
    for ns in [client, server] {
        let out = ns.exec(&[
            MESHID,
            "proxy",
            "init",
            "--exclude-inbound-ports",
            "15106,15107",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pair = Pair {
        env: &env,
        agent: &agent,
        client,
        server,
        connections,
        seconds,
        rounds,
    };
    if let Some(old) = &baseline {
        eprintln!("the baseline proxy {old}…");
        pair.run(old, "before ", &idle[..1], &mut out);
    }
    pair.run(PROXY, "", &idle, &mut out);

    println!(
        "wrk (1 thread, {connections} connections, {seconds} s) against nginx (1 worker) across two network namespaces; proxies: [frontend, backend]; \"new\": a connection per request"
    );
    for (what, result) in &out.wrk {
        report(what, result);
    }
    let mean = |what: &str| {
        let runs: Vec<f64> = out
            .wrk
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, (_, cpu))| cpu.iter().sum::<f64>())
            .collect();
        runs.iter().sum::<f64>() / runs.len().max(1) as f64
    };
    for (what, bulk) in &out.bulk {
        match bulk {
            Some((gbit, cpu)) => println!(
                "iperf3 bulk ({seconds} s) {what:<15} {gbit:.2} Gbit/s  proxies' CPU {cpu:.2} s/GB"
            ),
            None => println!("iperf3 bulk {what}: skipped (iperf3 is not installed or failed)"),
        }
    }
    for (what, n, rss) in &out.idle {
        report_idle(what, *n, rss);
    }
    for tag in ["before ", ""] {
        let (routes, capture) = (
            mean(&format!("{tag}routes")),
            mean(&format!("{tag}capture")),
        );
        if routes.is_nan() || routes == 0.0 {
            continue;
        }
        println!(
            "{tag}both proxies' CPU per request, keep-alive: routes {routes:.1} µs, capture {capture:.1} µs ({:+.1} %)",
            (capture / routes - 1.0) * 100.0
        );
        let (routes, capture) = (
            mean(&format!("{tag}routes new")),
            mean(&format!("{tag}capture new")),
        );
        println!(
            "{tag}both proxies' CPU per new connection: routes {routes:.1} µs, capture {capture:.1} µs ({:+.1} %)",
            (capture / routes - 1.0) * 100.0
        );
    }
}

/// What the runs measured, labelled.
#[derive(Default)]
struct Results {
    wrk: Vec<(String, (WrkRun, Vec<f64>))>,
    bulk: Vec<(String, Option<(f64, f64)>)>,
    idle: Vec<(String, usize, [Vec<u64>; 3])>,
}

/// The two namespaces and how to load them.
struct Pair<'a> {
    env: &'a TestEnv,
    agent: &'a InProcessAgent,
    client: &'a NetNs,
    server: &'a NetNs,
    connections: usize,
    seconds: u64,
    rounds: usize,
}

impl Pair<'_> {
    /// Starts a proxy pair of binary `bin`, runs every phase on it (labels
    /// prefixed by `tag`), and stops it.
    fn run(&self, bin: &str, tag: &str, idle: &[usize], out: &mut Results) {
        let (client, server, seconds, connections) =
            (self.client, self.server, self.seconds, self.connections);
        let server_id = "spiffe://cluster.local/ns/default/sa/server";
        let backend = proxy(
            bin,
            server,
            self.env,
            self.agent,
            "server",
            &[
                "--capture",
                "--max-connections",
                "20000",
                "--inbound",
                &format!("0.0.0.0:15106=127.0.0.1:{NGINX_PORT}"),
                "--inbound",
                "0.0.0.0:15107=127.0.0.1:5201",
            ],
        );
        let frontend = proxy(
            bin,
            client,
            self.env,
            self.agent,
            "client",
            &[
                "--capture",
                "--max-connections",
                "20000",
                "--outbound",
                &format!("127.0.0.1:15101={SERVER_IP}:15106@{server_id}"),
                "--outbound",
                &format!("127.0.0.1:15102={SERVER_IP}:15107@{server_id}"),
            ],
        );
        let routes_url = "http://127.0.0.1:15101/".to_owned();
        let direct_url = format!("http://{SERVER_IP}:{NGINX_PORT}/");
        let close = ["-H", "Connection: close"];
        let both = [&frontend, &backend];
        eprintln!(
            "{tag}routes and capture interleaved, {} rounds of {seconds} s each, keep-alive and a connection per request…",
            self.rounds
        );
        let phase = |name: &str| {
            std::env::var("MESHID_BENCH_PHASES").map_or(true, |p| p.split(',').any(|p| p == name))
        };
        for _ in 0..self.rounds {
            if !phase("wrk") {
                break;
            }
            for (what, url, extra) in [
                ("routes", &routes_url, &[][..]),
                ("capture", &direct_url, &[][..]),
                ("routes new", &routes_url, &close[..]),
                ("capture new", &direct_url, &close[..]),
            ] {
                out.wrk.push((
                    format!("{tag}{what}"),
                    measure(client, url, &both, connections, seconds, extra),
                ));
            }
        }
        if phase("bulk") {
            eprintln!("{tag}bulk routes…");
            out.bulk.push((
                format!("{tag}routes"),
                iperf(client, server, "127.0.0.1", 15102, &both, seconds),
            ));
            eprintln!("{tag}bulk capture…");
            out.bulk.push((
                format!("{tag}capture"),
                iperf(client, server, SERVER_IP, 5201, &both, seconds),
            ));
        }
        for (i, n) in idle.iter().enumerate() {
            if !phase("idle") {
                break;
            }
            eprintln!("{tag}{n} idle connections…");
            out.idle.push((
                format!("{tag}capture"),
                *n,
                idle_phase(client, SERVER_IP, NGINX_PORT, *n, &both),
            ));
            if i == 0 {
                out.idle.push((
                    format!("{tag}routes"),
                    *n,
                    idle_phase(client, "127.0.0.1", 15101, *n, &both),
                ));
            }
        }
    }
}

/// A number for each proxy log file.
fn next_log() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
