//! Test and bench support (feature `testing`): temporary data and manifest
//! directories, tokens from the local issuer, CSRs, and the CA as a real
//! process on `127.0.0.1:0` with a TLS client for it.
//!
//! Nothing here is a fake: the CA is the real binary, the tokens are signed by
//! the same issuer code `meshid token issue` uses, and the client speaks TLS.

#![allow(clippy::unwrap_used, unreachable_pub, missing_docs)]

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

/// The CA binary running as a child process; killed on drop.
#[derive(Debug)]
pub struct CaProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
}

impl CaProcess {
    /// Starts `bin ca` on 127.0.0.1:0 with the env's directories and `extra` flags,
    /// and waits until it prints its address.
    pub fn spawn(bin: &Path, env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let log = env.dir.path().join(format!("ca-{}.log", metrics.port()));
        let stderr = std::fs::File::create(&log)?;
        let mut child = Command::new(bin)
            .arg("ca")
            .arg("--data-dir")
            .arg(&env.data_dir)
            .arg("--manifests")
            .arg(&env.manifests)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen"])
            .arg(metrics.to_string())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("MESHID_TEST_CA_LOG")
                    .unwrap_or_else(|_| "meshid=debug,info".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning meshid ca")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line
            .strip_prefix("meshid CA listening on ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "CA did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok(Self {
            child: Some(child),
            addr: addr.parse()?,
            metrics_addr: metrics,
            log,
        })
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
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
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill()?;
        bail!("CA did not exit within 10 s of SIGTERM")
    }

    /// The CA's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A TLS client trusting `root_pem`, verifying the server as `localhost`.
    pub async fn client(&self, root_pem: &str) -> anyhow::Result<CaClient> {
        connect(self.addr, root_pem, None).await
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}
