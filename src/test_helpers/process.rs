//! Our binaries as child processes (the CA, the agent, the proxy, on the
//! `local` or the `kube` platform), each waited for until it says it is
//! ready and killed on drop.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::env::{connect, CaClient, TestEnv};

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

/// `bin ca` with the env's data directory, listening on `listen`, metrics on
/// `metrics`, logging as `MESHID_TEST_CA_LOG` says.
fn ca_command(bin: &Path, env: &TestEnv, listen: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("ca")
        .arg("--data-dir")
        .arg(&env.data_dir)
        // Port 0: a port picked in advance may be taken by the time the CA
        // binds it (tests run in parallel); the CA prints the one it got.
        .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", log_filter("MESHID_TEST_CA_LOG"));
    cmd
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
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = ca_command(bin, env, listen);
        cmd.arg("--manifests").arg(&env.manifests).args(extra);
        let log = env.dir.path().join(format!("ca-{n}.log"));
        Self::start(cmd, log)
    }

    /// Starts the prepared `meshid ca` command and waits for its line
    /// `meshid CA listening on ADDR (TLS), metrics on Some(ADDR)`.
    fn start(mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let (process, line) =
            Managed::start(&mut cmd, log, "meshid ca", "meshid CA listening on ")?;
        let addr = line
            .strip_prefix("meshid CA listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("no address in {line:?}"))?;
        let metrics = line
            .split_once("metrics on Some(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(m, _)| m)
            .ok_or_else(|| anyhow!("no metrics address in {line:?}"))?;
        Ok(Self {
            process,
            addr: addr.parse()?,
            metrics_addr: metrics.parse()?,
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

/// utime + stime of `pid`, in seconds (from /proc/<pid>/stat; 0 if gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS of `pid`, in KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
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
        let mut cmd = ca_command(bin, env, "127.0.0.1:0");
        cmd.args(["--serving-ips", "127.0.0.1"])
            .args(extra)
            .env("POD_NAMESPACE", "meshid-system")
            .env("POD_NAME", pod_name);
        use_kubeconfig(&mut cmd, kubeconfig);
        let log = env.dir.path().join(format!("ca-{pod_name}.log"));
        Self::start(cmd, log)
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
