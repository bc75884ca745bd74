//! The demo side of `meshid up`: the `local` platform's manifests (written
//! only where missing, so the user's edits survive a restart), the workloads'
//! service-account tokens (refreshed like projected tokens), the tiny HTTP
//! echo servers the proxies sit in front of, and the frontend's caller.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::platform::local::{TokenIssuer, TokenRequest};
use crate::platform::Platform;
use crate::shutdown::Shutdown;

/// The node every demo pod runs on.
pub(crate) const NODE: &str = "node-1";
/// The node agent's namespace and service account.
pub(crate) const AGENT_NS: &str = "meshid-system";
/// The node agent's service account.
pub(crate) const AGENT_SA: &str = "meshid-agent";
/// How long a token lives; it is rewritten well before.
const TOKEN_TTL: time::Duration = time::Duration::hours(1);
/// How often tokens are rewritten.
const TOKEN_REFRESH: Duration = Duration::from_secs(600);

/// One demo workload: namespace, service account, pod name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    /// Namespace.
    pub namespace: &'static str,
    /// Service account (also the app's name).
    pub name: &'static str,
    /// Pod name as first written.
    pub pod: &'static str,
}

/// The demo workloads, in display order.
pub(crate) const WORKLOADS: [Workload; 3] = [
    Workload {
        namespace: "default",
        name: "frontend",
        pod: "frontend-5d9c7b6f4-k2x8p",
    },
    Workload {
        namespace: "default",
        name: "backend",
        pod: "backend-7f8d9c5b6-q4w7z",
    },
    Workload {
        namespace: "shop",
        name: "cart",
        pod: "cart-6b7c8d9f5-m3n5r",
    },
];

/// The agent's pod name as first written.
const AGENT_POD: &str = "meshid-agent-node-1";

fn random_uid() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| anyhow::anyhow!("no randomness for a pod uid"))?;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn pod_yaml(ns: &str, name: &str, sa: &str, app: &str) -> anyhow::Result<String> {
    Ok(format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\n  \
         labels:\n    app: {app}\nspec:\n  nodeName: {NODE}\n  serviceAccountName: {sa}\n  \
         containers:\n  - name: {app}\n    image: meshid-demo/{app}\nstatus:\n  phase: Running\n",
        uid = random_uid()?
    ))
}

fn peer_authentication_yaml(ns: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  \
         namespace: {ns}\nspec:\n  mtls:\n    mode: PERMISSIVE\n"
    )
}

/// Writes the demo manifests that are missing from `dir`; returns the files written.
pub(crate) fn write_manifests(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    crate::secret_file::ensure_private_dir(dir)
        .with_context(|| format!("cannot create the manifest directory {}", dir.display()))?;
    let mut files: Vec<(String, String)> = Vec::new();
    let mut namespaces = String::new();
    for ns in ["default", "shop", AGENT_NS] {
        namespaces.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        ));
        files.push((
            format!("peerauthentication-{ns}.yaml"),
            peer_authentication_yaml(ns),
        ));
    }
    files.push(("namespaces.yaml".to_owned(), namespaces));
    let mut accounts = format!(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {AGENT_SA}\n  namespace: {AGENT_NS}\n"
    );
    for w in WORKLOADS {
        accounts.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {}\n  namespace: {}\n",
            w.name, w.namespace
        ));
        files.push((
            format!("pod-{}-{}.yaml", w.namespace, w.name),
            pod_yaml(w.namespace, w.pod, w.name, w.name)?,
        ));
    }
    accounts.push_str(
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: client\n  namespace: default\n",
    );
    files.push(("serviceaccounts.yaml".to_owned(), accounts));
    // A pod for the user's own Workload API clients: the agent attests local
    // processes by uid. The proxies share that uid but send their pods'
    // tokens, which the agent honours before peer credentials.
    if let Some(uid) = crate::proc_self::effective_uid() {
        let pod = pod_yaml("default", "client-0", "client", "client")?.replace(
            "  labels:\n",
            &format!("  annotations:\n    meshid.io/unix-uid: \"{uid}\"\n  labels:\n"),
        );
        files.push(("pod-default-client.yaml".to_owned(), pod));
    }
    files.push((
        format!("pod-{AGENT_NS}-{AGENT_SA}.yaml"),
        pod_yaml(AGENT_NS, AGENT_POD, AGENT_SA, AGENT_SA)?,
    ));
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        if path.exists() {
            continue;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write the manifest {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Issues a token for the running pod of `ns/sa` on [`NODE`] (looked up in
/// the manifests, so edited pod names and uids are honoured) into `path`.
pub(crate) fn write_token(
    issuer: &TokenIssuer,
    platform: &dyn Platform,
    ns: &str,
    sa: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let pods = platform.pods_for_service_account(ns, sa);
    let Some(pod) = pods
        .into_iter()
        .find(|p| p.is_running() && p.node_name.as_deref() == Some(NODE))
    else {
        bail!("no running pod of service account {ns}/{sa} on {NODE} in the manifests");
    };
    let request = TokenRequest {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
        pod: Some((pod.name, pod.uid)),
        node: Some((NODE.to_owned(), None)),
        audiences: vec!["istio-ca".to_owned()],
        ttl: TOKEN_TTL,
    };
    let token = issuer.issue(&request, time::OffsetDateTime::now_utc())?;
    crate::secret_file::write_secret(path, token.as_bytes())
        .with_context(|| format!("writing the token {}", path.display()))
}

/// Rewrites every `(ns, sa, path)` token every few minutes until shutdown.
pub(crate) fn keep_tokens_fresh(
    issuer: TokenIssuer,
    platform: Arc<dyn Platform>,
    tokens: Vec<(String, String, PathBuf)>,
    shutdown: Shutdown,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(TOKEN_REFRESH) => {}
            }
            for (ns, sa, path) in &tokens {
                if let Err(e) = write_token(&issuer, platform.as_ref(), ns, sa, path) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot refresh a demo token");
                }
            }
        }
    });
}

/// Starts an HTTP/1.1 echo server on 127.0.0.1 answering `NAME: REQUEST-LINE`.
pub(crate) async fn echo_server(
    name: &'static str,
    shutdown: &Shutdown,
) -> anyhow::Result<SocketAddr> {
    echo_server_on(name, SocketAddr::from(([127, 0, 0, 1], 0)), shutdown).await
}

/// [`echo_server`] on `listen`.
pub(crate) async fn echo_server_on(
    name: &'static str,
    listen: SocketAddr,
    shutdown: &Shutdown,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding an echo server on {listen}"))?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.triggered() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            tokio::spawn(echo(name, stream));
        }
    });
    Ok(addr)
}

async fn echo(name: &'static str, stream: TcpStream) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        let mut close = false;
        let mut line = String::new();
        loop {
            line.clear();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if request_line.is_empty() {
                request_line = line.trim_end().to_owned();
            }
            close |= line.to_ascii_lowercase().starts_with("connection: close");
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let body = format!("{name}: {request_line}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// One GET on a new connection to `addr`; the body, or why there is none.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&got).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.trim().to_owned()),
            _ if text.is_empty() => Err("connection closed without an answer".to_owned()),
            _ => Err(format!("unexpected answer {text:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer within 3 s".to_owned()))
}

/// What the frontend's caller has seen so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallLog {
    /// The last result: body or error.
    pub last: Option<Result<String, String>>,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub failed: u64,
    /// When the first call succeeded, measured from `up`'s start.
    pub first_ok: Option<Duration>,
}

/// Calls `via` (the frontend's outbound route to the backend) every second.
pub(crate) fn call_every_second(
    via: SocketAddr,
    started: tokio::time::Instant,
    log: Arc<Mutex<CallLog>>,
    shutdown: &Shutdown,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut n: u64 = 0;
        loop {
            n += 1;
            let result = get(via, &format!("/call/{n}")).await;
            if let Ok(mut log) = log.lock() {
                match &result {
                    Ok(_) => {
                        log.ok += 1;
                        log.first_ok.get_or_insert_with(|| started.elapsed());
                    }
                    Err(_) => log.failed += 1,
                }
                log.last = Some(result);
            }
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::local::LocalPlatform;
    use crate::policy::{report, MtlsMode, Policies, DEFAULT_ROOT_NAMESPACE};

    #[test]
    fn manifests_load_and_a_second_write_keeps_the_users_edits() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let manifests = data.join("manifests");
        assert!(write_manifests(&manifests).unwrap().len() >= 8);
        let issuer = TokenIssuer::load_or_create(data).unwrap();
        let open = || {
            LocalPlatform::open(crate::platform::local::LocalConfig::new(
                &manifests,
                issuer.verifier(),
                crate::time::system_clock(),
            ))
            .unwrap()
        };
        let platform = open();
        for w in WORKLOADS {
            let pods = platform.pods_for_service_account(w.namespace, w.name);
            assert_eq!(pods.len(), 1, "{}", w.name);
            assert_eq!(pods[0].node_name.as_deref(), Some(NODE));
            let token = data.join(format!("{}.token", w.name));
            write_token(&issuer, platform.as_ref(), w.namespace, w.name, &token).unwrap();
            assert!(!std::fs::read(&token).unwrap().ends_with(b"\n"));
        }
        let policies = Policies::new(DEFAULT_ROOT_NAMESPACE, platform.peer_authentications());
        let cart = report(&policies, platform.pods_for_service_account("shop", "cart"));
        assert_eq!(cart[0].effective.mode, MtlsMode::Permissive);

        let edited = manifests.join("peerauthentication-default.yaml");
        let text = std::fs::read_to_string(&edited)
            .unwrap()
            .replace("PERMISSIVE", "STRICT");
        std::fs::write(&edited, &text).unwrap();
        std::fs::remove_file(manifests.join("pod-shop-cart.yaml")).unwrap();
        let rewritten = write_manifests(&manifests).unwrap();
        assert_eq!(rewritten, vec![manifests.join("pod-shop-cart.yaml")]);
        assert_eq!(std::fs::read_to_string(&edited).unwrap(), text);
        let platform = open();
        let policies = Policies::new(DEFAULT_ROOT_NAMESPACE, platform.peer_authentications());
        let backend = report(
            &policies,
            platform.pods_for_service_account("default", "backend"),
        );
        assert_eq!(backend[0].effective.mode, MtlsMode::Strict);
    }
}
