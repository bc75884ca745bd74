//! The live status of `meshid up`: plain lines every few seconds and at
//! once when the manifests change or their directory goes (no TUI),
//! read through the same library queries a user's commands go through: the
//! audit store as `meshid audit list` reads it ([`read_sqlite`]), the per-pod
//! mTLS report as `meshid mtls status` builds it ([`report`]), the proxies'
//! connection counters ([`ProxyMetrics::read_connections`]) and the caller's log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::manifest_watch::manifests_deleted;
use super::Mesh;
use crate::audit::{read_sqlite, AuditQuery, AuditRecord, Outcome};
use crate::platform::local::Manifests;
use crate::platform::Pod;
use crate::policy::{report, Policies, Workload, DEFAULT_ROOT_NAMESPACE};
use crate::proxy::metrics::ProxyMetrics;
use crate::shutdown::Shutdown;

/// How often the status is printed.
const EVERY: Duration = Duration::from_secs(5);

/// Prints the status every few seconds, and when the platform reads a
/// change or the manifest directory goes or comes back, until shutdown.
pub(crate) async fn run(mesh: &Mesh, shutdown: &Shutdown) {
    let mut present = mesh.manifests_present.clone();
    let mut changes = mesh.platform_changes.clone();
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
            Ok(()) = present.changed() => {}
            Ok(()) = changes.changed() => {}
        }
    }
}

/// The running pod of a demo workload, if the manifests have one.
pub(crate) fn running_pod(manifests: &Manifests, w: &super::Workload) -> Option<Pod> {
    manifests
        .pods_for_service_account(w.namespace, w.name)
        .into_iter()
        .find(|p| p.is_running())
}

/// The newest issued record of each identity since `up` started, by identity.
pub(crate) async fn issued(mesh: &Mesh) -> Result<Vec<AuditRecord>, String> {
    audit_since_start(mesh, Outcome::Issued).await
}

/// Audit records of one outcome since `up` started (oldest first).
async fn audit_since_start(mesh: &Mesh, outcome: Outcome) -> Result<Vec<AuditRecord>, String> {
    let path = mesh.data_dir.join("audit.db");
    let query = AuditQuery {
        since: Some(mesh.started_at),
        outcome: Some(outcome),
        ..AuditQuery::default()
    };
    tokio::task::spawn_blocking(move || {
        read_sqlite(&path, &query).map_err(|e| e.audit_error().to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A demo workload in the report: its running pod's labels, or none when the
/// pod is gone from the manifests.
struct DemoPod {
    workload: &'static super::Workload,
    pod: Option<Pod>,
    labels: BTreeMap<String, String>,
}

impl Workload for DemoPod {
    fn namespace(&self) -> &str {
        self.workload.namespace
    }
    fn name(&self) -> &str {
        self.workload.name
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// The effective mode of each demo workload, or the manifests' error. A
/// workload whose pod is gone from the manifests says so: the agent no
/// longer attests its proxy, which keeps its certificate until it expires.
pub(crate) fn modes(manifests: &Path) -> Result<Vec<(String, String)>, String> {
    let manifests = Manifests::read(manifests).map_err(|e| e.to_string())?;
    let policies = Policies::new(DEFAULT_ROOT_NAMESPACE, manifests.peer_authentications());
    let pods = super::WORKLOADS.iter().map(|workload| {
        let pod = running_pod(&manifests, workload);
        let labels = pod.as_ref().map(|p| p.labels.clone()).unwrap_or_default();
        DemoPod {
            workload,
            pod,
            labels,
        }
    });
    let report = report(&policies, pods);
    Ok(super::WORKLOADS
        .iter()
        .filter_map(|w| report.iter().find(|m| m.pod.workload.name == w.name))
        .map(|m| {
            let missing = if m.pod.pod.is_none() {
                format!(
                    ", NO running pod of {}/{} in the manifests: its proxy keeps its certificate until it expires",
                    m.pod.workload.namespace, m.pod.workload.name
                )
            } else {
                String::new()
            };
            (
                m.pod.workload.name.to_owned(),
                format!("{} ({}){missing}", m.effective.mode, m.effective.source),
            )
        })
        .collect())
}

/// The inbound connections of one proxy, as (outcome, source principal) → count.
fn inbound_counts(registry: &prometheus::Registry) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for c in ProxyMetrics::read_connections(registry) {
        if c.direction == "inbound" {
            *out.entry((c.outcome, c.source_principal)).or_insert(0) += c.count;
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
    let ca_refused = audit_since_start(mesh, Outcome::Refused)
        .await
        .map_or_else(|_| "?".to_owned(), |r| r.len().to_string());
    out.push(format!(
        "refusals    inbound refused by proxies: {}; refused by the CA (audited): {ca_refused}",
        refused.join(", ")
    ));
    out
}
