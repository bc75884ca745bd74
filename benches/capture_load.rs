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
//! Root only (network namespaces, netfilter); needs `wrk`, `nginx`,
//! `iptables` (Debian's `wrk`, `nginx-light`, `iptables`).
//!
//! `cargo bench --bench capture_load -- [--seconds 10] [--connections 10] [--rounds 3]`

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

// Shared with proxy_load, which uses the parts this bench does not.
#[allow(dead_code)]
#[path = "proxy_load/third_party.rs"]
mod third_party;

use std::path::Path;

use meshid::test_helpers::netns::Lan;
use meshid::test_helpers::{
    cli_arg, cpu_seconds, rss_kib, InProcessAgent, InProcessCa, Managed, NetNs, TestEnv,
};
use third_party::{wrk_in, Nginx, WrkRun};

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
fn proxy(ns: &NetNs, env: &TestEnv, agent: &InProcessAgent, name: &str, args: &[&str]) -> Managed {
    let token = env.token_file(
        &format!("{name}.token"),
        "default",
        name,
        Some((name, &format!("uid-{name}"))),
        Some("node-a"),
    );
    chmod(&token, 0o644);
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
        PROXY,
    ])
    .arg("--agent-socket")
    .arg(&agent.socket)
    .arg("--token-file")
    .arg(&token)
    .args(args)
    .env("RUST_LOG", "warn");
    let log = env
        .dir
        .path()
        .join(format!("proxy-{name}-{}.log", args.len()));
    Managed::start(&mut cmd, log, "meshid-proxy", "meshid proxy ready: ")
        .unwrap()
        .0
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One wrk run, and the CPU each proxy spent per request meanwhile.
fn measure(
    client: &NetNs,
    url: &str,
    proxies: &[&Managed],
    connections: usize,
    seconds: u64,
) -> (WrkRun, Vec<f64>) {
    let pids: Vec<u32> = proxies.iter().map(|p| p.pid().unwrap()).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let prefix = ["ip", "netns", "exec", client.name.as_str()];
    let run = wrk_in(&prefix, url, connections, seconds).unwrap();
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
        "{what:<10} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  proxy CPU µs/request [{}]{}",
        run.rate,
        run.p50_ms,
        run.p99_ms,
        cpu.join(", "),
        if run.errors { "  (errors)" } else { "" }
    );
}

/// One iperf3 run from the client to the server's pod IP (a server started
/// for it in the server's namespace), in Gbit/s; `None` without iperf3.
fn iperf(client: &NetNs, server: &NetNs, seconds: u64) -> Option<f64> {
    let mut daemon = server
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut out = None;
    for _ in 0..50 {
        let run = client.exec(&[
            "iperf3",
            "-c",
            SERVER_IP,
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        if run.status.success() {
            out = Some(run.stdout);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let json: serde_json::Value = serde_json::from_slice(&out?).ok()?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
}

fn main() {
    if let Some(why) = NetNs::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let seconds: u64 = cli_arg("--seconds", 10);
    let connections: usize = cli_arg("--connections", 10);
    let rounds: usize = cli_arg("--rounds", 3);

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

    let mut results: Vec<(&str, (WrkRun, Vec<f64>))> = Vec::new();
    eprintln!("direct, before any capture rule…");
    results.push((
        "direct",
        measure(client, &direct_url, &[], connections, seconds),
    ));
    let bulk_direct = iperf(client, server, seconds);

    // The same kernel for both: capture rules in both namespaces, and each
    // side's one proxy serving an explicit route and capture at once (the
    // routes' traffic is loopback, the proxy's own uid or an excluded port,
    // so it is not captured); rounds interleaved.
    // The explicit route's inbound port is excluded, or its connections
    // would be captured too and cross the backend proxy twice.
    for ns in [client, server] {
        let out = ns.exec(&[MESHID, "proxy", "init", "--exclude-inbound-ports", "15106"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server_id = "spiffe://cluster.local/ns/default/sa/server";
    let backend = proxy(
        server,
        &env,
        &agent,
        "server",
        &[
            "--capture",
            "--inbound",
            &format!("0.0.0.0:15106=127.0.0.1:{NGINX_PORT}"),
        ],
    );
    let frontend = proxy(
        client,
        &env,
        &agent,
        "client",
        &[
            "--capture",
            "--outbound",
            &format!("127.0.0.1:15101={SERVER_IP}:15106@{server_id}"),
        ],
    );
    let routes_url = "http://127.0.0.1:15101/".to_owned();
    let both = [&frontend, &backend];
    eprintln!("routes and capture interleaved, {rounds} rounds of {seconds} s each…");
    for _ in 0..rounds {
        results.push((
            "routes",
            measure(client, &routes_url, &both, connections, seconds),
        ));
        results.push((
            "capture",
            measure(client, &direct_url, &both, connections, seconds),
        ));
    }
    let bulk_capture = iperf(client, server, seconds);
    let rss: Vec<u64> = both.iter().map(|p| rss_kib(p.pid().unwrap())).collect();
    println!(
        "wrk (1 thread, {connections} connections, {seconds} s) against nginx (1 worker) across two network namespaces; proxies: [frontend, backend]"
    );
    for (what, result) in &results {
        report(what, result);
    }
    let mean = |what: &str| {
        let runs: Vec<f64> = results
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, (_, cpu))| cpu.iter().sum::<f64>())
            .collect();
        runs.iter().sum::<f64>() / runs.len().max(1) as f64
    };
    match (bulk_direct, bulk_capture) {
        (Some(d), Some(c)) => {
            println!("iperf3 bulk ({seconds} s): direct {d:.2} Gbit/s, capture {c:.2} Gbit/s")
        }
        _ => println!("iperf3 bulk: skipped (iperf3 is not installed)"),
    }
    println!(
        "proxies' RSS after the runs: frontend {} KiB, backend {} KiB",
        rss[0], rss[1]
    );
    let (routes, capture) = (mean("routes"), mean("capture"));
    println!(
        "both proxies' CPU per request: routes {routes:.1} µs, capture {capture:.1} µs ({:+.1} %)",
        (capture / routes - 1.0) * 100.0
    );
}
