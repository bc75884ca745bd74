//! Shared helpers for the end-to-end tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshid::audit::{AuditBackend, AuditQuery, AuditRecord, SqliteBackend};
use meshid::test_helpers::{CaProcess, InProcessCa, TestEnv};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_meshid");

pub(crate) fn bin() -> &'static Path {
    Path::new(BIN)
}

/// A CA with one pod `default/web-1` (sa `web`, node `node-a`) and the agent
/// account `meshid-system/meshid-agent` trusted, built in this process.
pub(crate) fn ca_with_web_pod(extra: &[&str]) -> (TestEnv, InProcessCa) {
    let env = web_pod_env();
    let ca = InProcessCa::with_flags(&env, &trusting_the_agent(extra)).unwrap();
    (env, ca)
}

/// [`ca_with_web_pod`] as a child process, for tests of signals and logs.
pub(crate) fn ca_process_with_web_pod(extra: &[&str]) -> (TestEnv, CaProcess) {
    let env = web_pod_env();
    let ca = CaProcess::spawn(bin(), &env, &trusting_the_agent(extra)).unwrap();
    (env, ca)
}

fn web_pod_env() -> TestEnv {
    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    env.add_node_agent("node-a");
    env
}

pub(crate) fn trusting_the_agent<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--trusted-node-accounts", "meshid-system/meshid-agent"];
    args.extend_from_slice(extra);
    args
}

/// A token of `default/web` bound to pod `web-1` on `node-a` (the pod of
/// [`ca_with_web_pod`]).
pub(crate) fn web_token(env: &TestEnv) -> String {
    env.token(
        "default",
        "web",
        Some(("web-1", "uid-web-1")),
        Some("node-a"),
    )
}

/// All audit rows, read the way `meshid audit list` reads them.
pub(crate) fn audit_rows(env: &TestEnv) -> Vec<AuditRecord> {
    let mut store = SqliteBackend::open_read_only(&env.data_dir.join("audit.db")).unwrap();
    store.query(&AuditQuery::default()).unwrap()
}

/// The newest audit row whose reason or identity mentions `needle`.
pub(crate) fn last_refusal(env: &TestEnv) -> AuditRecord {
    audit_rows(env)
        .into_iter()
        .rev()
        .find(|r| r.outcome == meshid::audit::Outcome::Refused)
        .expect("a refusal was audited")
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CSR made by openssl for `key_args` (e.g. `rsa:1024`) with extra `-addext` values.
pub(crate) fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], addext: &[&str]) -> String {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec![
        "req", "-new", "-nodes", "-subj", "/", "-keyout", &key, "-out", &csr,
    ];
    args.extend_from_slice(newkey);
    for ext in addext {
        args.push("-addext");
        args.push(ext);
    }
    openssl(dir, &args);
    std::fs::read_to_string(dir.join(csr)).unwrap()
}

/// Writes `text` to `dir/name` and returns the path.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A gRPC channel over the agent's Unix socket.
pub(crate) async fn uds_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://agent.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// `meshid mtls set-mode -n <namespace> <mode> --manifests <manifests>`,
/// which must succeed.
pub(crate) fn set_mode(manifests: &Path, namespace: &str, mode: &str) {
    let out = std::process::Command::new(BIN)
        .args(["mtls", "set-mode", "-n", namespace, mode, "--manifests"])
        .arg(manifests)
        .env_remove("MESHID_ROOT_NAMESPACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "set-mode {namespace} {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `check` holds, for state that lives in other processes
/// (a mode change travelling manifests → agent → proxy, a proxy in another
/// network namespace): nothing there can be subscribed to, so it is asked
/// every 100 ms; panics after `timeout` naming `what`.
pub(crate) fn poll_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `child` to exit (the exit is the event: `wait` on a thread,
/// its answer over a channel); kills it and panics after `timeout`.
pub(crate) fn exit_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let pid = child.id();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("process {pid} still running {timeout:?} after it was asked to stop");
            }
        }
    })
}
