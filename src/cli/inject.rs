//! `meshid injector` (the admission webhook server) and `meshid inject -f`
//! (the same mutation, offline); [`InjectArgs`] are the flags both share:
//! what goes into a pod.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::identity::{SpiffeId, TrustDomain};
use crate::inject::offline::inject_yaml;
use crate::inject::InjectConfig;
use crate::injector::serving::CaServing;
use crate::injector::{self, InjectorSetup, ServingSource};
use crate::shutdown::Shutdown;
use crate::time::system_clock;

/// What the injector puts into a pod.
#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The image holding `meshid-proxy` and iptables (deploy/Dockerfile's `proxy` target).
    #[arg(
        long,
        env = "MESHID_PROXY_IMAGE",
        default_value = "ghcr.io/meshid/meshid-proxy:latest"
    )]
    pub proxy_image: String,
    /// `imagePullPolicy` of the injected containers (default: the cluster's).
    #[arg(long, env = "MESHID_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub proxy_image_pull_policy: Option<String>,
    /// The uid the sidecar runs as (its traffic is never captured; a pod container running as it is refused).
    #[arg(long, env = "MESHID_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The node agent's socket directory (a hostPath, mounted read-only).
    #[arg(
        long,
        env = "MESHID_AGENT_SOCKET_DIR",
        default_value = "/var/run/meshid"
    )]
    pub agent_socket_dir: String,
    /// Audience of the sidecar's projected token.
    #[arg(long, env = "MESHID_PROXY_TOKEN_AUDIENCE", default_value = "istio-ca")]
    pub proxy_token_audience: String,
    /// meshid's own namespace: its pods are never injected.
    #[arg(long, env = "MESHID_SYSTEM_NAMESPACE", default_value = "meshid-system")]
    pub system_namespace: String,
}

impl InjectArgs {
    fn config(&self) -> InjectConfig {
        InjectConfig {
            proxy_image: self.proxy_image.clone(),
            image_pull_policy: self.proxy_image_pull_policy.clone(),
            proxy_uid: self.proxy_uid,
            agent_socket_dir: self.agent_socket_dir.clone(),
            token_audience: self.proxy_token_audience.clone(),
            system_namespace: self.system_namespace.clone(),
            ..InjectConfig::default()
        }
    }
}

/// Flags of `meshid inject`.
#[derive(Debug, Args)]
pub struct InjectFileArgs {
    /// The YAML file (several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// What goes into a pod.
    #[command(flatten)]
    pub inject: InjectArgs,
}

/// Runs `meshid inject -f`: injected YAML on stdout, a summary on stderr.
pub fn run_file(args: &InjectFileArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("-f {}", args.file.display()))?
    };
    let (yaml, reports) = inject_yaml(&input, &args.inject.config())
        .with_context(|| format!("-f {}", args.file.display()))?;
    print!("{yaml}");
    for report in reports {
        match report.outcome {
            Some(crate::inject::Outcome::Injected) => eprintln!("{}: injected", report.object),
            Some(crate::inject::Outcome::Skipped(why)) => {
                eprintln!("{}: left alone: {why}", report.object)
            }
            None => {}
        }
    }
    Ok(())
}

/// Flags of `meshid injector`.
#[derive(Debug, Args)]
pub struct InjectorArgs {
    /// HTTPS listen address of the admission endpoint (`POST /inject`).
    #[arg(long, env = "MESHID_LISTEN", default_value = "127.0.0.1:15017")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz (plain HTTP).
    #[arg(long, env = "MESHID_METRICS_LISTEN", default_value = "127.0.0.1:15018")]
    pub metrics_listen: SocketAddr,
    /// Serving certificate chain (PEM, leaf first); with --tls-key. Without both, meshid's CA issues it.
    #[arg(long, env = "MESHID_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The serving certificate's key (PEM); with --tls-cert.
    #[arg(long, env = "MESHID_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// meshid's CA, when it issues the serving certificate.
    #[arg(
        long,
        env = "MESHID_CA_ADDRESS",
        default_value = "https://meshid-ca.meshid-system.svc:15012"
    )]
    pub ca_address: String,
    /// The roots the CA's serving certificate chains to.
    #[arg(
        long,
        env = "MESHID_CA_ROOT",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root: PathBuf,
    /// The injector's service-account token (audience istio-ca), for the CA.
    #[arg(
        long,
        env = "MESHID_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/meshid-token"
    )]
    pub token_file: PathBuf,
    /// Trust domain of the injector's identity.
    #[arg(long, env = "MESHID_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: TrustDomain,
    /// The injector's namespace (its identity, its Service's DNS name).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshid-system")]
    pub namespace: String,
    /// The injector's service account.
    #[arg(
        long,
        env = "MESHID_SERVICE_ACCOUNT",
        default_value = "meshid-injector"
    )]
    pub service_account: String,
    /// DNS names of the serving certificate (default: meshid-injector.<namespace>.svc).
    #[arg(long, env = "MESHID_SERVING_DNS_NAMES", value_delimiter = ',')]
    pub serving_dns_names: Vec<String>,
    /// Lifetime asked for the CA-issued serving certificate (renewed at half).
    #[arg(long, env = "MESHID_SERVING_CERT_TTL", value_parser = super::parse_duration, default_value = "24h")]
    pub serving_cert_ttl: Duration,
    /// Talk to the Kubernetes API server (in-cluster, or KUBECONFIG): namespace labels, and the webhook's caBundle when the CA issues the certificate.
    #[arg(long, env = "MESHID_KUBE")]
    pub kube: bool,
    /// The MutatingWebhookConfiguration whose caBundle the injector keeps (with --kube).
    #[arg(long, env = "MESHID_WEBHOOK_NAME", default_value = "meshid-injector")]
    pub webhook_name: String,
    /// What goes into a pod.
    #[command(flatten)]
    pub inject: InjectArgs,
}

impl InjectorArgs {
    /// The flags as plain settings.
    pub fn into_setup(self, kube: Option<kube::Client>) -> anyhow::Result<InjectorSetup> {
        let serving = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => ServingSource::Files { cert, key },
            _ => {
                let identity = SpiffeId::for_service_account(
                    &self.trust_domain,
                    &self.namespace,
                    &self.service_account,
                )
                .with_context(|| {
                    format!(
                        "--namespace {:?} / --service-account {:?}",
                        self.namespace, self.service_account
                    )
                })?;
                let dns_names = if self.serving_dns_names.is_empty() {
                    vec![format!("meshid-injector.{}.svc", self.namespace)]
                } else {
                    self.serving_dns_names
                };
                ServingSource::Ca {
                    address: self.ca_address,
                    root_file: self.ca_root,
                    token_file: self.token_file,
                    serving: CaServing {
                        identity,
                        dns_names,
                        ttl: self.serving_cert_ttl,
                    },
                }
            }
        };
        Ok(InjectorSetup {
            listen: self.listen,
            metrics_listen: Some(self.metrics_listen),
            inject: self.inject.config(),
            serving,
            kube,
            webhook_name: self.webhook_name,
            clock: system_clock(),
        })
    }
}

/// Runs `meshid injector` until SIGINT or SIGTERM.
pub async fn run_injector(args: InjectorArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    let kube = if args.kube {
        Some(
            crate::platform::kube::connect::ApiServer::infer()
                .await
                .context("--kube")?
                .client,
        )
    } else {
        None
    };
    let running = injector::build(args.into_setup(kube)?, shutdown.clone()).await?;
    println!(
        "meshid injector listening on {} (HTTPS, POST /inject), metrics on {:?}",
        running.addr, running.metrics_addr
    );
    shutdown.triggered().await;
    if !shutdown.drain(Duration::from_secs(5)).await {
        tracing::warn!("some tasks were still running 5 s after shutdown began");
    }
    Ok(())
}
