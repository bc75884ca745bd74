//! Picks up a new plug-in CA without a restart: the plug-in directory is
//! read every [`POLL`]; when its files change, the CA in it is checked
//! ([`Authority::load_plugin`]) and offered as the prepared authority
//! ([`Authorities::offer_plugin`]). A CA that fails its checks is named
//! and the current authority keeps signing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Authorities;
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// How often the directory is read.
pub const POLL: Duration = Duration::from_secs(2);

/// The directory's files and their contents, to notice any change.
fn fingerprint(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    files.sort();
    files
}

/// Watches `dir` until shutdown.
pub fn spawn(
    authorities: Arc<Authorities>,
    dir: PathBuf,
    cfg: AuthorityConfig,
    clock: SharedClock,
    shutdown: &Shutdown,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut seen = fingerprint(&dir);
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let now = fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            tracing::info!(dir = %dir.display(), "the plug-in CA's files changed; checking them");
            let loaded = Authority::load_plugin(&dir, &cfg, clock.as_ref());
            match authorities
                .offer_plugin(loaded, &dir.display().to_string())
                .await
            {
                Ok(Some(message)) => tracing::info!("{message}"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "storing the new plug-in CA failed"),
            }
        }
    });
}
