//! The live status of `meshid up`: plain lines every few seconds (no TUI),
//! read from the same places a user would look: the audit store (identities
//! issued and their expiry), the manifests resolved by the policy engine
//! (each workload's effective mTLS mode), the caller's log and the proxies'
//! metrics (traffic, the peer identity the backend saw, refusals).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::Mesh;
use crate::audit::{AuditBackend, AuditQuery, AuditRecord, Outcome, SqliteBackend};
use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig};
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::platform::Platform;
use crate::policy::{Policies, DEFAULT_ROOT_NAMESPACE};
use crate::shutdown::Shutdown;
use crate::time::system_clock;

/// How often the status is printed.
const EVERY: Duration = Duration::from_secs(5);

/// Prints the status every few seconds until shutdown.
pub(crate) async fn run(mesh: &Mesh, shutdown: &Shutdown) {
    // Let the first calls through the mesh happen before the first report.
    tokio::select! {
        () = shutdown.triggered() => return,
        () = tokio::time::sleep(Duration::from_millis(1500)) => {}
    }
    let mut last_modes = None;
    loop {
        for line in lines(mesh, &mut last_modes).await {
            println!("{line}");
        }
        println!();
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

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
/// says which demo workloads the new directory lacks a pod for.
pub(crate) fn watch_manifest_dir(manifests: std::path::PathBuf, shutdown: &Shutdown) {
    let stop = shutdown.clone();
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
        }
    });
}

/// What the components find in a manifest directory that is back.
fn manifests_back(manifests: &Path) -> String {
    let dir = manifests.display();
    match open_manifests(manifests) {
        Ok(platform) => {
            let missing: Vec<String> = super::WORKLOADS
                .iter()
                .filter(|w| running_pod(platform.as_ref(), w).is_none())
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

/// The manifests, read as the components read them (tokens are not verified here).
fn open_manifests(manifests: &Path) -> Result<std::sync::Arc<LocalPlatform>, String> {
    let verifier = JwtVerifier::new(JwtVerifierConfig::new(jsonwebtoken::jwk::JwkSet {
        keys: Vec::new(),
    }));
    LocalPlatform::open(LocalConfig::new(manifests, verifier, system_clock()))
        .map_err(|e| e.to_string())
}

/// The running pod of a demo workload, if the manifests have one.
fn running_pod(platform: &LocalPlatform, w: &super::Workload) -> Option<crate::platform::Pod> {
    platform
        .pods_for_service_account(w.namespace, w.name)
        .into_iter()
        .find(|p| p.is_running())
}

/// The newest issued record of each identity since `up` started, by identity.
pub(crate) async fn issued(mesh: &Mesh) -> Result<Vec<AuditRecord>, String> {
    let path = mesh.data_dir.join("audit.db");
    let since = mesh.started_at;
    tokio::task::spawn_blocking(move || read_audit(&path, since, Some(Outcome::Issued)))
        .await
        .map_err(|e| e.to_string())?
}

/// Audit records since `since` (oldest first), optionally of one outcome.
pub(crate) fn read_audit(
    path: &Path,
    since: time::OffsetDateTime,
    outcome: Option<Outcome>,
) -> Result<Vec<AuditRecord>, String> {
    let mut store = SqliteBackend::open_read_only(path).map_err(|e| e.to_string())?;
    store
        .query(&AuditQuery {
            since: Some(since),
            outcome,
            ..AuditQuery::default()
        })
        .map_err(|e| e.to_string())
}

/// The effective mode of each demo workload, or the manifests' error. A
/// workload whose pod is gone from the manifests says so: the agent no
/// longer attests its proxy, which keeps its certificate until it expires.
pub(crate) fn modes(manifests: &Path) -> Result<Vec<(String, String)>, String> {
    let platform = open_manifests(manifests)?;
    let policies = Policies::new(DEFAULT_ROOT_NAMESPACE, platform.peer_authentications());
    Ok(super::WORKLOADS
        .iter()
        .map(|w| {
            let pod = running_pod(platform.as_ref(), w);
            let missing = if pod.is_none() {
                format!(
                    ", NO running pod of {}/{} in the manifests: its proxy keeps its certificate until it expires",
                    w.namespace, w.name
                )
            } else {
                String::new()
            };
            let labels = pod.map(|p| p.labels).unwrap_or_default();
            let r = policies.resolve(w.namespace, &labels);
            (
                w.name.to_owned(),
                format!("{} ({}){missing}", r.effective.mode, r.effective.source),
            )
        })
        .collect())
}

/// `meshid_proxy_connections_total` of one proxy, inbound, as
/// (outcome, source principal) → count.
pub(crate) fn inbound_counts(registry: &prometheus::Registry) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for family in registry.gather() {
        if family.name() != "meshid_proxy_connections_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            if label("direction") != "inbound" {
                continue;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = m.get_counter().get_value() as u64;
            *out.entry((label("outcome"), label("source_principal")))
                .or_insert(0) += n;
        }
    }
    out
}

/// The principal the backend's proxy verified most often on allowed connections.
pub(crate) fn backend_saw(mesh: &Mesh) -> Option<String> {
    let backend = mesh.proxy("backend")?;
    inbound_counts(&backend.registry)
        .into_iter()
        .filter(|((outcome, p), _)| outcome == "allowed" && !p.is_empty())
        .max_by_key(|(_, n)| *n)
        .map(|((_, p), _)| p)
}

/// One status report; `last_modes` remembers the modes line for when the
/// manifests cannot be read.
async fn lines(mesh: &Mesh, last_modes: &mut Option<String>) -> Vec<String> {
    let now = time::OffsetDateTime::now_utc();
    let mut out = vec![format!(
        "── {} (up {}s)",
        now.format(time::macros::format_description!(
            "[hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_default(),
        mesh.started.elapsed().as_secs()
    )];
    match issued(mesh).await {
        Ok(records) => {
            let mut newest: BTreeMap<String, &AuditRecord> = BTreeMap::new();
            for r in &records {
                if let Some(id) = &r.granted_identity {
                    newest.insert(id.clone(), r);
                }
            }
            out.push(format!(
                "identities  ({} certificates issued since start)",
                records.len()
            ));
            for (id, r) in newest {
                let left = r.not_after.map_or(0, |t| (t - now).whole_seconds());
                let what = if id.ends_with("/sa/meshid-ca") {
                    "  (CA serving certificate)"
                } else {
                    ""
                };
                out.push(format!(
                    "  {id}  serial {}  expires in {left}s{what}",
                    r.serial.as_deref().map_or("?", |s| &s[..s.len().min(12)])
                ));
            }
        }
        Err(e) => out.push(format!("identities  (audit store not readable: {e})")),
    }
    match modes(&mesh.manifests) {
        Ok(modes) => {
            let shown: Vec<String> = modes.iter().map(|(n, m)| format!("{n} {m}")).collect();
            let shown = shown.join(" | ");
            out.push(format!("mTLS modes  {shown}"));
            *last_modes = Some(shown);
        }
        Err(_) if !mesh.manifests.is_dir() => {
            if let Some(shown) = last_modes.as_deref() {
                out.push(format!("mTLS modes  {shown} (as last read)"));
            }
            out.push(format!(
                "manifests   {}",
                manifests_deleted(&mesh.manifests)
            ));
        }
        Err(e) => out.push(format!(
            "mTLS modes  manifests invalid, the last good state keeps serving: {e}"
        )),
    }
    let calls = mesh.calls.lock().map(|c| c.clone()).unwrap_or_default();
    let last = match &calls.last {
        Some(Ok(body)) => format!("ok \"{body}\""),
        Some(Err(e)) => format!("FAILED {e}"),
        None => "none yet".to_owned(),
    };
    out.push(format!(
        "traffic     frontend → backend (mTLS): {} ok, {} failed; last: {last}; backend saw peer {}",
        calls.ok,
        calls.failed,
        backend_saw(mesh).unwrap_or_else(|| "-".to_owned())
    ));
    if let Some(first) = calls.first_ok {
        out.push(format!(
            "            first successful mTLS call {} ms after start",
            first.as_millis()
        ));
    }
    let refused: Vec<String> = mesh
        .proxies
        .iter()
        .map(|p| {
            let n: u64 = inbound_counts(&p.registry)
                .into_iter()
                .filter(|((o, _), _)| o == "refused" || o == "handshake_failed")
                .map(|(_, n)| n)
                .sum();
            format!("{} {n}", p.workload.name)
        })
        .collect();
    let path = mesh.data_dir.join("audit.db");
    let since = mesh.started_at;
    let ca_refused = tokio::task::spawn_blocking(move || {
        read_audit(&path, since, Some(Outcome::Refused)).map(|r| r.len())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .map_or_else(|| "?".to_owned(), |n| n.to_string());
    out.push(format!(
        "refusals    inbound refused by proxies: {}; refused by the CA (audited): {ca_refused}",
        refused.join(", ")
    ));
    out
}

/// Where everything lives, and the things to try, with the real ports.
pub(crate) fn print_banner(mesh: &Mesh, default_dir: bool) {
    let (manifests_flag, data_flag) = if default_dir {
        (String::new(), String::new())
    } else {
        (
            format!(" --manifests {}", mesh.manifests.display()),
            format!(" --data-dir {}", mesh.data_dir.display()),
        )
    };
    let backend = mesh.inbound_of("backend").map_or(0, |a| a.port());
    let via = mesh.via_frontend().map_or(0, |a| a.port());
    println!("meshid up: the mesh is running on 127.0.0.1 (Ctrl-C to stop)\n");
    println!("  data dir       {}", mesh.data_dir.display());
    println!(
        "  manifests      {}  (real Kubernetes YAML: edit it, changes apply live)",
        mesh.manifests.display()
    );
    println!(
        "  agent socket   SPIFFE_ENDPOINT_SOCKET=unix://{}",
        mesh.socket.display()
    );
    println!(
        "  CA             https://{} (TLS; root in {}/root-cert.pem)",
        mesh.ca_addr,
        mesh.data_dir.display()
    );
    for p in &mesh.proxies {
        let inbound = p
            .running
            .inbound
            .first()
            .map_or_else(String::new, ToString::to_string);
        println!(
            "  {:<14} inbound {inbound} ({})",
            p.workload.name, p.running.identity
        );
    }
    println!("  frontend → backend through the mesh: 127.0.0.1:{via} (called every second)");
    for (name, addr) in &mesh.metrics {
        println!("  metrics        http://{addr}/metrics  ({name})");
    }
    println!(
        "  logs           warnings on stderr (everything: RUST_LOG=info meshid up 2>meshid-up.log)"
    );
    println!("\nThings to try (in another terminal, from this directory):");
    println!("  meshid mtls set-mode -n default STRICT{manifests_flag}");
    println!(
        "  curl http://127.0.0.1:{backend}/     # plaintext to the backend: refused once STRICT"
    );
    println!(
        "  curl http://127.0.0.1:{via}/     # through the frontend's proxy: mTLS, still works"
    );
    println!("  meshid mtls status{manifests_flag}");
    println!(
        "  meshid mtls status --agent-socket {}   # the same, as the node agent resolved it",
        mesh.socket.display()
    );
    println!("  meshid audit list{data_flag}");
    println!(
        "  SPIFFE_ENDPOINT_SOCKET=unix://{} python3 -c 'from spiffe import WorkloadApiClient; print(WorkloadApiClient().fetch_x509_context().default_svid.spiffe_id)'   # py-spiffe (pip install spiffe); you are the pod default/client",
        mesh.socket.display()
    );
    if let Some((_, addr)) = mesh.metrics.first() {
        println!("  curl http://{addr}/metrics");
    }
    println!("  openssl s_client -connect 127.0.0.1:{backend}   # STRICT asks for a client certificate\n");
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
        let modes = modes(&empty).unwrap();
        assert!(modes[1].1.contains("NO running pod of default/backend"));

        std::fs::write(empty.join("broken.yaml"), "kind: Pod\nmetadata: [").unwrap();
        assert!(manifests_back(&empty).contains("does not load"));
        assert!(manifests_deleted(&manifests).contains("keep serving the last manifests"));
    }
}
