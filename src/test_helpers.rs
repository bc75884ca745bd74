//! Test and bench support (feature `testing`): temporary data and manifest
//! directories, tokens from the local issuer, CSRs, and the CA as a real
//! process on `127.0.0.1:0` with a TLS client for it.
//!
//! The CA, the agent and the proxy are the real binaries, the tokens are
//! signed by the same issuer code `meshid token issue` uses, and the client
//! speaks TLS. The one stand-in is [`kube_api`]: a Kubernetes API server
//! (in-process for unit tests, over HTTP for e2e), since no cluster is
//! reachable from the tests.

#![allow(clippy::unwrap_used, unreachable_pub, missing_docs)]

pub mod kube_api;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::key::{csr_pem, KeyAlgorithm, PrivateKey};
use crate::platform::local::{TokenIssuer, TokenRequest};
use crate::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::proto::istio::v1::auth::IstioCertificateRequest;

/// The CA's gRPC client type.
pub type CaClient = IstioCertificateServiceClient<Channel>;

/// A temporary data directory and manifest directory.
#[derive(Debug)]
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub manifests: PathBuf,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::create_dir_all(&manifests).unwrap();
        // The local token issuer (key and JWKS), as `meshid token issue`
        // would make it: the CA only reads its JWKS.
        TokenIssuer::load_or_create(&data_dir).unwrap();
        Self {
            dir,
            data_dir,
            manifests,
        }
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::default()
    }

    pub fn id(&self, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::for_service_account(&self.trust_domain(), ns, sa).unwrap()
    }

    /// Writes a Running pod manifest.
    pub fn add_pod(&self, ns: &str, name: &str, uid: &str, sa: &str, node: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\n\
             spec:\n  nodeName: {node}\n  serviceAccountName: {sa}\nstatus:\n  phase: Running\n"
        );
        std::fs::write(self.manifests.join(format!("pod-{ns}-{name}.yaml")), yaml).unwrap();
    }

    /// Writes the node agent's pod on `node`: `meshid-system/agent-a`,
    /// service account `meshid-agent` (the account the CA is told to trust
    /// with `--trusted-node-accounts meshid-system/meshid-agent`).
    pub fn add_node_agent(&self, node: &str) {
        self.add_pod(
            "meshid-system",
            "agent-a",
            "uid-agent-a",
            "meshid-agent",
            node,
        );
    }

    /// A token of the node agent on `node` (see [`Self::add_node_agent`]).
    pub fn node_agent_token(&self, node: &str) -> String {
        self.token(
            "meshid-system",
            "meshid-agent",
            Some(("agent-a", "uid-agent-a")),
            Some(node),
        )
    }

    /// [`Self::node_agent_token`] in the file `agent.token`; returns its path.
    pub fn node_agent_token_file(&self, node: &str) -> PathBuf {
        let path = self.dir.path().join("agent.token");
        std::fs::write(&path, self.node_agent_token(node)).unwrap();
        path
    }

    /// Writes a Running pod manifest whose processes run as Unix `unix_uid`
    /// (annotation `meshid.io/unix-uid`), so the agent can attest them.
    pub fn add_pod_with_unix_uid(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        sa: &str,
        node: &str,
        unix_uid: u32,
    ) {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\n\
             \x20 annotations:\n    meshid.io/unix-uid: \"{unix_uid}\"\n\
             spec:\n  nodeName: {node}\n  serviceAccountName: {sa}\nstatus:\n  phase: Running\n"
        );
        std::fs::write(self.manifests.join(format!("pod-{ns}-{name}.yaml")), yaml).unwrap();
    }

    /// Writes a token to `file` (no trailing newline) and returns the path.
    pub fn token_file(
        &self,
        file: &str,
        ns: &str,
        sa: &str,
        pod: Option<(&str, &str)>,
        node: Option<&str>,
    ) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, self.token(ns, sa, pod, node)).unwrap();
        path
    }

    pub fn remove_pod(&self, ns: &str, name: &str) {
        std::fs::remove_file(self.manifests.join(format!("pod-{ns}-{name}.yaml"))).unwrap();
    }

    pub fn issuer(&self) -> TokenIssuer {
        TokenIssuer::load_or_create(&self.data_dir).unwrap()
    }

    /// A token for `ns/sa`, optionally bound to a pod `(name, uid)` and a node.
    pub fn token(
        &self,
        ns: &str,
        sa: &str,
        pod: Option<(&str, &str)>,
        node: Option<&str>,
    ) -> String {
        self.token_with(
            ns,
            sa,
            pod,
            node,
            &["istio-ca"],
            time::Duration::hours(1),
            time::OffsetDateTime::now_utc(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn token_with(
        &self,
        ns: &str,
        sa: &str,
        pod: Option<(&str, &str)>,
        node: Option<&str>,
        audiences: &[&str],
        ttl: time::Duration,
        now: time::OffsetDateTime,
    ) -> String {
        let request = TokenRequest {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: pod.map(|(n, u)| (n.into(), u.into())),
            node: node.map(|n| (n.into(), None)),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            ttl,
        };
        self.issuer().issue(&request, now).unwrap().to_string()
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("root-cert.pem")).unwrap()
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh P-256 key and a CSR for `id`.
pub fn key_and_csr(id: &SpiffeId) -> (PrivateKey, String) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = csr_pem(&key, id).unwrap();
    (key, csr)
}

/// A `CreateCertificate` request with optional bearer token and impersonation.
pub fn request(
    csr: &str,
    validity_secs: i64,
    token: Option<&str>,
    impersonate: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [
            (
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
                },
            ),
            (
                "CertSigner".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(String::new())),
                },
            ),
        ]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: validity_secs,
        metadata,
    });
    if let Some(token) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    req
}

/// A child process of ours: started with its stderr in a log file, waited
/// for until it prints its first stdout line, killed on drop.
#[derive(Debug)]
pub struct Managed {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Managed {
    /// Starts `cmd` and returns it with its first stdout line, which must
    /// start with `ready`; otherwise fails with the log's contents.
    pub fn start(
        cmd: &mut Command,
        log: PathBuf,
        what: &str,
        ready: &str,
    ) -> anyhow::Result<(Self, String)> {
        let stderr = std::fs::File::create(&log)?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {what}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with(ready) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok((
            Self {
                child: Some(child),
                log,
            },
            line,
        ))
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        for _ in 0..100 {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            // A child's exit has no event to wait on short of blocking.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        bail!("process did not exit within 10 s of SIGTERM")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_filter(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| "meshid=debug,info".to_owned())
}

/// The CA binary running as a child process; killed on drop.
#[derive(Debug)]
pub struct CaProcess {
    process: Managed,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

impl CaProcess {
    /// Starts `bin ca` on 127.0.0.1:0 with the env's directories and `extra` flags,
    /// and waits until it prints its address.
    pub fn spawn(bin: &Path, env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_at(bin, env, "127.0.0.1:0", extra)
    }

    /// Like [`CaProcess::spawn`], listening on `listen`.
    pub fn spawn_at(
        bin: &Path,
        env: &TestEnv,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("ca")
            .arg("--data-dir")
            .arg(&env.data_dir)
            .arg("--manifests")
            .arg(&env.manifests)
            .args(["--listen", listen, "--metrics-listen"])
            .arg(metrics.to_string())
            .args(extra)
            .env("RUST_LOG", log_filter("MESHID_TEST_CA_LOG"));
        let log = env.dir.path().join(format!("ca-{}.log", metrics.port()));
        Self::start(cmd, log, metrics)
    }

    /// Starts the prepared `meshid ca` command and waits for its address line.
    fn start(mut cmd: Command, log: PathBuf, metrics: SocketAddr) -> anyhow::Result<Self> {
        let (process, line) =
            Managed::start(&mut cmd, log, "meshid ca", "meshid CA listening on ")?;
        let addr = line
            .strip_prefix("meshid CA listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("no address in {line:?}"))?;
        Ok(Self {
            process,
            addr: addr.parse()?,
            metrics_addr: metrics,
        })
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate()
    }

    /// The CA's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// A TLS client trusting `root_pem`, verifying the server as `localhost`.
    pub async fn client(&self, root_pem: &str) -> anyhow::Result<CaClient> {
        connect(self.addr, root_pem, None).await
    }
}

/// This process's real Unix uid (from /proc/self/status).
pub fn my_unix_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .unwrap()
}

/// The agent binary running as a child process; killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    process: Managed,
    pub socket: PathBuf,
    pub metrics_addr: SocketAddr,
}

impl AgentProcess {
    /// Starts `bin agent` for `node` against the CA at `ca_addr`, with the
    /// agent token in `token_file`, and waits until it serves its socket.
    pub fn spawn(
        bin: &Path,
        env: &TestEnv,
        ca_addr: SocketAddr,
        node: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<&OsStr> = vec![
            "--manifests".as_ref(),
            env.manifests.as_ref(),
            "--token-jwks-dir".as_ref(),
            env.data_dir.as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let root = env.data_dir.join("root-cert.pem");
        Self::start(bin, env, ca_addr, &root, node, token_file, &args, |_| {})
    }

    /// Starts `bin agent` with `extra` flags, `configure` applied last.
    #[allow(clippy::too_many_arguments)]
    fn start(
        bin: &Path,
        env: &TestEnv,
        ca_addr: SocketAddr,
        ca_root: &Path,
        node: &str,
        token_file: &Path,
        extra: &[&OsStr],
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let socket = env
            .dir
            .path()
            .join(format!("agent-{}.sock", metrics.port()));
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args(["--node", node, "--ca-address"])
            .arg(format!("https://{ca_addr}"))
            .arg("--ca-root")
            .arg(ca_root)
            .arg("--token-file")
            .arg(token_file)
            .arg("--socket")
            .arg(&socket)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(extra)
            .env("RUST_LOG", log_filter("MESHID_TEST_AGENT_LOG"));
        configure(&mut cmd);
        let log = env.dir.path().join(format!("agent-{}.log", metrics.port()));
        let (process, _) =
            Managed::start(&mut cmd, log, "meshid agent", "meshid agent serving on ")?;
        Ok(Self {
            process,
            socket,
            metrics_addr: metrics,
        })
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate()
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// `unix:///…`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// Connects over TLS; `identity` is a client certificate chain and key (PEM).
pub async fn connect(
    addr: SocketAddr,
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<CaClient> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("localhost");
    if let Some((chain, key)) = identity {
        tls = tls.identity(Identity::from_pem(chain, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

/// The value after flag `name` on this process's command line (the benches'
/// `cargo bench --bench X -- --flag value`).
pub fn cli_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether the flag `name` (without a value) is on the command line.
pub fn cli_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// [`cli_value`] parsed, or `default` when absent or unparsable.
pub fn cli_arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    cli_value(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

/// The proxy binary running as a child process; killed on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    process: Managed,
    /// Bound inbound addresses, in `--inbound` order.
    pub inbound: Vec<SocketAddr>,
    /// Bound outbound addresses, in `--outbound` order.
    pub outbound: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
}

impl ProxyProcess {
    /// Starts `bin proxy --agent-socket SOCKET` with `args` (routes, token
    /// file), metrics on a free port, logs in `dir/proxy-NAME.log`, and waits
    /// for its ready line (first certificate and policy received).
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        name: &str,
        agent_socket: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let mut cmd = Command::new(bin);
        // `meshid-proxy` is the proxy alone; `meshid` needs the subcommand.
        if bin.file_name().is_none_or(|n| n != "meshid-proxy") {
            cmd.arg("proxy");
        }
        cmd.arg("--agent-socket")
            .arg(agent_socket)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(args)
            .env("RUST_LOG", log_filter("MESHID_TEST_PROXY_LOG"));
        let log = dir.join(format!("proxy-{name}.log"));
        let (process, line) =
            Managed::start(&mut cmd, log, "meshid proxy", "meshid proxy ready: ")?;
        let field = |key: &str| -> anyhow::Result<Vec<SocketAddr>> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == key);
            let value = words
                .next()
                .ok_or_else(|| anyhow!("no {key} in {line:?}"))?;
            if value == "-" {
                return Ok(Vec::new());
            }
            value
                .split(',')
                .map(|a| a.parse().with_context(|| format!("{a:?} in {line:?}")))
                .collect()
        };
        Ok(Self {
            inbound: field("inbound")?,
            outbound: field("outbound")?,
            process,
            metrics_addr: metrics,
        })
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate()
    }
}

// ---------------------------------------------------------------------------
// The `kube` platform: the CA and the agent as processes reaching an API
// server through a kubeconfig (`KUBECONFIG`), never a manifest directory.
// ---------------------------------------------------------------------------

/// Variables that would make kube's client pick something other than the
/// kubeconfig (in-cluster service account, a proxy).
const KUBE_ENV_REMOVED: [&str; 7] = [
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "MESHID_PLATFORM",
];

/// `--platform kube`, and `kubeconfig` as the only way to the API server.
fn use_kubeconfig(cmd: &mut Command, kubeconfig: &Path) {
    cmd.args(["--platform", "kube"])
        .env("KUBECONFIG", kubeconfig);
    for var in KUBE_ENV_REMOVED {
        cmd.env_remove(var);
    }
}

impl CaProcess {
    /// Starts `bin ca --platform kube` with `env.data_dir`, on 127.0.0.1:0,
    /// as replica `pod_name` of namespace `meshid-system` (`POD_NAME`,
    /// `POD_NAMESPACE`), and waits until it prints its address: after it
    /// loaded (or created) its CA from the cluster's Secrets.
    pub fn spawn_kube(
        bin: &Path,
        env: &TestEnv,
        kubeconfig: &Path,
        pod_name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("ca")
            .arg("--data-dir")
            .arg(&env.data_dir)
            .args(["--listen", "127.0.0.1:0", "--serving-ips", "127.0.0.1"])
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .args(extra)
            .env("POD_NAMESPACE", "meshid-system")
            .env("POD_NAME", pod_name)
            .env("RUST_LOG", log_filter("MESHID_TEST_CA_LOG"));
        use_kubeconfig(&mut cmd, kubeconfig);
        let log = env.dir.path().join(format!("ca-{pod_name}.log"));
        Self::start(cmd, log, metrics)
    }
}

impl AgentProcess {
    /// Starts `bin agent --platform kube` for `node` against the CA at
    /// `ca_addr` (trusting `ca_root`), and waits until it serves its socket.
    pub fn spawn_kube(
        bin: &Path,
        env: &TestEnv,
        kubeconfig: &Path,
        ca_addr: SocketAddr,
        ca_root: &Path,
        node: &str,
        token_file: &Path,
    ) -> anyhow::Result<Self> {
        Self::start(bin, env, ca_addr, ca_root, node, token_file, &[], |cmd| {
            use_kubeconfig(cmd, kubeconfig)
        })
    }
}

/// Runs `bin <args> --platform kube` (e.g. `mtls status -n shop`) to
/// completion against the API server of `kubeconfig`.
pub fn run_kube(bin: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    use_kubeconfig(&mut cmd, kubeconfig);
    cmd.output().unwrap()
}
