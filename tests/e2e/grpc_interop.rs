//! Third-party gRPC clients on gRPC's C-core (grpcio, under py-spiffe) against
//! the real agent and CA: they send the socket path, percent-encoded, as the
//! HTTP/2 `:authority`, which the HTTP/2 server alone would refuse.
//!
//! The clients live in a virtualenv that `.ci/python-clients` makes under
//! `target/py-venv` (`.ci/run` calls it). Without it these tests say so and
//! pass, except under CI (`CI` set), where a missing client is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::agent::mesh;
use crate::support::*;

/// The virtualenv's interpreter, or None (with the reason printed) when the
/// clients are not installed and this is not CI.
fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python");
    let path = std::env::var_os("MESHID_TEST_PYTHON").map_or(venv, PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{} is missing: run .ci/python-clients to install py-spiffe and grpcio",
        path.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("skipped: {msg}");
    None
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/py")
        .join(name)
}

/// Python modules generated from our proto/, once per test run.
fn generated(python: &Path) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-proto");
        let _ = std::fs::remove_dir_all(&out);
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let status = Command::new(python)
            .arg(script("generate.py"))
            .arg(&proto)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "generating Python modules from proto/");
        out
    })
}

/// Runs a client script; returns its JSON lines, panicking with its output
/// if it failed.
fn run(python: &Path, name: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(python)
        .arg(script(name))
        .args(args)
        .env("GRPC_VERBOSITY", "ERROR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pem_eq(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[test]
fn py_spiffe_fetches_an_x509_context_and_streams_a_rotation() {
    let Some(python) = python() else { return };
    let m = mesh("4s", true, &[]);
    let socket = m.agent.socket.display().to_string();
    let lines = run(&python, "workload_api.py", &[&socket, "1"]);

    let fetch = &lines[0]["fetch"];
    assert_eq!(
        fetch["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    assert_eq!(fetch["key_is_p256"], true, "{fetch}");
    let roots = fetch["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1);
    assert!(pem_eq(roots[0].as_str().unwrap(), &m.env.root_pem()));

    // fetch_x509_context and the stream both reached the agent; the stream
    // carried a rotation (a new leaf for the same identity).
    let serials: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["stream"]["serial"].as_str())
        .collect();
    assert!(serials.len() >= 2, "{lines:?}");
    assert_ne!(serials.first(), serials.last(), "a rotated certificate");
    assert!(lines
        .iter()
        .filter_map(|l| l["stream"]["spiffe_id"].as_str())
        .all(|id| id == "spiffe://cluster.local/ns/default/sa/web"));
}

#[test]
fn grpcio_sds_client_gets_default_and_rootca_with_every_authority_clients_send() {
    let Some(python) = python() else { return };
    let gen = generated(&python).display().to_string();
    let m = mesh("4s", true, &[]);
    let socket = m.agent.socket.display().to_string();
    // grpcio's own authority (the percent-encoded path, C-core's default),
    // grpc-java's raw path, grpc-go's `localhost`, and a host:port.
    for (authority, rotations) in [
        ("default", "1"),
        (socket.as_str(), "0"),
        ("localhost", "0"),
        ("agent.local:80", "0"),
    ] {
        let lines = run(
            &python,
            "sds_client.py",
            &[&gen, &socket, authority, rotations],
        );
        let first = &lines[0]["secrets"];
        let chain = first["default"]["chain"].as_str().expect("default");
        assert!(chain.contains("BEGIN CERTIFICATE"), "{authority}");
        assert_eq!(first["default"]["key_is_pkcs8"], true);
        assert!(
            pem_eq(
                first["ROOTCA"]["trusted_ca"].as_str().expect("ROOTCA"),
                &m.env.root_pem()
            ),
            "{authority}"
        );
        if rotations == "1" {
            // The pushed rotation: a later response with another chain.
            let last = lines.last().unwrap();
            assert_ne!(last["secrets"]["default"]["chain"].as_str(), Some(chain));
            assert_ne!(last["version"], lines[0]["version"]);
        }
    }
}

#[test]
fn grpcio_gets_a_certificate_from_the_ca_whatever_authority_it_sends() {
    let Some(python) = python() else { return };
    let gen = generated(&python).display().to_string();
    let (env, ca) = ca_with_web_pod(&[]);
    let token = env.token_file("web.token", "default", "web", None, None);
    let root = env.data_dir.join("root-cert.pem");
    let addr = ca.addr.to_string();
    for authority in [
        "run%2Fmeshid%2Fagent.sock",
        "/run/meshid/agent.sock",
        "localhost",
    ] {
        let lines = run(
            &python,
            "ca_client.py",
            &[
                &gen,
                &addr,
                &root.display().to_string(),
                &token.display().to_string(),
                authority,
            ],
        );
        let chain = lines[0]["chain"].as_array().expect("a chain");
        assert!(chain.len() >= 2, "{authority}: {chain:?}");
        let dir = env.dir.path();
        write(dir, "py-leaf.pem", chain[0].as_str().unwrap());
        let root = root.display().to_string();
        let out = openssl(dir, &["verify", "-CAfile", &root, "py-leaf.pem"]);
        assert!(out.contains("OK"), "{authority}: {out}");
    }
}
