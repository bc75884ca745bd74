//! Two proxies as real processes between two workloads: a CA, an agent on
//! node-a, a backend HTTP server behind the backend's proxy (inbound), and the
//! frontend's proxy (outbound → the backend proxy, expecting the backend's
//! SPIFFE ID). Both proxies are attested by their own bound service-account
//! tokens (this test process's uid is annotated on no pod). Clients: raw TCP
//! HTTP/1.1 (plaintext, and through the frontend's proxy) and `openssl s_client`.

mod lifecycle;
mod modes;
mod plugin_rotation;
pub(crate) mod rotation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshid::test_helpers::{AgentProcess, CaProcess, ProxyProcess, TestEnv};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const BODY: &str = "hello from backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";

/// The whole mesh; processes are killed on drop.
struct Pair {
    env: TestEnv,
    ca: CaProcess,
    agent: AgentProcess,
    /// What the proxies are given as the agent socket: a symbolic link to
    /// the agent's, so that a restarted agent can take its place.
    agent_link: PathBuf,
    backend: ProxyProcess,
    frontend: ProxyProcess,
    /// `cert-chain.pem`, `key.pem`, `root-cert.pem` of a third identity, `default/client`.
    client_certs: PathBuf,
    /// The backend application's address.
    app: SocketAddr,
}

impl Pair {
    /// The frontend's route to the backend (expects the backend's identity).
    fn via_frontend(&self) -> SocketAddr {
        self.frontend.outbound[0]
    }
    /// The frontend's route to the backend expecting another identity.
    fn via_frontend_wrong_id(&self) -> SocketAddr {
        self.frontend.outbound[1]
    }
    fn backend_inbound(&self) -> SocketAddr {
        self.backend.inbound[0]
    }
    fn set_mode(&self, mode: &str) {
        crate::support::set_mode(&self.env.manifests, "default", mode);
    }
}

/// An HTTP/1.1 server answering every request with [`BODY`], keeping the
/// connection open unless the request says `Connection: close`.
pub(crate) async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut close = false;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        close |= line.to_ascii_lowercase().starts_with("connection: close");
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The environment (pods `frontend-1`, `backend-1`, `client-1`, none
/// uid-annotated) and a CA.
fn env_and_ca() -> (TestEnv, CaProcess) {
    env_and_ca_with(&[])
}

/// [`env_and_ca`] with `extra` flags for the CA.
fn env_and_ca_with(extra: &[&str]) -> (TestEnv, CaProcess) {
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    for sa in ["frontend", "backend", "client"] {
        env.add_pod(
            "default",
            &format!("{sa}-1"),
            &format!("uid-{sa}-1"),
            sa,
            "node-a",
        );
    }
    let mut flags = vec!["--trusted-node-accounts", "meshid-system/meshid-agent"];
    flags.extend_from_slice(extra);
    let ca = CaProcess::spawn(bin(), &env, &flags).unwrap();
    (env, ca)
}

/// The agent on node-a, writing `default/client`'s files into the returned directory.
fn start_agent(env: &TestEnv, ca: &CaProcess, ttl: &str) -> (AgentProcess, PathBuf) {
    let agent_token = env.node_agent_token_file("node-a");
    let client_certs = env.dir.path().join("client-certs");
    let write_certs = format!(
        "spiffe://cluster.local/ns/default/sa/client={}",
        client_certs.display()
    );
    let agent = AgentProcess::spawn(
        bin(),
        env,
        ca.addr,
        "node-a",
        &agent_token,
        &["--workload-ttl", ttl, "--write-certs", &write_certs],
    )
    .unwrap();
    (agent, client_certs)
}

/// A bound token for the pod `default/SA-1`.
fn workload_token(env: &TestEnv, sa: &str) -> PathBuf {
    env.token_file(
        &format!("{sa}.token"),
        "default",
        sa,
        Some((&format!("{sa}-1"), &format!("uid-{sa}-1"))),
        Some("node-a"),
    )
}

async fn setup() -> Pair {
    setup_with("1h", &[]).await
}

/// The pair, with certificates of lifetime `ttl` and `backend_extra` flags
/// for the backend's proxy.
async fn setup_with(ttl: &str, backend_extra: &[&str]) -> Pair {
    setup_full(ttl, backend_extra, &[]).await
}

/// [`setup_with`], and `ca_extra` flags for the CA.
async fn setup_full(ttl: &str, backend_extra: &[&str], ca_extra: &[&str]) -> Pair {
    let (env, ca) = env_and_ca_with(ca_extra);
    let (agent, client_certs) = start_agent(&env, &ca, ttl);
    let agent_link = env.dir.path().join("agent-link.sock");
    std::os::unix::fs::symlink(&agent.socket, &agent_link).unwrap();
    let (backend_token, frontend_token) = (
        workload_token(&env, "backend"),
        workload_token(&env, "frontend"),
    );
    let app = echo_server().await;
    let dir = env.dir.path().to_owned();
    let socket = agent_link.clone();
    let inbound = format!("127.0.0.1:0={app}");
    let token = backend_token.to_str().unwrap().to_owned();
    let mut args: Vec<String> = ["--inbound", &inbound, "--token-file", &token]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    args.extend(backend_extra.iter().map(|a| (*a).to_owned()));
    let backend = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The backend's proxy is the sidecar binary, the frontend's the
        // all-in-one `meshid proxy`: every pair test runs both.
        ProxyProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_meshid-proxy")),
            &dir,
            "backend",
            &socket,
            &args,
        )
    })
    .await
    .unwrap()
    .unwrap();
    let good = format!("127.0.0.1:0={}@{BACKEND}", backend.inbound[0]);
    let wrong = format!(
        "127.0.0.1:0={}@spiffe://cluster.local/ns/default/sa/someone-else",
        backend.inbound[0]
    );
    let dir = env.dir.path().to_owned();
    let socket = agent_link.clone();
    let frontend = tokio::task::spawn_blocking(move || {
        ProxyProcess::spawn(
            bin(),
            &dir,
            "frontend",
            &socket,
            &[
                "--outbound",
                &good,
                "--outbound",
                &wrong,
                "--token-file",
                frontend_token.to_str().unwrap(),
            ],
        )
    })
    .await
    .unwrap()
    .unwrap();
    Pair {
        env,
        ca,
        agent,
        agent_link,
        backend,
        frontend,
        client_certs,
        app,
    }
}

/// One GET on a new connection; `Err` if the connection is refused/closed
/// before a whole answer arrived.
pub(crate) async fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    request(&mut s, true).await
}

/// Sends a GET on `s` and reads one answer (to the end when `close`).
async fn request(s: &mut TcpStream, close: bool) -> Result<String, String> {
    let header = if close { "Connection: close\r\n" } else { "" };
    let req = format!("GET / HTTP/1.1\r\nHost: backend\r\n{header}\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let reading = async {
        loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if !close && got.ends_with(BODY.as_bytes()) {
                break;
            }
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .map_err(|_| "timed out".to_owned())??;
    let text = String::from_utf8_lossy(&got).into_owned();
    if text.ends_with(BODY) {
        Ok(text)
    } else {
        Err(format!("no answer: {text:?}"))
    }
}

/// Waits (up to 15 s) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within 15 s");
}

/// `openssl s_client` to `addr`, sending one GET; with the client identity
/// in `certs` when given. Returns stdout and stderr.
async fn s_client(addr: SocketAddr, certs: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-ign_eof",
        "-servername",
        "backend",
    ]);
    if let Some(dir) = certs {
        cmd.arg("-cert").arg(dir.join("cert-chain.pem"));
        cmd.arg("-key").arg(dir.join("key.pem"));
        cmd.arg("-CAfile").arg(dir.join("root-cert.pem"));
    }
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n");
        let out = child.wait_with_output().unwrap();
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

async fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// A ClientHello header (what the sniffer looks at) followed by an HTTP
/// request: TLS to the proxy, a request to an application that gets it untouched.
const TLS_LOOKALIKE: &[u8] =
    b"\x16\x03\x01\x00\x30\x01\x00\x00\x2cGET / HTTP/1.1\r\nConnection: close\r\n\r\n";

/// Sends `bytes`, half-closes (so a proxy still waiting for the rest of a
/// TLS handshake sees the end at once), and reads to the end.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

async fn curl(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}
