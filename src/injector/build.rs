//! The injector's composition root: plain settings in, a running injector out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::namespaces::NamespaceWatch;
use super::serving::{self, CaServing, ServingError};
use super::webhook;
use crate::ca_client::{CaClient, CaClientConfig, CaClientError};
use crate::inject::server::{CertSlot, InjectorMetrics, InjectorServer, NamespaceLabels};
use crate::inject::{InjectConfig, NamespaceInjection};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum ServingSource {
    /// PEM files, read once at start.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// meshid's CA, renewed at half-life.
    Ca {
        /// `https://host:port`.
        address: String,
        /// The roots the CA's serving certificate chains to (PEM file).
        root_file: PathBuf,
        /// The injector's service-account token file.
        token_file: PathBuf,
        /// What to ask for.
        serving: CaServing,
    },
}

/// Everything `meshid injector` needs.
pub struct InjectorSetup {
    /// The HTTPS listen address.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`; None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// What is injected.
    pub inject: InjectConfig,
    /// The serving certificate.
    pub serving: ServingSource,
    /// The API server (namespace labels; the webhook's caBundle when the CA
    /// issues the certificate). None: no namespace is labelled, as far as the
    /// injector knows, so only pods that ask are injected.
    pub kube: Option<kube::Client>,
    /// The `MutatingWebhookConfiguration` whose caBundle to keep (with `kube`
    /// and a CA-issued certificate).
    pub webhook_name: String,
    /// The clock (renewal times).
    pub clock: SharedClock,
}

/// A started injector.
#[derive(Debug, Clone, Copy)]
pub struct RunningInjector {
    /// Where the HTTPS endpoint listens.
    pub addr: SocketAddr,
    /// Where the metrics endpoint listens.
    pub metrics_addr: Option<SocketAddr>,
}

/// Why the injector could not start. Each names the flag or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The serving certificate files.
    #[error("{0}")]
    Serving(#[from] ServingError),
    /// The CA client settings.
    #[error("{0}")]
    CaClient(#[from] CaClientError),
    /// `--ca-root` could not be read.
    #[error("--ca-root {path}: {source}")]
    CaRoot {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Starts the injector; it runs until `shutdown`.
pub async fn build(
    setup: InjectorSetup,
    shutdown: Shutdown,
) -> Result<RunningInjector, BuildError> {
    let slot = CertSlot::new();
    let (bundle_tx, bundle_rx) = watch::channel(None);
    match setup.serving {
        ServingSource::Files { cert, key } => slot.set(serving::from_files(&cert, &key)?),
        ServingSource::Ca {
            address,
            root_file,
            token_file,
            serving,
        } => {
            let root_pem =
                std::fs::read_to_string(&root_file).map_err(|source| BuildError::CaRoot {
                    path: root_file.display().to_string(),
                    source,
                })?;
            let ca = CaClient::new(&CaClientConfig {
                address,
                root_pem,
                token_file,
                impersonate: false,
            })?;
            shutdown.spawn(serving::keep_issued(
                ca,
                serving,
                slot.clone(),
                bundle_tx,
                setup.clock.clone(),
                shutdown.clone(),
            ));
            if let Some(client) = &setup.kube {
                shutdown.spawn(webhook::keep_ca_bundle(
                    client.clone(),
                    setup.webhook_name.clone(),
                    bundle_rx,
                    shutdown.clone(),
                ));
            }
        }
    }
    let (namespace_labels, namespaces_synced): (
        NamespaceLabels,
        Arc<dyn Fn() -> bool + Send + Sync>,
    ) = match &setup.kube {
        Some(client) => {
            let watch = NamespaceWatch::start(client.clone(), &shutdown);
            let synced = watch.clone();
            (watch.labels(), Arc::new(move || synced.is_synced()))
        }
        None => (
            Arc::new(|_: &str| NamespaceInjection::Unset),
            Arc::new(|| true),
        ),
    };

    let registry = Registry::new();
    let metrics = InjectorMetrics::register(&registry)?;
    let listener = TcpListener::bind(setup.listen)
        .await
        .map_err(|source| BuildError::Bind {
            flag: "--listen",
            addr: setup.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| BuildError::Bind {
        flag: "--listen",
        addr: setup.listen,
        source,
    })?;
    InjectorServer {
        config: Arc::new(setup.inject),
        cert: slot.clone(),
        namespace_labels,
        metrics,
    }
    .spawn(listener, &shutdown);

    let metrics_addr = match setup.metrics_listen {
        Some(m) => {
            // Ready with a serving certificate and the namespaces' labels.
            let ready = Arc::new(move || slot.is_ready() && namespaces_synced());
            Some(
                crate::telemetry::serve(m, registry, ready, shutdown.clone())
                    .await
                    .map_err(|source| BuildError::Bind {
                        flag: "--metrics-listen",
                        addr: m,
                        source,
                    })?,
            )
        }
        None => None,
    };
    tracing::info!(%addr, ?metrics_addr, "injector listening (POST /inject)");
    Ok(RunningInjector { addr, metrics_addr })
}
