//! The CA and the agent built in this process, through the same composition
//! root as the binaries ([`crate::ca::build`], [`crate::agent::build`]), on
//! `127.0.0.1:0`. Each runs on its own runtime thread, so a test that blocks
//! (a synchronous socket, `openssl`, a child process) never starves it; drop
//! stops it as a kill would (its tasks dropped, its sockets closed) and joins.
//!
//! Child processes ([`super::process`]) remain for what only a process
//! shows: signals, exit codes, stdout and logs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;

use super::env::{connect, CaClient, TestEnv};
use crate::agent::server::RunningAgent;
use crate::agent::AgentSetup;
use crate::ca::{CaServer, CaSetup};
use crate::cli::agent::AgentArgs;
use crate::cli::ca::CaArgs;
use crate::shutdown::Shutdown;

/// Something running on its own runtime thread until dropped.
#[derive(Debug)]
struct Runner {
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    /// Runs `start` on a new two-worker runtime and returns what it made
    /// once it has started; the runtime then lives until drop.
    fn start<T, F, Fut>(what: &str, start: F) -> anyhow::Result<(Self, T)>
    where
        T: Send + 'static,
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
    {
        let shutdown = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("in-process {what}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!(e).context("building a runtime")));
                        return;
                    }
                };
                let started = runtime.block_on(async move {
                    match start(inner.clone()).await {
                        Ok(made) => {
                            let _ = tx.send(Ok(made));
                            inner.triggered().await;
                            true
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            false
                        }
                    }
                });
                // Stopped like a killed process, not drained: the test that
                // drops it may still hold connections whose runtime is the
                // one blocked in this drop, so a graceful close would wait
                // for an answer that cannot come. Tasks are dropped, sockets
                // closed; what the audit store acknowledged is already durable.
                if started {
                    runtime.shutdown_timeout(Duration::from_millis(200));
                }
            })?;
        let made = rx
            .recv()
            .map_err(|_| anyhow!("the {what} thread ended before starting"))??;
        Ok((
            Self {
                shutdown,
                thread: Some(thread),
            },
            made,
        ))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA built in this process; stopped on drop.
#[derive(Debug)]
pub struct InProcessCa {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    _runner: Runner,
}

impl InProcessCa {
    /// `meshid ca` with the env's directories on `127.0.0.1:0` and `extra`
    /// flags, parsed by the binary's own flag definitions.
    pub fn with_flags(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let mut argv = vec![
            "ca".to_owned(),
            "--data-dir".to_owned(),
            env.data_dir.display().to_string(),
            "--manifests".to_owned(),
            env.manifests.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--metrics-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = Flags::<CaArgs>::try_parse_from(argv).context("meshid ca flags")?;
        Self::start(args.args.into_setup(None)?)
    }

    /// A CA built from `setup`.
    pub fn start(setup: CaSetup) -> anyhow::Result<Self> {
        let (runner, server): (Runner, CaServer) = Runner::start("CA", move |shutdown| async {
            Ok(crate::ca::build(setup, shutdown).await?)
        })?;
        Ok(Self {
            addr: server.addr,
            metrics_addr: server
                .metrics_addr
                .ok_or_else(|| anyhow!("the CA has no metrics port"))?,
            _runner: runner,
        })
    }

    /// A TLS client trusting `root_pem`, verifying the server as `localhost`.
    pub async fn client(&self, root_pem: &str) -> anyhow::Result<CaClient> {
        connect(self.addr, root_pem, None).await
    }
}

/// An agent built in this process; stopped on drop.
#[derive(Debug)]
pub struct InProcessAgent {
    pub socket: PathBuf,
    pub metrics_addr: SocketAddr,
    _runner: Runner,
}

impl InProcessAgent {
    /// `meshid agent` for `node` against the CA at `ca_addr`, with the env's
    /// manifests and issuer keys, `token_file` as its token, a socket in
    /// the env's directory, and `extra` flags.
    pub fn with_flags(
        env: &TestEnv,
        ca_addr: SocketAddr,
        node: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::with_flags_at(
            &Self::socket_path(env),
            env,
            ca_addr,
            node,
            token_file,
            extra,
        )
    }

    /// A fresh socket path in the env's directory, for [`Self::with_flags_at`]
    /// (a test that starts a client before the agent knows where to point it).
    pub fn socket_path(env: &TestEnv) -> PathBuf {
        static AGENTS: AtomicUsize = AtomicUsize::new(0);
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        env.dir.path().join(format!("agent-in-process-{n}.sock"))
    }

    /// As [`Self::with_flags`], serving on `socket`.
    pub fn with_flags_at(
        socket: &Path,
        env: &TestEnv,
        ca_addr: SocketAddr,
        node: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut argv: Vec<String> = [
            "agent",
            "--node",
            node,
            "--ca-address",
            &format!("https://{ca_addr}"),
            "--ca-root",
            &env.data_dir.join("root-cert.pem").display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--manifests",
            &env.manifests.display().to_string(),
            "--token-jwks-dir",
            &env.data_dir.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = Flags::<AgentArgs>::try_parse_from(argv).context("meshid agent flags")?;
        Self::start(args.args.into_setup(None))
    }

    /// An agent built from `setup`.
    pub fn start(setup: AgentSetup) -> anyhow::Result<Self> {
        let (runner, agent): (Runner, RunningAgent) =
            Runner::start("agent", move |shutdown| async {
                Ok(crate::agent::build(setup, shutdown).await?)
            })?;
        Ok(Self {
            socket: agent.socket.clone(),
            metrics_addr: agent
                .metrics_addr
                .ok_or_else(|| anyhow!("the agent has no metrics port"))?,
            _runner: runner,
        })
    }

    /// `unix:///…`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// One subcommand's flags, parsed as the binary parses them.
#[derive(Parser)]
struct Flags<A: clap::Args> {
    #[command(flatten)]
    args: A,
}
