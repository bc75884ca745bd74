//! The CA's composition root: from plain settings ([`CaSetup`]) to a running
//! [`CaServer`] — its authority, its platform, its audit store, its metrics.
//!
//! `meshid ca` fills a [`CaSetup`] from flags, `meshid up` and the tests fill
//! it directly; nothing here knows about clap. Owns the order things are
//! opened in and the errors that name what could not be; the parts are
//! [`crate::pki`], [`crate::platform`], [`crate::audit`] and [`super::kube`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{AuditError, AuditLog, GroupCommitConfig, StoreLocation};
use crate::ca::authorities::{
    Authorities, AuthoritySource, AuthorityStore, FileStore, FirstAuthority, RotationConfig,
    RotationError, StoreError,
};
use crate::ca::config::CaConfig;
use crate::ca::issuer::CaDeps;
use crate::ca::kube::authority_secret::{self, KubeSecretStore};
use crate::ca::kube::root_distribution;
use crate::ca::kube::secret::{self as ca_secret, CaSecretError};
use crate::ca::metrics::CaMetrics;
use crate::ca::server::{CaServer, ServerError};
use crate::pki::authority::{Authority, AuthorityConfig, AuthorityError};
use crate::pki::key::KeyAlgorithm;
use crate::platform::kube::connect::{ApiServer, ConnectError};
use crate::platform::kube::{KubeConfig, KubeConfigError, KubePlatform, TokenVerification};
use crate::platform::local::{
    load_verifier, IssuerError, LocalConfig, LocalPlatform, ManifestDirError, JWKS_FILE,
};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The authorities' state file in the data directory (local platform).
pub const AUTHORITIES_FILE: &str = "authorities.json";

/// Everything a CA is built from besides the shutdown it runs under.
pub struct CaSetup {
    /// The gRPC server's settings.
    pub config: CaConfig,
    /// Where the self-signed root, the root bundle (`root-cert.pem`), the
    /// local issuer's public keys and the audit database live.
    pub data_dir: PathBuf,
    /// A plug-in CA directory (local platform only); `None`: the
    /// self-signed root in `data_dir`.
    pub plugin_ca_dir: Option<PathBuf>,
    /// Key algorithm of a newly created self-signed root.
    pub root_key_algorithm: KeyAlgorithm,
    /// Longest the audit writer holds a commit back to group requests.
    pub audit_commit_delay: Duration,
    /// How often the audit log's checkpoint is signed while records arrive.
    pub audit_checkpoint_every: Duration,
    /// Bodies of audit records older than this are removed (leaf hashes stay).
    pub audit_retention: Option<Duration>,
    /// The audit store; `None`: `DATA_DIR/audit.db`.
    pub audit_store: Option<StoreLocation>,
    /// The checkpoint-signing key's file (shared by replicas); `None`:
    /// `DATA_DIR/audit-checkpoint-key.pk8`.
    pub audit_checkpoint_key: Option<PathBuf>,
    /// Where facts come from.
    pub platform: CaPlatform,
    /// How the authorities rotate (lifetimes, schedule, CRLs).
    pub rotation: RotationConfig,
    /// Time.
    pub clock: SharedClock,
}

/// Where the CA's facts (and, on Kubernetes, its key) come from.
pub enum CaPlatform {
    /// A manifest directory and the local token issuer's public keys.
    Local {
        /// The manifest directory; `None`: `DATA_DIR/manifests`, created.
        manifests: Option<PathBuf>,
        /// A local platform already open and running (`meshid up` shares
        /// one among the CA, the agent and itself, so the manifests are
        /// watched once and their warnings logged once).
        shared: Option<Arc<dyn Platform>>,
    },
    /// The API server; the key from Secret `cacerts` or `istio-ca-secret`.
    Kube {
        /// How service-account tokens are verified.
        token_verification: TokenVerification,
        /// The CA's namespace (its Secrets and the leader Lease).
        namespace: String,
        /// This replica's identity in the Lease; `None`: the host name.
        pod_name: Option<String>,
    },
}

/// Why the CA could not be built; each names what it could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A directory could not be created.
    #[error("cannot create directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A directory cannot be written to.
    #[error("directory {} is not writable", dir.display())]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The plug-in CA breaks a rule.
    #[error("loading the plug-in CA from {}", dir.display())]
    PluginCa {
        /// The plug-in directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<AuthorityError>,
    },
    /// The self-signed root could not be loaded or created.
    #[error("loading the CA from {}", dir.display())]
    SelfSigned {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<AuthorityError>,
    },
    /// The local issuer's public keys are missing or unreadable. Rule: the
    /// CA reads only the issuer's public JWKS; it never creates or reads the
    /// issuer's private key (`meshid token issue` and `meshid up` do).
    #[error(
        "reading the token issuer's public keys ({JWKS_FILE}) from {dir}: create the local issuer \
         first with `meshid token issue --data-dir {dir}` (or run `meshid up`)",
        dir = dir.display()
    )]
    IssuerKeys {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: IssuerError,
    },
    /// The manifest directory could not be read.
    #[error(transparent)]
    Manifests(#[from] ManifestDirError),
    /// A plug-in directory was given on Kubernetes.
    #[error(
        "--plugin-ca-dir is for --platform local; on Kubernetes put the plug-in CA in Secret {namespace}/{}",
        ca_secret::PLUGIN_SECRET
    )]
    PluginDirOnKube {
        /// The CA's namespace.
        namespace: String,
    },
    /// No client for the API server.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The CA could not be loaded from the cluster's Secrets.
    #[error("loading the CA from Secrets in namespace {namespace}")]
    CaSecret {
        /// The CA's namespace.
        namespace: String,
        /// What is wrong.
        #[source]
        source: Box<CaSecretError>,
    },
    /// A setting of the kube platform cannot work.
    #[error(transparent)]
    KubeConfig(#[from] KubeConfigError),
    /// `root-cert.pem` could not be written.
    #[error("writing the root bundle to {}", path.display())]
    RootBundle {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The audit log's checkpoint key could not be loaded or created.
    #[error(transparent)]
    CheckpointKey(crate::audit::checkpoint_key::CheckpointKeyError),
    /// The checkpoint key could not be loaded from (or created in) its Secret.
    #[error(transparent)]
    CheckpointSecret(Box<crate::ca::kube::checkpoint_secret::CheckpointSecretError>),

    /// The audit store could not be opened.
    #[error("opening the audit store {store}")]
    Audit {
        /// The store (a path, or a DSN without password).
        store: String,
        /// What is wrong.
        #[source]
        source: Box<AuditError>,
    },
    /// The authorities could not be loaded or stored.
    #[error("the CA's authorities")]
    Authorities(#[source] Box<RotationError>),
    /// The admin socket could not be opened.
    #[error("opening the admin socket {}", path.display())]
    AdminSocket {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("registering metrics")]
    Metrics(#[source] prometheus::Error),
    /// The server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Opens everything `setup` names, in order (data directory, authority,
/// platform, root bundle, audit store, metrics), and starts the CA in tasks
/// of `shutdown`. Returns once it is ready to answer.
pub async fn build(setup: CaSetup, shutdown: Shutdown) -> Result<CaServer, BuildError> {
    let CaSetup {
        config,
        data_dir,
        plugin_ca_dir,
        root_key_algorithm,
        audit_commit_delay,
        audit_checkpoint_every,
        audit_retention,
        audit_store,
        audit_checkpoint_key,
        platform,
        mut rotation,
        clock,
    } = setup;
    ensure_writable_dir(&data_dir)?;
    let authority_cfg = AuthorityConfig {
        trust_domain: config.trust_domain.clone(),
        key_algorithm: root_key_algorithm,
        clock_skew: time::Duration::seconds(60),
        // The first root too (locally, or in Secret istio-ca-secret on Kubernetes).
        root_validity: rotation.authority_ttl,
    };
    let origin = crate::audit::checkpoint_key::origin(config.trust_domain.as_str());
    // On Kubernetes: the checkpoint key from its Secret (unless a file is
    // given), and the Deployment's replica count for the SQLite warning.
    let mut kube_audit = KubeAudit::default();
    // On Kubernetes, the Lease holder runs the rotation schedule.
    let mut kube_leader: Option<tokio::sync::watch::Receiver<bool>> = None;
    let (authorities, platform) = match platform {
        CaPlatform::Local { manifests, shared } => {
            // A plug-in CA is read now: it is the first authority, or, when
            // the stored ones do not hold it, the prepared one.
            let plugin = plugin_ca_dir.as_ref().map(|dir| {
                (
                    dir.clone(),
                    Authority::load_plugin(dir, &authority_cfg, clock.as_ref()),
                )
            });
            rotation.policy.can_prepare = plugin_ca_dir.is_none();
            let store: Arc<dyn AuthorityStore> =
                Arc::new(FileStore::new(data_dir.join(AUTHORITIES_FILE)));
            let stored = store.load().await.map_err(authorities_error)?;
            let (first, offer): (FirstAuthority, _) = match (plugin, stored.is_some()) {
                // Nothing stored: the plug-in CA must load (as before rotation existed).
                (Some((dir, Err(source))), false) => {
                    return Err(BuildError::PluginCa {
                        dir,
                        source: Box::new(source),
                    })
                }
                (Some((_, Ok(authority))), false) => (
                    Box::new(move || Ok((authority, AuthoritySource::PlugIn))),
                    None,
                ),
                // Stored authorities: the plug-in CA is offered as the next one.
                (Some(offer), true) => (
                    Box::new(|| {
                        Err(RotationError::Refused(
                            "unreachable: authorities are stored".to_owned(),
                        ))
                    }),
                    Some(offer),
                ),
                (None, _) => {
                    let (dir, cfg, clock) =
                        (data_dir.clone(), authority_cfg.clone(), clock.clone());
                    let validity = rotation.authority_ttl;
                    (
                        Box::new(move || {
                            Authority::load_or_create_self_signed_for(
                                &dir,
                                &cfg,
                                validity,
                                clock.as_ref(),
                            )
                            .map(|a| (a, AuthoritySource::SelfSigned))
                            .map_err(|source| {
                                RotationError::Authority {
                                    id: format!("self-signed root in {}", dir.display()),
                                    source: Box::new(source),
                                }
                            })
                        }) as FirstAuthority,
                        None,
                    )
                }
            };
            let authorities = Authorities::open(
                store,
                rotation.clone(),
                authority_cfg.clone(),
                clock.clone(),
                first,
            )
            .await
            .map_err(authorities_error)?;
            if let Some((dir, loaded)) = offer {
                authorities
                    .offer_plugin(loaded, &dir.display().to_string())
                    .await
                    .map_err(authorities_error)?;
            }
            if let Some(dir) = &plugin_ca_dir {
                crate::ca::authorities::plugin_watch::spawn(
                    authorities.clone(),
                    dir.clone(),
                    authority_cfg.clone(),
                    clock.clone(),
                    &shutdown,
                );
            }
            let platform = match shared {
                Some(platform) => platform,
                None => local_platform(&data_dir, manifests, &clock, &shutdown)?,
            };
            (authorities, platform)
        }
        CaPlatform::Kube {
            token_verification,
            namespace,
            pod_name,
        } => {
            if plugin_ca_dir.is_some() {
                return Err(BuildError::PluginDirOnKube { namespace });
            }
            let (authorities, platform, leader) = kube_parts(
                &authority_cfg,
                &rotation,
                KubeAuditWanted {
                    origin: &origin,
                    checkpoint_key: audit_checkpoint_key.is_none(),
                    out: &mut kube_audit,
                },
                token_verification,
                namespace,
                pod_name,
                &clock,
                &shutdown,
            )
            .await?;
            kube_leader = Some(leader);
            (authorities, platform)
        }
    };
    let bundle_path = data_dir.join("root-cert.pem");
    crate::secret_file::write_public(&bundle_path, authorities.current().bundle_pem().as_bytes())
        .map_err(|source| BuildError::RootBundle {
        path: bundle_path.clone(),
        source,
    })?;
    spawn_bundle_file(authorities.clone(), bundle_path, &shutdown);
    spawn_first_root_cleanup(authorities.clone(), data_dir.clone(), &shutdown);
    {
        // Local: this CA runs the schedule. Kubernetes: the Lease holder
        // does (see kube_parts), and every replica keeps its CRLs fresh.
        let leader = match &kube_leader {
            Some(rx) => rx.clone(),
            None => tokio::sync::watch::Sender::new(true).subscribe(),
        };
        shutdown.spawn(
            authorities
                .clone()
                .run_schedule(leader, shutdown.token().clone()),
        );
    }
    let admin_socket = data_dir.join(crate::ca::admin::SOCKET_FILE);

    let audit_store =
        audit_store.unwrap_or_else(|| StoreLocation::Sqlite(data_dir.join("audit.db")));
    let signer = match (&audit_checkpoint_key, kube_audit.signer) {
        (Some(key), _) => crate::audit::checkpoint_key::load_or_create_at(key, &data_dir, &origin),
        (None, Some(signer)) => {
            crate::audit::checkpoint_key::write_verifier(&data_dir, &signer).map(|()| signer)
        }
        (None, None) => crate::audit::checkpoint_key::load_or_create(&data_dir, &origin),
    }
    .map_err(BuildError::CheckpointKey)?;
    if !audit_store.is_shared() {
        if let Some(warning) = kube_audit
            .replicas
            .and_then(crate::ca::kube::replicas::sqlite_with_replicas_warning)
        {
            tracing::error!(store = %audit_store.name(), "{warning}");
            eprintln!("WARNING: {warning}");
        }
    }
    // A PostgreSQL client runs on a runtime of its own: open it off the
    // async threads (the writer thread owns it from then on).
    let opening = audit_store.clone();
    let backend =
        tokio::task::spawn_blocking(move || opening.open_writer(signer, &origin, audit_retention))
            .await
            .map_err(|e| BuildError::Audit {
                store: audit_store.name(),
                source: Box::new(AuditError::StoreConfig {
                    store: audit_store.name(),
                    detail: format!("the opening task failed: {e}"),
                }),
            })?
            .map_err(|source| BuildError::Audit {
                store: audit_store.name(),
                source: Box::new(source),
            })?;
    tracing::info!(store = %audit_store.name(), "audit store open");
    let audit = AuditLog::start(
        backend,
        GroupCommitConfig {
            commit_delay: audit_commit_delay,
            ..GroupCommitConfig::default()
        },
    );
    spawn_checkpoints(
        audit.clone(),
        audit_checkpoint_every,
        clock.clone(),
        &shutdown,
    );
    let registry = prometheus::Registry::new();
    let metrics = CaMetrics::register(&registry).map_err(BuildError::Metrics)?;
    tracing::info!(
        data_dir = %data_dir.display(),
        plugin_ca = ?plugin_ca_dir,
        trust_domain = %config.trust_domain,
        trusted_node_accounts = %config.trusted_node_accounts,
        workload_dns_names = %config.workload_dns_names,
        audiences = ?config.audiences,
        default_ttl = ?config.default_ttl,
        max_ttl = ?config.max_ttl,
        "starting CA"
    );
    let deps = CaDeps {
        platform,
        audit,
        authorities: authorities.clone(),
        clock,
        metrics,
        http: crate::audit::http::routes(audit_store.clone()),
    };
    crate::ca::admin::serve(
        &admin_socket,
        crate::ca::admin::AdminDeps {
            authorities,
            audit_store,
            audit: deps.audit.clone(),
            clock: deps.clock.clone(),
        },
        &shutdown,
    )
    .map_err(|source| BuildError::AdminSocket {
        path: admin_socket.clone(),
        source,
    })?;
    Ok(CaServer::start(config, deps, registry, shutdown).await?)
}

/// Signs a checkpoint of the audit log every `every` (when it grew),
/// until shutdown.
fn spawn_checkpoints(audit: AuditLog, every: Duration, clock: SharedClock, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                _ = tick.tick() => {}
            }
            match audit.checkpoint(clock.now()).await {
                Ok(Some(size)) => tracing::debug!(size, "audit log checkpoint signed"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "signing the audit log's checkpoint failed"),
            }
        }
    });
}

/// The `local` platform: facts from the manifest directory, tokens checked
/// against the local issuer's public keys in `data_dir`.
fn local_platform(
    data_dir: &Path,
    manifests: Option<PathBuf>,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> Result<Arc<dyn Platform>, BuildError> {
    let manifests = match manifests {
        Some(dir) => dir,
        None => {
            let dir = data_dir.join("manifests");
            ensure_writable_dir(&dir)?;
            dir
        }
    };
    let verifier = load_verifier(data_dir).map_err(|source| BuildError::IssuerKeys {
        dir: data_dir.to_owned(),
        source,
    })?;
    let platform = LocalPlatform::open_dir(LocalConfig {
        manifest_dir: manifests.clone(),
        verifier,
        clock: clock.clone(),
        poll_interval: crate::platform::local::DEFAULT_POLL_INTERVAL,
    })?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    tracing::info!(manifests = %manifests.display(), "local platform");
    Ok(platform)
}

/// The `kube` platform: the CA from Secret `cacerts` or the shared
/// self-signed root in `istio-ca-secret` (retried while the API server is
/// away), informers over every pod, and the root-certificate ConfigMap in
/// every namespace, written by the replica holding the Lease.
/// What the kube platform is asked for the audit store, and where it puts
/// the answers.
struct KubeAuditWanted<'a> {
    origin: &'a str,
    /// Whether the checkpoint key comes from its Secret.
    checkpoint_key: bool,
    out: &'a mut KubeAudit,
}

/// The checkpoint key from its Secret, and the Deployment's replica count.
#[derive(Default)]
struct KubeAudit {
    signer: Option<crate::audit::tlog::note::NoteSigner>,
    replicas: Option<i32>,
}

// The composition root's parts, each named at the one call.
#[allow(clippy::too_many_arguments)]
async fn kube_parts(
    authority_cfg: &AuthorityConfig,
    rotation: &RotationConfig,
    audit: KubeAuditWanted<'_>,
    mode: TokenVerification,
    namespace: String,
    pod_name: Option<String>,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> Result<
    (
        Arc<Authorities>,
        Arc<dyn Platform>,
        tokio::sync::watch::Receiver<bool>,
    ),
    BuildError,
> {
    let api = ApiServer::infer().await?;
    let loaded = ca_secret::load_ca(
        &api.client,
        &namespace,
        authority_cfg,
        clock.as_ref(),
        &ca_secret::RetryPolicy::default(),
        shutdown.token(),
    )
    .await
    .map_err(|source| BuildError::CaSecret {
        namespace: namespace.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(source = ?loaded.source, %namespace, "CA loaded from the cluster");
    if audit.checkpoint_key {
        let signer = crate::ca::kube::checkpoint_secret::load_or_create_retrying(
            &api.client,
            &namespace,
            audit.origin,
            &ca_secret::RetryPolicy::default(),
            shutdown.token(),
        )
        .await
        .map_err(|e| BuildError::CheckpointSecret(Box::new(e)))?;
        audit.out.signer = Some(signer);
    }
    if let Some(pod) = &pod_name {
        // Never stops the start: the count only decides a warning.
        match crate::ca::kube::replicas::desired_replicas(&api.client, &namespace, pod).await {
            Ok(replicas) => audit.out.replicas = replicas,
            Err(e) => {
                tracing::warn!(error = %e, "could not read this Deployment's replica count (for the audit store check)")
            }
        }
    }

    let (verifier, warm) = api.token_verifier(mode, clock.clone(), shutdown.token().clone());
    if let Some(warm) = warm {
        shutdown.spawn(warm);
    }
    let config = KubeConfig {
        node_name: None,
        check_bound_pod: mode.needs_bound_pod_check(),
        max_staleness: None,
    };
    let platform = KubePlatform::new(api.client.clone(), config, verifier)?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    // The state lives in the CA's Secret; every replica follows it.
    let store: Arc<dyn AuthorityStore> =
        Arc::new(KubeSecretStore::new(api.client.clone(), &namespace));
    let plugin = loaded.source == ca_secret::CaSource::PluginSecret;
    let mut rotation = rotation.clone();
    // A plug-in CA's next authority comes from its operator (a new `cacerts`).
    rotation.policy.can_prepare = !plugin;
    let plugin_label = format!("Secret {namespace}/{}", ca_secret::PLUGIN_SECRET);
    let source = if plugin {
        AuthoritySource::PlugIn
    } else {
        AuthoritySource::SelfSigned
    };
    let mut first = Some((loaded.authority, source));
    let mut attempts = 0;
    let authorities = loop {
        attempts += 1;
        let stored = store.load().await.map_err(authorities_error)?.is_some();
        let (make, offer): (FirstAuthority, Option<Authority>) = match first.take() {
            // Stored already: a plug-in CA read now is offered as the next one.
            Some((authority, AuthoritySource::PlugIn)) if stored => {
                (stored_first(), Some(authority))
            }
            Some(first) if !stored => (Box::new(move || Ok(first)), None),
            _ => (stored_first(), None),
        };
        match Authorities::open(
            store.clone(),
            rotation.clone(),
            authority_cfg.clone(),
            clock.clone(),
            make,
        )
        .await
        {
            Ok(authorities) => {
                if let Some(authority) = offer {
                    authorities
                        .offer_plugin(Ok(authority), &plugin_label)
                        .await
                        .map_err(authorities_error)?;
                }
                break authorities;
            }
            // Another replica stored the first state between our load and save.
            Err(RotationError::Store(StoreError::Conflict { .. })) if attempts < 3 => {}
            Err(e) => return Err(authorities_error(e)),
        }
    };
    authority_secret::spawn_follow(authorities.clone(), shutdown);
    authority_secret::spawn_plugin_watch(
        api.client.clone(),
        &namespace,
        authorities.clone(),
        authority_cfg.clone(),
        clock.clone(),
        shutdown,
    );
    // The Lease holder writes the root ConfigMaps and runs the schedule.
    let leader = root_distribution::spawn(
        api.client,
        &namespace,
        pod_name,
        &authorities,
        clock.clone(),
        shutdown,
    );
    Ok((authorities, platform, leader))
}

/// The first authority when the state is stored already: never called.
fn stored_first() -> FirstAuthority {
    Box::new(|| {
        Err(RotationError::Refused(
            "unreachable: the authorities are stored".to_owned(),
        ))
    })
}

fn authorities_error(e: impl Into<RotationError>) -> BuildError {
    BuildError::Authorities(Box::new(e.into()))
}

/// Rewrites `path` (`DATA_DIR/root-cert.pem`) whenever the bundle changes.
fn spawn_bundle_file(authorities: Arc<Authorities>, path: PathBuf, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut changes = authorities.subscribe();
        let mut written = authorities.current().bundle_pem().to_owned();
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let bundle = changes.borrow_and_update().bundle_pem().to_owned();
            if bundle == written {
                continue;
            }
            match crate::secret_file::write_public(&path, bundle.as_bytes()) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "trust bundle rewritten");
                    written = bundle;
                }
                Err(e) => tracing::error!(path = %path.display(), error = %e, "writing the trust bundle failed"),
            }
        }
    });
}

/// Removes `DATA_DIR/ca-key.pem` and `ca-cert.pem` (the first self-signed
/// root, from before authorities were stored) once that authority left the
/// state, revoked or expired. Rule: a revoked authority's key does not
/// linger on disk (the state file holds the keys still in use).
fn spawn_first_root_cleanup(authorities: Arc<Authorities>, data_dir: PathBuf, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let cert = data_dir.join(crate::pki::authority::CA_CERT_FILE);
        let key = data_dir.join(crate::pki::authority::CA_KEY_FILE);
        let mut changes = authorities.subscribe();
        loop {
            let first = std::fs::read_to_string(&cert)
                .ok()
                .and_then(|pem| crate::pki::bundle::parse_pem_certs(&pem).ok())
                .and_then(|certs| certs.first().and_then(|c| crate::pki::authority::authority_id(c)));
            let Some(first) = first else { return };
            if authorities.current().entry(&first).is_none() {
                for file in [&key, &cert] {
                    if let Err(e) = std::fs::remove_file(file) {
                        tracing::warn!(path = %file.display(), error = %e, "could not remove the first root's file");
                    }
                }
                tracing::info!(id = %first, "the first root left the authorities; its key and certificate are removed from the data directory");
                return;
            }
            tokio::select! {
                () = stop.triggered() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// Creates `dir` (0700) if missing and checks now, naming the path, that it
/// can be written, rather than at the first key or audit write.
fn ensure_writable_dir(dir: &Path) -> Result<(), BuildError> {
    crate::secret_file::ensure_private_dir(dir).map_err(|source| BuildError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let probe = dir.join(".meshid-write-probe");
    std::fs::write(&probe, b"").map_err(|source| BuildError::NotWritable {
        dir: dir.to_owned(),
        source,
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
