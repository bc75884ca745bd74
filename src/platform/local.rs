//! The `local` platform: facts from a directory of Kubernetes-style YAML,
//! tokens from the local issuer's JWKS.
//!
//! Owns [`LocalPlatform`] (load, index, poll for changes, serve lookups),
//! [`Manifests`] (the same directory read once, for the command line, with no
//! token verifier), the write side of `meshid mtls set-mode`
//! ([`policy_write`]) and re-exports the local [`TokenIssuer`]. Reads Namespace, ServiceAccount, Pod
//! and PeerAuthentication documents from `*.yaml` / `*.yml` files (not
//! recursively); other kinds are skipped.
//!
//! Rules enforced: a broken start is an error (missing directory, bad YAML);
//! after that, a bad edit or a deleted directory never empties the platform —
//! the last good state keeps serving, the problem is logged once, and the
//! next good state is picked up when the files change. Lookups read an
//! immutable snapshot behind a lock held only to clone an `Arc`, never across
//! an `.await`.

pub mod issuer;
mod manifest;
pub mod policy_write;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::issuer::{
    load_verifier, IssuerError, TokenIssuer, TokenRequest, JWKS_FILE, KEY_FILE, LOCAL_ISSUER,
};
use self::manifest::Fingerprint;
use self::snapshot::Snapshot;
use super::jwt::JwtVerifier;
use super::{Namespace, Platform, PlatformError, Pod, VerifyFuture};
use crate::policy::PeerAuthentication;
use crate::time::SharedClock;

/// How long a changed manifest directory must hold still before it is read.
const WRITE_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// How often [`LocalPlatform::run`] looks for changed files by default: a
/// changed policy should reach every proxy well within a second, and a poll
/// is a directory listing plus one `stat` per manifest.
pub const DEFAULT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Settings and dependencies of a [`LocalPlatform`].
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The directory of manifests (`--manifests`).
    pub manifest_dir: PathBuf,
    /// Verifies service-account tokens (usually [`TokenIssuer::verifier`] or [`load_verifier`]).
    pub verifier: JwtVerifier,
    /// "Now" for token expiry checks; a test clock in tests.
    pub clock: SharedClock,
    /// How often to look for changed files ([`DEFAULT_POLL_INTERVAL`]).
    pub poll_interval: std::time::Duration,
}

impl LocalConfig {
    /// A config with the default poll interval.
    pub fn new(
        manifest_dir: impl Into<PathBuf>,
        verifier: JwtVerifier,
        clock: SharedClock,
    ) -> Self {
        Self {
            manifest_dir: manifest_dir.into(),
            verifier,
            clock,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// The `local` platform: a watched manifest directory plus JWKS token verification.
#[derive(Debug)]
pub struct LocalPlatform {
    dir: PathBuf,
    verifier: JwtVerifier,
    clock: SharedClock,
    poll_interval: std::time::Duration,
    /// The current view; readers clone the `Arc` and let go of the lock.
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serializes reloads and remembers what was last read.
    load: Mutex<LoadState>,
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct LoadState {
    /// Fingerprint of the files the current snapshot was built from.
    loaded: Option<Fingerprint>,
    /// Fingerprint of files that failed to load (not retried until they change).
    failed: Option<Fingerprint>,
}

/// The manifest directory read once, checked exactly as [`LocalPlatform`]
/// checks it, for readers that verify no token (`meshid mtls`, the status of
/// `meshid up`). Not watched: read again to see changes.
#[derive(Debug)]
pub struct Manifests {
    snapshot: Snapshot,
}

impl Manifests {
    /// Reads and checks `dir`. A missing directory or a bad manifest is an error.
    pub fn read(dir: &Path) -> Result<Self, PlatformError> {
        let (_, snapshot) = load(dir)?;
        Ok(Self { snapshot })
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        self.snapshot.pods()
    }

    /// Every pod of `namespace` running as `service_account`, in any phase.
    pub fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.snapshot
            .pods_for_service_account(namespace, service_account)
    }

    /// Every PeerAuthentication (`metadata.namespace` filled in).
    pub fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        self.snapshot.peer_authentications()
    }
}

/// Lists, reads and indexes `dir`.
fn load(dir: &Path) -> Result<(Fingerprint, Snapshot), PlatformError> {
    let fingerprint = manifest::fingerprint(dir)?;
    let snapshot = Snapshot::build(manifest::read_all(&fingerprint)?)?;
    Ok((fingerprint, snapshot))
}

/// A manifest directory that could not be opened, naming it.
#[derive(Debug, thiserror::Error)]
#[error("reading manifests from {}", dir.display())]
pub struct ManifestDirError {
    /// The manifest directory.
    pub dir: std::path::PathBuf,
    /// What is wrong.
    #[source]
    pub source: PlatformError,
}

impl LocalPlatform {
    /// [`Self::open`], its error naming the directory (what the CA, the
    /// agent and `meshid up` report).
    pub fn open_dir(cfg: LocalConfig) -> Result<Arc<Self>, ManifestDirError> {
        let dir = cfg.manifest_dir.clone();
        Self::open(cfg).map_err(|source| ManifestDirError { dir, source })
    }

    /// Reads the manifest directory. A missing directory or a bad manifest is an error.
    pub fn open(cfg: LocalConfig) -> Result<Arc<Self>, PlatformError> {
        let (fingerprint, snapshot) = load(&cfg.manifest_dir)?;
        tracing::info!(
            dir = %cfg.manifest_dir.display(),
            pods = snapshot.pod_count(),
            files = fingerprint.files.len(),
            "local platform loaded its manifests"
        );
        let (generation, _) = watch::channel(1);
        Ok(Arc::new(Self {
            dir: cfg.manifest_dir,
            verifier: cfg.verifier,
            clock: cfg.clock,
            poll_interval: cfg.poll_interval,
            snapshot: RwLock::new(Arc::new(snapshot)),
            load: Mutex::new(LoadState {
                loaded: Some(fingerprint),
                failed: None,
            }),
            generation,
        }))
    }

    /// The manifest directory.
    pub fn manifest_dir(&self) -> &Path {
        &self.dir
    }

    /// The current generation (what [`Platform::changes`] carries).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Declared ServiceAccounts, as `(namespace, name)`.
    pub fn service_accounts(&self) -> Vec<(String, String)> {
        self.snapshot().service_accounts()
    }

    /// Re-reads the directory if its files changed. `Ok(true)`: a new state is
    /// being served (generation bumped); `Ok(false)`: nothing changed. On error
    /// the last good state keeps serving.
    pub fn reload(&self) -> Result<bool, PlatformError> {
        self.reload_with(false)
            .map(|changed| changed.unwrap_or(false))
    }

    /// `Ok(None)`: skipped, the same files already failed (and were reported).
    fn reload_with(&self, skip_known_failure: bool) -> Result<Option<bool>, PlatformError> {
        let mut state = self.load.lock().unwrap_or_else(PoisonError::into_inner);
        let fingerprint = manifest::fingerprint(&self.dir)?;
        if state
            .loaded
            .as_ref()
            .is_some_and(|l| l.vouches_for(&fingerprint))
        {
            return Ok(Some(false));
        }
        if skip_known_failure
            && state
                .failed
                .as_ref()
                .is_some_and(|f| f.vouches_for(&fingerprint))
        {
            return Ok(None);
        }
        if skip_known_failure {
            // A file being written (truncate, then write) must not be read
            // half-way: a change is applied only once the directory has held
            // still for a moment; otherwise the next poll tries again.
            // A blocking poll (its own thread), timed by the real file system.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(WRITE_SETTLE);
            let again = manifest::fingerprint(&self.dir)?;
            if again.files != fingerprint.files {
                return Ok(None);
            }
        }
        match manifest::read_all(&fingerprint).and_then(Snapshot::build) {
            Ok(snapshot) => {
                state.loaded = Some(fingerprint);
                state.failed = None;
                Ok(Some(self.install(snapshot)))
            }
            Err(e) => {
                state.failed = Some(fingerprint);
                Err(e)
            }
        }
    }

    /// Serves `snapshot` if it differs from the current one; bumps the generation.
    fn install(&self, snapshot: Snapshot) -> bool {
        let mut current = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if **current == snapshot {
            return false;
        }
        let pods = snapshot.pod_count();
        *current = Arc::new(snapshot);
        drop(current);
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(dir = %self.dir.display(), pods, generation = self.generation(), "manifests reloaded");
        true
    }

    /// Polls the directory every `poll_interval` and reloads on change, until
    /// `shutdown`. A change is seen through a cheap fingerprint (file names,
    /// sizes, modification times, inodes; re-read anyway while a file is
    /// younger than the filesystem's timestamp granularity can vouch for).
    /// Errors are logged once per distinct error; the last good state keeps
    /// serving, and the same broken files are not re-parsed until they change.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; `open` just loaded
        let mut reported: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let this = Arc::clone(&self);
            let outcome = match tokio::task::spawn_blocking(move || this.reload_with(true)).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(error = %e, "manifest reload task failed");
                    continue;
                }
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(_)) => {
                    if reported.take().is_some() {
                        tracing::info!(dir = %self.dir.display(), "manifests are readable again");
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    if reported.as_deref() != Some(message.as_str()) {
                        tracing::error!(error = %message, "cannot reload manifests; still serving the last good state");
                        reported = Some(message);
                    }
                }
            }
        }
        tracing::debug!(dir = %self.dir.display(), "manifest watcher stopped");
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Platform for LocalPlatform {
    fn verify_token<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        Box::pin(async move { self.verifier.verify(token, audiences, self.clock.now()) })
    }

    fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        self.snapshot().pod_by_uid(uid)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.snapshot().pod(namespace, name)
    }

    fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.snapshot().pods_on_node(node)
    }

    fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        self.snapshot().pods_with_ip(ip)
    }

    fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.snapshot()
            .pods_for_service_account(namespace, service_account)
    }

    fn namespaces(&self) -> Vec<Namespace> {
        self.snapshot().namespaces()
    }

    fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        self.snapshot().peer_authentications()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Always true: [`LocalPlatform::open`] only returns after a complete load.
    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
