//! `meshid up` as a real process: `--check` passes every step, and a running
//! `up` takes `meshid mtls set-mode -n default STRICT` from another process
//! (plaintext to the backend refused, mTLS through the frontend still
//! flowing), refuses a second `up` on the same ports or socket (naming the
//! pid that holds them), keeps serving when its manifest directory is
//! deleted (and says so), and stops on SIGTERM.
//! Each test moves every port with the hidden `--port-base` so that tests
//! running in parallel do not collide.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::BIN;

/// A port base in 20000..31000, so that BASE+216 stays below Linux's
/// ephemeral range (32768..) and no client socket of a parallel test holds
/// one of our ports; from our pid, so that concurrent test runs differ.
/// Each `up` uses BASE+1 to BASE+216, so `slot` (0 to 4) moves by 300 to
/// keep this file's `up`s apart. (A spread of 10 steps of 1,500 reached
/// 34,616, inside the ephemeral range: a test failed on a port a client
/// socket held.)
fn port_base(slot: u16) -> u16 {
    let spread = u16::try_from(std::process::id().wrapping_mul(7919) % 8).unwrap();
    20000 + spread * 1400 + slot * 300
}

#[test]
fn up_check_passes_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = port_base(0).to_string();
    let out = Command::new(BIN)
        .args(["up", "--check", "--port-base", &base, "--data-dir"])
        .arg(&data)
        .env("MESHID_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "up --check failed:\n{stdout}\n{stderr}"
    );
    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .collect();
    assert!(steps.len() >= 8, "too few steps:\n{stdout}");
    assert!(steps.iter().all(|l| l.starts_with("PASS ")), "{stdout}");
    for step in [
        "CA issued certificates",
        "agent delivered",
        "mTLS call frontend → backend",
        "set-mode STRICT",
        "plaintext to backend refused",
        "mTLS via frontend still works",
        "rotation observed",
        "audit rows present",
    ] {
        assert!(
            steps.iter().any(|l| l.contains(step)),
            "no step {step:?}:\n{stdout}"
        );
    }
    // The given data dir is kept, with the audit store and manifests.
    assert!(data.join("audit.db").is_file());
    assert!(data
        .join("manifests/peerauthentication-default.yaml")
        .is_file());
}

/// One GET; the body on a 200, `Err` if refused or closed without an answer.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("no answer: {text:?}")),
    }
}

/// Waits up to 15 s until `f` holds.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    crate::support::poll_until(what, Duration::from_secs(15), f);
}

/// The SPIFFE ID the agent of the `up` in `data` gives us over the Workload API.
fn workload_api_identity(data: &Path) -> String {
    let endpoint = format!("unix://{}", data.join("agent.sock").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let svid = runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(endpoint)
            .await
            .unwrap();
        client.fetch_x509_svid().await.unwrap()
    });
    svid.spiffe_id().to_string()
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn running_up_takes_strict_from_another_process_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = port_base(1);
    let mut child = Up(Command::new(BIN)
        .args(["up", "--port-base", &base.to_string(), "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap())
        .spawn()
        .unwrap());
    // The banner ends with the things to try; read up to them.
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("openssl s_client") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "up ended early:\n{banner}\n{}",
            std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
        );
        banner.push_str(&line);
    }
    let backend = SocketAddr::from(([127, 0, 0, 1], base + 106));
    let via = SocketAddr::from(([127, 0, 0, 1], base + 1));
    assert!(
        banner.contains(&format!("curl http://{backend}/")),
        "{banner}"
    );
    assert!(banner.contains(&format!("curl http://{via}/")), "{banner}");
    // Keep reading the status so that `up` never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));

    eventually("mTLS through the frontend", || {
        get(via).is_ok_and(|b| b.starts_with("backend:"))
    });
    assert!(get(backend).is_ok(), "PERMISSIVE: plaintext allowed");

    // A Workload API client run by the user, as the banner says: it is the
    // pod annotated with our uid, while the proxies (same uid) keep theirs.
    assert_eq!(
        workload_api_identity(&data),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert!(get(via).is_ok_and(|b| b.starts_with("backend:")));

    // A second `up` on the same ports (another data directory, so no up.pid
    // to go by) fails with a clear message that names the port and how to
    // find what holds it.
    let pid = child.0.id();
    let second = Command::new(BIN)
        .args(["up", "--port-base", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("is in use"), "{err}");
    assert!(err.contains("ss -ltnp 'sport = :"), "{err}");
    // The same data directory on other ports: the agent socket is taken.
    let second = Command::new(BIN)
        .args(["up", "--port-base", &port_base(3).to_string(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("agent socket"), "{err}");
    assert!(err.contains(&format!("pid {pid}, from")), "{err}");

    crate::support::set_mode(&data.join("manifests"), "default", "STRICT");
    eventually("plaintext refused", || get(backend).is_err());
    assert!(get(via).is_ok_and(|b| b.starts_with("backend:")));

    let pid = pid.to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = crate::support::exit_within(&mut child.0, Duration::from_secs(8));
    assert!(status.success(), "{status}");
    assert!(!data.join("agent.sock").exists());
    assert!(data.join("audit.db").is_file());
}

/// `up` with its stdout collected by a thread (so it never blocks on a full
/// pipe), once its banner is out; its stderr goes to `log`.
fn spawn_up(data: &Path, base: u16, log: &Path) -> (Up, Arc<Mutex<String>>) {
    let mut child = Up(Command::new(BIN)
        .args(["up", "--port-base", &base.to_string(), "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    eventually("the banner", || {
        seen.lock().unwrap().contains("openssl s_client")
    });
    (child, seen)
}

/// The last status report printed so far (from its `── hh:mm:ss` line on).
fn last_report(stdout: &Mutex<String>) -> String {
    let text = stdout.lock().unwrap();
    text.rsplit_once("── ")
        .map(|(_, last)| last.to_owned())
        .unwrap_or_default()
}

#[test]
fn deleting_the_manifest_directory_keeps_the_mesh_serving_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let manifests = data.join("manifests");
    let log = dir.path().join("up.log");
    let base = port_base(2);
    let (_up, stdout) = spawn_up(&data, base, &log);
    let backend = SocketAddr::from(([127, 0, 0, 1], base + 106));
    let via = SocketAddr::from(([127, 0, 0, 1], base + 1));
    eventually("mTLS through the frontend", || {
        get(via).is_ok_and(|b| b.starts_with("backend:"))
    });
    eventually("a status report with the modes", || {
        last_report(&stdout).contains("mTLS modes  frontend PERMISSIVE")
    });

    let saved = dir.path().join("manifests-saved");
    std::fs::create_dir(&saved).unwrap();
    for entry in std::fs::read_dir(&manifests).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, saved.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_dir_all(&manifests).unwrap();

    // The log says what happened, in words, once.
    let deleted = format!("the manifest directory {} was deleted", manifests.display());
    eventually("the deletion logged", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&deleted))
    });
    // So does the status, with the modes as last read.
    eventually("the deletion in the status", || {
        let report = last_report(&stdout);
        report.contains(&deleted) && report.contains("PERMISSIVE (namespace default/default) | ")
    });
    let report = last_report(&stdout);
    assert!(report.contains("(as last read)"), "{report}");
    assert!(
        report.contains("keep serving the last manifests"),
        "{report}"
    );

    // Traffic, certificates and attestation go on from the last state read.
    assert!(get(via).is_ok_and(|b| b.starts_with("backend:")));
    assert_eq!(
        workload_api_identity(&data),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    let calls = report
        .lines()
        .find(|l| l.starts_with("traffic"))
        .unwrap_or_default();
    assert!(calls.contains("last: ok"), "{report}");

    // Changing policy needs the directory back: the CLI says so.
    let set_mode = |expect_ok: bool| {
        let out = Command::new(BIN)
            .args(["mtls", "set-mode", "-n", "default", "STRICT", "--manifests"])
            .arg(&manifests)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.success(), expect_ok, "{err}");
        err
    };
    assert!(set_mode(false).contains("does not exist"));

    // Put back (in one rename, as the files appear at once): picked up,
    // and a policy change made afterwards reaches the proxies.
    std::fs::rename(&saved, &manifests).unwrap();
    eventually("the return logged", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("is back"))
    });
    eventually("the status reads the directory again", || {
        let report = last_report(&stdout);
        report.contains("mTLS modes  frontend PERMISSIVE") && !report.contains("as last read")
    });
    set_mode(true);
    eventually("plaintext refused", || get(backend).is_err());
    assert!(get(via).is_ok_and(|b| b.starts_with("backend:")));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// `curl` inside network namespace `ns`, as `nobody` unless `as_root`.
fn netns_curl(ns: &str, url: &str, as_root: bool) -> (bool, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if !as_root {
        cmd.args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ]);
    }
    let out = cmd
        .args(["curl", "-sS", "--max-time", "5", url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `up --netns`: the demo workloads in network namespaces of their own,
/// unmodified, meshed by capture; STRICT refuses what is not captured (root's
/// traffic, the proxies' uid) while the captured calls go on; the namespaces
/// are gone once `up` stops. Without root, `--netns` says why and starts nothing.
#[test]
fn up_netns_meshes_unmodified_apps_by_pod_ip_and_removes_its_namespaces() {
    if meshid::proc_self::effective_uid() != Some(0) {
        let out = Command::new(BIN)
            .args(["up", "--netns", "--data-dir"])
            .arg(tempfile::tempdir().unwrap().path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
        eprintln!("skipped the rest: not root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("up.log");
    let mut child = Up(Command::new(BIN)
        .args([
            "up",
            "--netns",
            "--port-base",
            &port_base(2).to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("meshid audit list") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "up ended early:\n{banner}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        banner.push_str(&line);
    }
    assert!(banner.contains("pod IP 10.88.0.12"), "{banner}");
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });

    let backend = "http://10.88.0.12:8080/";
    eventually("the frontend's calls by pod IP succeed", || {
        seen.lock().unwrap().contains("first successful mTLS call")
    });
    let (ok, body) = netns_curl("meshid-up-cart", backend, false);
    assert!(ok && body.contains("backend: GET /"), "{body}");
    let (_, metrics) = netns_curl("meshid-up-backend", "http://127.0.0.1:15020/metrics", true);
    for principal in ["ns/default/sa/frontend", "ns/shop/sa/cart"] {
        assert!(
            metrics.contains(&format!(
                "source_principal=\"spiffe://cluster.local/{principal}\""
            )),
            "{metrics}"
        );
    }

    crate::support::set_mode(&data.join("manifests"), "default", "STRICT");
    eventually("root's uncaptured plaintext refused in STRICT", || {
        !netns_curl("meshid-up-cart", backend, true).0
    });
    let (ok, body) = netns_curl("meshid-up-cart", backend, false);
    assert!(ok, "captured calls go on in STRICT: {body}");

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    crate::support::exit_within(&mut child.0, Duration::from_secs(10));
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("meshid-up-"),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}
