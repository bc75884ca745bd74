//! A test's world: temporary data and manifest directories, pods, tokens from
//! the local issuer, CSRs, and a TLS client of the CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
