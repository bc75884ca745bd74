//! The injector under a stream of AdmissionReviews, as the API server sends
//! them: the real `meshid injector` process over TLS (HTTP/1.1 keep-alive
//! connections, as Go's client keeps them), each review a realistic Pod
//! (two containers, an init container, volumes, annotations) that gets
//! injected. Reports round-trip latency per review (p50/p99/max), reviews/s
//! and the injector's CPU per review (utime+stime from /proc) and RSS.
//!
//! `cargo bench --bench injector -- --reviews 10000 --connections 4`

// A benchmark measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshid::test_helpers::{cli_value, cpu_seconds, free_port, rss_kib, Managed};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const MESHID: &str = env!("CARGO_BIN_EXE_meshid");
const NAME: &str = "meshid-injector.meshid-system.svc";

fn review(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{i:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "kind": "Pod", "apiVersion": "v1",
                "metadata": {
                    "generateName": "cart-6f7c9-", "namespace": "shop",
                    "labels": {"app": "cart", "pod-template-hash": "6f7c9"},
                    "annotations": {"sidecar.meshid.io/inject": "true", "traffic.meshid.io/excludeOutboundPorts": "5432", "prometheus.io/scrape": "true"},
                },
                "spec": {
                    "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
                    "initContainers": [{"name": "migrate", "image": "cart:1.4", "command": ["/migrate"]}],
                    "containers": [
                        {"name": "cart", "image": "cart:1.4", "ports": [{"containerPort": 8080}],
                         "env": [{"name": "MODE", "value": "prod"}],
                         "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                        {"name": "cache", "image": "redis:7", "ports": [{"containerPort": 6379}]},
                    ],
                    "serviceAccountName": "cart",
                },
            },
            "oldObject": null,
            "dryRun": false,
        },
    }))
    .unwrap_or_default()
}

/// One keep-alive connection: POSTs `bodies` one after another; returns each round trip.
async fn drive(
    addr: std::net::SocketAddr,
    tls: TlsConnector,
    bodies: Vec<Vec<u8>>,
) -> Vec<Duration> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).ok();
    let stream = tls
        .connect(ServerName::try_from(NAME).expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let mut stream = BufReader::new(stream);
    let mut times = Vec::with_capacity(bodies.len());
    let mut line = String::new();
    for body in bodies {
        let started = Instant::now();
        let head = format!(
            "POST /inject?timeout=10s HTTP/1.1\r\nHost: {NAME}:443\r\nContent-Type: application/json\r\nAccept: application/json, */*\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .expect("write");
        stream.get_mut().write_all(&body).await.expect("write");
        let mut length = 0usize;
        line.clear();
        stream.read_line(&mut line).await.expect("status");
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            stream.read_line(&mut line).await.expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).await.expect("body");
        times.push(started.elapsed());
        debug_assert!(answer.windows(9).any(|w| w == b"JSONPatch"));
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let reviews: usize = cli_value("--reviews").map_or(10_000, |v| v.parse().expect("--reviews"));
    let connections: usize =
        cli_value("--connections").map_or(4, |v| v.parse().expect("--connections"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("cert");
    let cert_file = dir.path().join("tls.crt");
    let key_file = dir.path().join("tls.key");
    std::fs::write(&cert_file, cert.cert.pem()).expect("write");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write");

    let metrics = free_port().expect("port");
    let mut cmd = Command::new(MESHID);
    cmd.arg("injector")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen"])
        .arg(metrics.to_string())
        .arg("--tls-cert")
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .env("RUST_LOG", "warn");
    let (process, line) = Managed::start(
        &mut cmd,
        dir.path().join("injector.log"),
        "meshid injector",
        "meshid injector listening on ",
    )
    .expect("injector");
    let addr: std::net::SocketAddr = line
        .strip_prefix("meshid injector listening on ")
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .parse()
        .expect("address");
    let pid = process.pid().expect("pid");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));

    // Warm-up: one connection, 200 reviews.
    drive(addr, tls.clone(), (0..200).map(review).collect()).await;

    let per = reviews.div_ceil(connections);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let bodies = (c * per..((c + 1) * per).min(reviews))
                .map(review)
                .collect();
            tokio::spawn(drive(addr, tls.clone(), bodies))
        })
        .collect();
    let mut times = Vec::with_capacity(reviews);
    for t in tasks {
        times.extend(t.await.expect("task"));
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    times.sort();
    let body_bytes = review(0).len();
    let mut out = std::io::stdout().lock();
    writeln!(out, "injector: {} reviews of {body_bytes} B over {connections} keep-alive TLS connections in {:.2} s: {:.0} reviews/s", times.len(), wall.as_secs_f64(), times.len() as f64 / wall.as_secs_f64()).ok();
    writeln!(
        out,
        "latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 <= 5 ms)",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
    .ok();
    writeln!(
        out,
        "injector CPU: {:.1} us per review; RSS {} KiB",
        cpu * 1e6 / times.len() as f64,
        rss_kib(pid)
    )
    .ok();
    drop(process);

    // The answer alone (parse, decide, mutate, JSONPatch, serialize), in
    // this process: what a review costs before TLS, HTTP and the kernel.
    let config = meshid::inject::InjectConfig::default();
    let bodies: Vec<Vec<u8>> = (0..reviews).map(review).collect();
    let started = Instant::now();
    for body in &bodies {
        let answer = meshid::inject::review::answer(
            body,
            |_| meshid::inject::NamespaceInjection::Enabled,
            &config,
        )
        .expect("answer");
        std::hint::black_box(serde_json::to_vec(&answer.review).ok());
    }
    writeln!(
        out,
        "answer alone: {:.1} us per review",
        started.elapsed().as_secs_f64() * 1e6 / reviews as f64
    )
    .ok();
}
