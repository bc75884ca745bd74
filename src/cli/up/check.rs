//! `meshid up --check`: drives the scenario a newcomer would try by hand and
//! prints one `PASS|FAIL <step>: <detail>` line per step. The mode switch is
//! made by running `meshid mtls set-mode` as another process, as the user would.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::status::{backend_saw, issued};
use super::{demo, Mesh};
use crate::shutdown::Shutdown;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";

struct Report {
    failed: usize,
    total: usize,
}

impl Report {
    fn step(&mut self, name: &str, result: Result<String, String>) -> bool {
        self.total += 1;
        match result {
            Ok(detail) => {
                println!("PASS {name}: {detail}");
                true
            }
            Err(detail) => {
                self.failed += 1;
                println!("FAIL {name}: {detail}");
                false
            }
        }
    }
}

/// Polls `f` every 200 ms until it returns `Ok` or `within` passes (then its last error).
async fn until<F, Fut>(within: Duration, mut f: F) -> Result<String, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let start = Instant::now();
    loop {
        let result = f().await;
        if result.is_ok() || start.elapsed() >= within {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest serial the audit store holds for `identity` since `up` started.
async fn newest_serial(mesh: &Mesh, identity: &str) -> Result<String, String> {
    issued(mesh)
        .await?
        .iter()
        .rev()
        .find(|r| r.granted_identity.as_deref() == Some(identity))
        .and_then(|r| r.serial.clone())
        .ok_or_else(|| format!("no certificate issued to {identity} in the audit store"))
}

async fn mtls_call(mesh: &Mesh) -> Result<String, String> {
    let via = mesh.via_frontend().ok_or("no frontend outbound route")?;
    let body = demo::get(via, "/check").await?;
    if body.starts_with("backend:") {
        Ok(format!("via {via}: {body:?}"))
    } else {
        Err(format!("via {via}: answer from the wrong app: {body:?}"))
    }
}

/// Runs every step; `Err` if any failed.
pub(crate) async fn run(mesh: &Mesh, shutdown: &Shutdown) -> anyhow::Result<()> {
    let mut report = Report {
        failed: 0,
        total: 0,
    };
    let ids: Vec<String> = super::WORKLOADS
        .iter()
        .map(|w| format!("spiffe://cluster.local/ns/{}/sa/{}", w.namespace, w.name))
        .collect();
    let audited = until(Duration::from_secs(5), || async {
        let records = issued(mesh).await?;
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| {
                !records
                    .iter()
                    .any(|r| r.granted_identity.as_ref() == Some(*id))
            })
            .collect();
        if missing.is_empty() {
            Ok(format!(
                "{} certificates issued and audited for {}",
                records.len(),
                ids.join(", ")
            ))
        } else {
            Err(format!("no audit row for {missing:?}"))
        }
    })
    .await;
    report.step("CA issued certificates", audited);

    let delivered: Vec<String> = mesh
        .proxies
        .iter()
        .map(|p| format!("{} proxy got {}", p.workload.name, p.running.identity))
        .collect();
    let all_right = mesh
        .proxies
        .iter()
        .zip(&ids)
        .all(|(p, id)| p.running.identity.to_string() == *id);
    report.step(
        "agent delivered over SDS",
        if all_right {
            Ok(delivered.join(", "))
        } else {
            Err(delivered.join(", "))
        },
    );

    let call = until(Duration::from_secs(5), || mtls_call(mesh)).await;
    let first = mesh.calls.lock().ok().and_then(|c| c.first_ok);
    let call = call.and_then(|detail| match backend_saw(mesh) {
        Some(peer) if peer == FRONTEND => Ok(format!(
            "{detail}; backend verified peer {peer}; first call {} ms after start",
            first.map_or(0, |d| d.as_millis())
        )),
        other => Err(format!(
            "{detail}; but the backend's proxy saw peer {other:?}, not {FRONTEND}"
        )),
    });
    report.step("mTLS call frontend → backend", call);

    let set_mode = run_set_mode(mesh).await;
    let set = report.step(
        "set-mode STRICT (meshid mtls set-mode -n default STRICT)",
        set_mode,
    );

    let backend = mesh.inbound_of("backend");
    let plain = match (set, backend) {
        (true, Some(addr)) => {
            let t = Instant::now();
            until(Duration::from_secs(3), || async {
                match demo::get(addr, "/plaintext").await {
                    Ok(body) => Err(format!("plaintext to {addr} still answered: {body:?}")),
                    Err(e) => Ok(format!("plaintext to {addr} refused ({e})")),
                }
            })
            .await
            .map(|d| format!("{d} {} ms after the switch", t.elapsed().as_millis()))
        }
        _ => Err("skipped: no STRICT mode or no backend inbound".to_owned()),
    };
    report.step("plaintext to backend refused", plain);
    report.step(
        "mTLS via frontend still works",
        until(Duration::from_secs(3), || mtls_call(mesh)).await,
    );

    let rotation = rotation(mesh, shutdown).await;
    report.step("rotation observed", rotation);

    let rows = issued(mesh).await.and_then(|r| {
        if r.len() > ids.len() {
            Ok(format!(
                "{} issued rows since start in {}/audit.db",
                r.len(),
                mesh.data_dir.display()
            ))
        } else {
            Err(format!("only {} issued rows", r.len()))
        }
    });
    report.step("audit rows present", rows);
    if report.failed > 0 {
        bail!("{} of {} steps failed", report.failed, report.total);
    }
    println!("all {} steps passed", report.total);
    Ok(())
}

async fn run_set_mode(mesh: &Mesh) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding our own binary: {e}"))?;
    let manifests = mesh.manifests.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["mtls", "set-mode", "-n", "default", "STRICT", "--manifests"])
            .arg(&manifests)
            .env_remove("MESHID_ROOT_NAMESPACE")
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running meshid mtls set-mode: {e}"))?;
    // The logs (stderr) only matter when it failed.
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    let text = String::from_utf8_lossy(text).trim().replace('\n', "; ");
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A new certificate for the backend (a new serial in the audit store),
/// and the mesh still carrying calls afterwards.
async fn rotation(mesh: &Mesh, shutdown: &Shutdown) -> Result<String, String> {
    let before = newest_serial(mesh, BACKEND).await?;
    let t = Instant::now();
    let within = mesh.ttl.saturating_mul(2) + Duration::from_secs(5);
    let after = until(within, || async {
        if shutdown.is_triggered() {
            return Ok(String::new());
        }
        let now = newest_serial(mesh, BACKEND).await?;
        if now == before {
            Err(format!(
                "serial still {before} after {} s (ttl {:?})",
                t.elapsed().as_secs(),
                mesh.ttl
            ))
        } else {
            Ok(now)
        }
    })
    .await?;
    let call = until(Duration::from_secs(3), || mtls_call(mesh)).await?;
    Ok(format!(
        "{BACKEND}: serial {before} → {after} after {:.1} s; {call}",
        t.elapsed().as_secs_f64()
    ))
}
