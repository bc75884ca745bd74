//! Transparent capture end to end: three pods, each in a network namespace
//! this test creates, on one bridge; unmodified applications (Python's HTTP
//! server, curl) calling each other by pod IP. a and b are meshed (`proxy
//! init` rules and `meshid proxy --capture` as uid 1337), c is not. The CA
//! and the agent run on the host side; the proxies reach the agent's socket
//! through the file system and attest with their pods' tokens. Root only.

use std::path::Path;
use std::process::{Command, Stdio};

use meshid::test_helpers::netns::{ipv6, v6_of, Lan};
use meshid::test_helpers::{InProcessAgent, InProcessCa, Managed, NetNs, TestEnv};

use crate::support::*;

const PROXY_UID: &str = "1337";
const APP_PORT: u16 = 8080;

/// A pod manifest with its IP, meshed (the tlsMode label) or not.
fn write_pod(env: &TestEnv, name: &str, ip: &str, meshed: bool) {
    let labels = if meshed {
        "  labels:\n    app: NAME\n    security.meshid.io/tlsMode: meshid\n"
    } else {
        "  labels:\n    app: NAME\n"
    }
    .replace("NAME", name);
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  uid: uid-{name}\n\
         {labels}spec:\n  nodeName: node-a\n  serviceAccountName: {name}\n\
         status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  - ip: {}\n",
        v6_of(ip)
    );
    std::fs::write(env.manifests.join(format!("pod-default-{name}.yaml")), yaml).unwrap();
}

/// The namespace-wide mode of `default`.
fn set_mode(env: &TestEnv, mode: &str) {
    let yaml = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  \
         name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    );
    std::fs::write(env.manifests.join("pa-default.yaml"), yaml).unwrap();
}

/// Python's HTTP server on `port` in `ns`, answering `body` at `/`.
fn app(ns: &NetNs, dir: &Path, port: u16, body: &str) -> Managed {
    let root = dir.join(format!("www-{}-{port}", ns.name));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), body).unwrap();
    let mut cmd = ns.command("python3");
    cmd.args(["-u", "-c"])
        .arg(format!(
            "import http.server, functools, sys\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={:?})\n\
             class S(http.server.ThreadingHTTPServer): address_family = __import__('socket').AF_INET6\n\
             s = S(('::', {port}), h)\n\
             print('serving', flush=True)\n\
             s.serve_forever()\n",
            root.display().to_string()
        ))
        .stdin(Stdio::null());
    Managed::start(
        &mut cmd,
        dir.join(format!("app-{}.log", ns.name)),
        "app",
        "serving",
    )
    .unwrap()
    .0
}

/// `proxy init` (with `init_args`) and `meshid proxy --capture` as uid 1337
/// in `ns`, attested with the token of pod `name`.
fn meshed(
    ns: &NetNs,
    env: &TestEnv,
    agent: &InProcessAgent,
    name: &str,
    init_args: &[&str],
) -> Managed {
    meshed_at(ns, env, &agent.socket, name, init_args)
}

/// [`meshed`] against the agent socket `socket`, which may not exist yet:
/// returns once the proxy says it is ready.
fn meshed_at(ns: &NetNs, env: &TestEnv, socket: &Path, name: &str, init_args: &[&str]) -> Managed {
    init(ns, init_args);
    proxy_at(ns, env, socket, name, &[])
}

/// `meshid proxy init --proxy-uid 1337` with `init_args` in `ns`.
fn init(ns: &NetNs, init_args: &[&str]) {
    let mut argv = vec![BIN, "proxy", "init", "--proxy-uid", PROXY_UID];
    argv.extend_from_slice(init_args);
    let init = ns.exec(&argv);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}

/// `meshid proxy --capture` as uid 1337 in `ns` (rules already in place),
/// attested with pod `name`'s token, with `proxy_args`; returns once it is ready.
fn proxy_at(ns: &NetNs, env: &TestEnv, socket: &Path, name: &str, proxy_args: &[&str]) -> Managed {
    let token = env.token_file(
        &format!("{name}.token"),
        "default",
        name,
        Some((name, &format!("uid-{name}"))),
        Some("node-a"),
    );
    set_readable(&token);
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid",
        PROXY_UID,
        "--regid",
        PROXY_UID,
        "--clear-groups",
        BIN,
        "proxy",
    ])
    .args([
        "--capture",
        "--metrics-listen",
        "127.0.0.1:15020",
        "--agent-socket",
    ])
    .arg(socket)
    .arg("--token-file")
    .arg(&token)
    .args(proxy_args)
    .env("RUST_LOG", "meshid=debug,info");
    Managed::start(
        &mut cmd,
        env.dir.path().join(format!("proxy-{name}.log")),
        "meshid proxy",
        "meshid proxy ready: ",
    )
    .unwrap()
    .0
}

/// The proxy (uid 1337) must reach the agent's socket and its token.
fn set_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// `curl` from `ns` (as root: not the proxy's uid, so it is captured).
fn curl(ns: &NetNs, url: &str) -> (bool, String) {
    let out = ns.exec(&["curl", "-sS", "--max-time", "5", url]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The proxy metrics of `ns`.
fn metrics(ns: &NetNs) -> String {
    curl(ns, "http://127.0.0.1:15020/metrics").1
}

/// Polls `check` (a mode change travels manifests → agent → proxy).
fn eventually(what: &str, check: impl FnMut() -> bool) {
    poll_until(what, std::time::Duration::from_secs(10), check);
}

/// Why this machine cannot run the capture tests, if it cannot.
fn unavailable() -> Option<String> {
    if let Some(why) = NetNs::unavailable() {
        return Some(why);
    }
    ["iptables-save", "curl", "python3", "setpriv"]
        .into_iter()
        .find(|tool| {
            Command::new("which")
                .arg(tool)
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .map(|tool| format!("{tool} is not installed (.ci/run installs it)"))
}

/// A CA and an agent on the host side, the agent's socket reachable by uid 1337.
fn control_plane(env: &TestEnv) -> (InProcessCa, InProcessAgent) {
    set_readable_dir(env.dir.path());
    env.add_node_agent("node-a");
    let ca = InProcessCa::with_flags(
        env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let agent_token = env.node_agent_token_file("node-a");
    let agent = InProcessAgent::with_flags(env, ca.addr, "node-a", &agent_token, &[]).unwrap();
    (ca, agent)
}

#[test]
fn unmodified_apps_get_mtls_by_pod_ip_and_strict_refuses_the_unmeshed() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = TestEnv::new();
    let (a_ip, b_ip, c_ip) = ("10.77.0.2", "10.77.0.3", "10.77.0.4");
    write_pod(&env, "a", a_ip, true);
    write_pod(&env, "b", b_ip, true);
    write_pod(&env, "c", c_ip, false);
    set_mode(&env, "PERMISSIVE");
    let (ca, agent) = control_plane(&env);

    let mut lan = Lan::new();
    let (a, b, c) = (lan.pod("a", a_ip), lan.pod("b", b_ip), lan.pod("c", c_ip));
    let (a, b, c) = (&lan.pods[a], &lan.pods[b], &lan.pods[c]);
    let _apps = [
        app(a, env.dir.path(), APP_PORT, "hello from a"),
        app(b, env.dir.path(), APP_PORT, "hello from b"),
        app(c, env.dir.path(), APP_PORT, "hello from c"),
    ];
    let _proxies = [
        meshed(a, &env, &agent, "a", &[]),
        meshed(b, &env, &agent, "b", &[]),
    ];
    let b_url = format!("http://{b_ip}:{APP_PORT}/");

    // a → b by pod IP, on the application's own port: mTLS, a's identity
    // counted by b's inbound proxy.
    let (ok, body) = curl(a, &b_url);
    assert!(ok && body.contains("hello from b"), "{body}");
    let b_metrics = metrics(b);
    assert!(
        b_metrics.contains(r#"direction="inbound",mode="PERMISSIVE",outcome="allowed",source_principal="spiffe://cluster.local/ns/default/sa/a""#),
        "{b_metrics}"
    );
    assert!(metrics(a).contains(r#"direction="outbound",mode="mtls",outcome="allowed""#));

    // Further connections from a to b ride on the same HBONE connection:
    // one mTLS handshake for all of them, each a tunnel judged by b.
    for _ in 0..5 {
        let (ok, body) = curl(a, &b_url);
        assert!(ok && body.contains("hello from b"), "{body}");
    }
    let one = |direction: &str| {
        format!("meshid_proxy_hbone_connections_total{{direction=\"{direction}\"}} 1\n")
    };
    assert!(metrics(a).contains(&one("outbound")), "{}", metrics(a));
    let b_metrics = metrics(b);
    assert!(b_metrics.contains(&one("inbound")), "{b_metrics}");
    assert!(
        b_metrics.contains(r#"direction="inbound",mode="PERMISSIVE",outcome="allowed",source_principal="spiffe://cluster.local/ns/default/sa/a"} 6"#),
        "{b_metrics}"
    );

    // a → c (unmeshed): passed through in plaintext, counted.
    let (ok, body) = curl(a, &format!("http://{c_ip}:{APP_PORT}/"));
    assert!(ok && body.contains("hello from c"), "{body}");
    assert!(metrics(a).contains(r#"mode="plaintext",outcome="passthrough""#));

    // c → b in PERMISSIVE: plaintext is let in.
    let (ok, body) = curl(c, &b_url);
    assert!(ok && body.contains("hello from b"), "{body}");

    // The same over IPv6.
    if ipv6() {
        let (ok, body) = curl(a, &format!("http://[{}]:{APP_PORT}/", v6_of(b_ip)));
        assert!(ok && body.contains("hello from b"), "IPv6: {body}");
    }

    // STRICT: c is refused, a still gets through.
    set_mode(&env, "STRICT");
    eventually("c refused in STRICT", || !curl(c, &b_url).0);
    let (ok, body) = curl(a, &b_url);
    assert!(ok && body.contains("hello from b"), "{body}");
    if ipv6() {
        let b6 = format!("http://[{}]:{APP_PORT}/", v6_of(b_ip));
        assert!(!curl(c, &b6).0, "STRICT holds over IPv6 too");
        assert!(curl(a, &b6).0);
    }
    drop(agent);
    drop(ca);
}

fn set_readable_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// b's own policy: `mode` on every port but 8081, which stays PERMISSIVE.
fn set_b_ports(env: &TestEnv, mode: &str) {
    let yaml = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  \
         name: b-ports\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      \
         app: b\n  mtls:\n    mode: {mode}\n  portLevelMtls:\n    8081:\n      mode: PERMISSIVE\n"
    );
    std::fs::write(env.manifests.join("pa-b-ports.yaml"), yaml).unwrap();
}

#[test]
fn capture_keeps_port_modes_exclusions_and_disable_and_refuses_impostors_and_loops() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = TestEnv::new();
    let (a_ip, b_ip, c_ip, d_ip) = ("10.78.0.2", "10.78.0.3", "10.78.0.4", "10.78.0.5");
    write_pod(&env, "a", a_ip, true);
    write_pod(&env, "b", b_ip, true);
    write_pod(&env, "c", c_ip, false);
    // d is meshed as service account d, but the proxy in its namespace holds
    // b's identity: an impostor at d's address.
    write_pod(&env, "d", d_ip, true);
    set_mode(&env, "PERMISSIVE");
    set_b_ports(&env, "STRICT");
    let (ca, agent) = control_plane(&env);

    let mut lan = Lan::new();
    let (a, b, c, d) = (
        lan.pod("a", a_ip),
        lan.pod("b", b_ip),
        lan.pod("c", c_ip),
        lan.pod("d", d_ip),
    );
    let (a, b, c, d) = (&lan.pods[a], &lan.pods[b], &lan.pods[c], &lan.pods[d]);
    let dir = env.dir.path();
    let _apps = [
        app(b, dir, APP_PORT, "b on 8080"),
        app(b, dir, 8081, "b on 8081"),
        app(b, dir, 9090, "b on 9090"),
        app(d, dir, APP_PORT, "d on 8080"),
    ];
    let _proxies = [
        meshed(a, &env, &agent, "a", &[]),
        meshed(b, &env, &agent, "b", &["--exclude-inbound-ports", "9090"]),
        meshed(d, &env, &agent, "b", &[]),
    ];

    // Port-level modes name the application's real ports: 8080 is STRICT,
    // 8081 PERMISSIVE, for the unmeshed c.
    let (ok, body) = curl(c, &format!("http://{b_ip}:8081/"));
    assert!(ok && body.contains("b on 8081"), "{body}");
    assert!(
        !curl(c, &format!("http://{b_ip}:{APP_PORT}/")).0,
        "STRICT 8080"
    );
    let (ok, body) = curl(a, &format!("http://{b_ip}:{APP_PORT}/"));
    assert!(
        ok && body.contains("b on 8080"),
        "meshed a passes STRICT: {body}"
    );

    // An excluded port never reaches the proxy: plaintext even in STRICT.
    let (ok, body) = curl(c, &format!("http://{b_ip}:9090/"));
    assert!(ok && body.contains("b on 9090"), "{body}");

    // Straight to b's capture port: refused, not looped.
    assert!(!curl(c, &format!("http://{b_ip}:15006/")).0);
    assert!(
        metrics(b).contains(r#"direction="inbound",mode="NONE",outcome="refused""#),
        "{}",
        metrics(b)
    );

    // The impostor at d's address: a expects d's identity and gets b's.
    let (ok, body) = curl(a, &format!("http://{d_ip}:{APP_PORT}/"));
    assert!(!ok, "no plaintext fallback to a meshed destination: {body}");
    assert!(
        metrics(a).contains(r#"direction="outbound",mode="mtls",outcome="upstream_refused""#),
        "{}",
        metrics(a)
    );
    let log = std::fs::read_to_string(env.dir.path().join("proxy-a.log")).unwrap();
    assert!(
        log.contains("spiffe://cluster.local/ns/default/sa/d")
            && log.contains("spiffe://cluster.local/ns/default/sa/b"),
        "both identities are logged: {log}"
    );

    // DISABLE: b's proxy passes plaintext through untouched.
    set_b_ports(&env, "DISABLE");
    eventually("DISABLE lets c in on 8080", || {
        curl(c, &format!("http://{b_ip}:{APP_PORT}/"))
            .1
            .contains("b on 8080")
    });
    assert!(metrics(b).contains(r#"direction="inbound",mode="DISABLE",outcome="allowed""#));
    drop(agent);
    drop(ca);
}

/// A capture proxy started before its node agent waits (not ready, nothing
/// guessed), then serves once the agent is up.
#[test]
fn a_capture_proxy_started_before_its_agent_serves_once_the_agent_is_up() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = TestEnv::new();
    let (a_ip, b_ip) = ("10.76.0.2", "10.76.0.3");
    write_pod(&env, "a", a_ip, true);
    write_pod(&env, "b", b_ip, true);
    set_mode(&env, "PERMISSIVE");
    set_readable_dir(env.dir.path());
    env.add_node_agent("node-a");
    let ca = InProcessCa::with_flags(
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let mut lan = Lan::new();
    let (a, b) = (lan.pod("a", a_ip), lan.pod("b", b_ip));
    let (a, b) = (&lan.pods[a], &lan.pods[b]);
    let _app = app(b, env.dir.path(), APP_PORT, "hello from b");
    let socket = InProcessAgent::socket_path(&env);

    init(a, &[]);
    init(b, &[]);
    let proxies = std::thread::scope(|scope| {
        let starting = [
            scope.spawn(|| proxy_at(a, &env, &socket, "a", &[])),
            scope.spawn(|| proxy_at(b, &env, &socket, "b", &[])),
        ];
        // Meanwhile a's captured connections have nowhere to go: refused.
        let early = curl(a, &format!("http://{b_ip}:{APP_PORT}/"));
        assert!(!early.0, "{}", early.1);
        let agent_token = env.node_agent_token_file("node-a");
        let agent =
            InProcessAgent::with_flags_at(&socket, &env, ca.addr, "node-a", &agent_token, &[])
                .unwrap();
        let proxies: Vec<Managed> = starting.map(|p| p.join().unwrap()).into();
        (agent, proxies)
    });
    let (ok, body) = curl(a, &format!("http://{b_ip}:{APP_PORT}/"));
    assert!(ok && body.contains("hello from b"), "{body}");
    drop(proxies);
}

/// A peer whose proxy does not listen for HBONE (`--no-hbone`, or an older
/// proxy) is reached with direct mTLS per connection: never plaintext.
#[test]
fn a_peer_without_hbone_gets_direct_mtls() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let env = TestEnv::new();
    let (a_ip, b_ip) = ("10.76.0.2", "10.76.0.3");
    write_pod(&env, "a", a_ip, true);
    write_pod(&env, "b", b_ip, true);
    set_mode(&env, "STRICT");
    let (ca, agent) = control_plane(&env);
    let mut lan = Lan::new();
    let (a, b) = (lan.pod("a", a_ip), lan.pod("b", b_ip));
    let (a, b) = (&lan.pods[a], &lan.pods[b]);
    let _apps = [
        app(a, env.dir.path(), APP_PORT, "hello from a"),
        app(b, env.dir.path(), APP_PORT, "hello from b"),
    ];
    init(a, &[]);
    init(b, &[]);
    let _proxies = [
        proxy_at(a, &env, &agent.socket, "a", &[]),
        proxy_at(b, &env, &agent.socket, "b", &["--no-hbone"]),
    ];
    let b_url = format!("http://{b_ip}:{APP_PORT}/");
    for _ in 0..3 {
        let (ok, body) = curl(a, &b_url);
        assert!(ok && body.contains("hello from b"), "{body}");
    }
    let b_metrics = metrics(b);
    assert!(
        b_metrics.contains(r#"direction="inbound",mode="STRICT",outcome="allowed",source_principal="spiffe://cluster.local/ns/default/sa/a"} 3"#),
        "{b_metrics}"
    );
    let a_metrics = metrics(a);
    assert!(
        !a_metrics.contains(r#"meshid_proxy_hbone_connections_total{direction="outbound"}"#),
        "{a_metrics}"
    );
    drop(agent);
    drop(ca);
}
