//! The manifest directory of `meshid up`, watched for the one change the
//! components cannot explain themselves: the directory deleted, and back.
//! Their own errors name only the file-system error; this says what it means
//! for the demo and what to do.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::platform::local::Manifests;
use crate::shutdown::Shutdown;

/// What happened when the manifest directory is gone, and what to do.
pub(crate) fn manifests_deleted(manifests: &Path) -> String {
    format!(
        "the manifest directory {} was deleted: the CA, the agent and the proxies keep serving \
         the last manifests they read (pods, tokens, mTLS modes); put the files back, or restart \
         `meshid up` to write the demo manifests again",
        manifests.display()
    )
}

/// How often [`watch_manifest_dir`] looks.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Logs (once each way) when the manifest directory disappears and when it
/// is back: the components' own errors name only the file-system error. The
/// return is judged one look later, once the files are likely in place, and
/// says which demo workloads the new directory lacks a pod for. The
/// returned receiver says whether the directory is there now.
pub(crate) fn watch_manifest_dir(
    manifests: std::path::PathBuf,
    shutdown: &Shutdown,
) -> watch::Receiver<bool> {
    let stop = shutdown.clone();
    let (tx, rx) = watch::channel(true);
    shutdown.spawn(async move {
        let mut present = true;
        let mut returning = false;
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let now = manifests.is_dir();
            if present && !now {
                tracing::warn!("{}", manifests_deleted(&manifests));
            } else if returning && now {
                tracing::warn!("{}", manifests_back(&manifests));
            }
            returning = !present && now;
            present = now;
            tx.send_if_modified(|was| std::mem::replace(was, now) != now);
        }
    });
    rx
}

/// What the components find in a manifest directory that is back.
fn manifests_back(manifests: &Path) -> String {
    let dir = manifests.display();
    match Manifests::read(manifests) {
        Ok(read) => {
            let missing: Vec<String> = super::WORKLOADS
                .iter()
                .filter(|w| super::status::running_pod(&read, w).is_none())
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            if missing.is_empty() {
                format!("the manifest directory {dir} is back; the components read it again")
            } else {
                format!(
                    "the manifest directory {dir} is back, but with no running pod for {}: the agent \
                     no longer attests their proxies, which keep their certificates until they \
                     expire; put the demo files back, or restart `meshid up` to write the missing ones",
                    missing.join(", ")
                )
            }
        }
        Err(e) => format!(
            "the manifest directory {dir} is back, but does not load ({e}); the last good state keeps serving"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_manifest_directory_is_judged_by_the_demo_pods_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        super::super::demo::write_manifests(&manifests).unwrap();
        assert!(manifests_back(&manifests).ends_with("is back; the components read it again"));

        std::fs::remove_file(manifests.join("pod-shop-cart.yaml")).unwrap();
        let partial = manifests_back(&manifests);
        assert!(
            partial.contains("with no running pod for shop/cart: the agent"),
            "{partial}"
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let text = manifests_back(&empty);
        assert!(
            text.contains("no running pod for default/frontend, default/backend, shop/cart"),
            "{text}"
        );
        let modes = super::super::status::modes(&empty).unwrap();
        assert!(modes[1].1.contains("NO running pod of default/backend"));

        std::fs::write(empty.join("broken.yaml"), "kind: Pod\nmetadata: [").unwrap();
        assert!(manifests_back(&empty).contains("does not load"));
        assert!(manifests_deleted(&manifests).contains("keep serving the last manifests"));
    }
}
