//! The CA's transport and start-up: TLS as Istio's clients speak it, clients
//! that misbehave at the socket, and start-up inputs that must stop it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshid::test_helpers::{key_and_csr, request, CaProcess, TestEnv};
use rustls::pki_types::ServerName;

use crate::support::*;

/// ztunnel's way: TLS 1.3 only, ALPN h2, no client certificate, the server
/// checked against the host in the CA address (a DNS name or an IP).
#[tokio::test]
async fn ztunnel_style_tls13_client_verifies_dns_and_ip_sans_and_gets_h2() {
    let (env, ca) = ca_with_web_pod(&[]);
    let mut roots = rustls::RootCertStore::empty();
    for cert in meshid::pki::bundle::parse_pem_certs(&env.root_pem()).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    for host in ["localhost", "127.0.0.1", "meshid-ca.meshid-system.svc"] {
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut sock = TcpStream::connect(ca.addr).unwrap();
        conn.complete_io(&mut sock).unwrap();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "{host}");
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
    // A name not on the certificate is refused by the client.
    let name = ServerName::try_from("evil.example".to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(ca.addr).unwrap();
    assert!(conn.complete_io(&mut sock).is_err());
}

#[tokio::test]
async fn plaintext_grpc_client_on_the_tls_port_gets_no_answer() {
    let (env, ca) = ca_with_web_pod(&[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ca.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let result = async {
        let channel = channel.connect().await?;
        let mut client =
            meshid::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
        let token = env.token("default", "web", None, None);
        let (_k, csr) = key_and_csr(&env.id("default", "web"));
        client
            .create_certificate(request(&csr, 600, Some(&token), None))
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(result.is_err(), "plaintext must not get a certificate");
    // The CA keeps serving TLS clients afterwards.
    let token = env.token("default", "web", None, None);
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    client
        .create_certificate(request(&csr, 600, Some(&token), None))
        .await
        .unwrap();
}

#[tokio::test]
async fn silent_clients_are_disconnected_after_the_handshake_deadline() {
    let (_env, ca) = ca_with_web_pod(&["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut sock = TcpStream::connect(ca.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the CA closes the connection");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed by the deadline, not by the test's timeout"
    );
}

#[tokio::test]
async fn clients_that_only_half_speak_do_not_pin_the_ca() {
    let (env, ca) = ca_with_web_pod(&["--handshake-timeout", "1s"]);
    // Many connections that send a partial ClientHello and stop.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(ca.addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
            s
        })
        .collect();
    // Real clients are still served meanwhile.
    let token = env.token("default", "web", None, None);
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    client
        .create_certificate(request(&csr, 600, Some(&token), None))
        .await
        .unwrap();
    drop(idle);
}

#[test]
fn plugin_ca_files_that_do_not_belong_together_stop_start_up_naming_the_file() {
    let env = TestEnv::new();
    let dir = env.dir.path().join("cacerts");
    std::fs::create_dir_all(&dir).unwrap();
    let root_args = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/O=plugin-root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    let mut args = root_args.to_vec();
    args.extend(["-keyout", "root.key", "-out", "root-cert.pem"]);
    openssl(&dir, &args);
    let mut args = root_args.to_vec();
    args.extend(["-keyout", "other.key", "-out", "other.pem"]);
    openssl(&dir, &args);
    std::fs::copy(dir.join("root-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    std::fs::copy(dir.join("root-cert.pem"), dir.join("cert-chain.pem")).unwrap();
    std::fs::copy(dir.join("other.key"), dir.join("ca-key.pem")).unwrap();

    let err =
        CaProcess::spawn(bin(), &env, &["--plugin-ca-dir", dir.to_str().unwrap()]).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("ca-key.pem"), "names the file: {text}");
    assert!(
        !env.data_dir.join("audit.db").exists() || text.contains("key"),
        "{text}"
    );
}

#[test]
fn plugin_intermediate_ca_issues_chains_of_three() {
    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    let dir = env.dir.path().join("cacerts");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/O=plugin-root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "root.key",
            "-out",
            "root-cert.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=plugin-intermediate",
            "-keyout",
            "ca-key.pem",
            "-out",
            "int.csr",
        ],
    );
    write(&dir, "ext.cnf", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-out",
            "ca-cert.pem",
        ],
    );
    let chain_file = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    write(&dir, "cert-chain.pem", &chain_file);

    let ca = CaProcess::spawn(bin(), &env, &["--plugin-ca-dir", dir.to_str().unwrap()]).unwrap();
    let root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    assert_eq!(
        env.root_pem(),
        root,
        "the plug-in root is the published bundle"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let chain = runtime.block_on(async {
        let token = env.token("default", "web", None, None);
        let (_k, csr) = key_and_csr(&env.id("default", "web"));
        let mut client = ca.client(&root).await.unwrap();
        client
            .create_certificate(request(&csr, 600, Some(&token), None))
            .await
            .unwrap()
            .into_inner()
            .cert_chain
    });
    assert_eq!(chain.len(), 3, "leaf, intermediate, root bundle");
    write(env.dir.path(), "leaf.pem", &chain[0]);
    write(env.dir.path(), "int.pem", &chain[1]);
    let out = openssl(
        env.dir.path(),
        &[
            "verify",
            "-CAfile",
            dir.join("root-cert.pem").to_str().unwrap(),
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn unwritable_data_dir_and_busy_port_fail_with_clear_messages() {
    let env = TestEnv::new();
    // A data "directory" that is a file.
    let file = env.dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-dir"), "{stderr}");

    // The gRPC port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(BIN)
        .args([
            "ca",
            "--listen",
            &addr,
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&env.data_dir)
        .arg("--manifests")
        .arg(&env.manifests)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Issue 12 part 7: given a data directory holding only the issuer's JWKS,
/// the CA used to create a new issuer key and rewrite the JWKS, after which
/// every real token was refused. It reads the JWKS and writes neither.
#[tokio::test]
async fn the_ca_reads_the_issuers_jwks_and_never_creates_its_key() {
    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    let token = env.token("default", "web", None, None);
    let key = env.data_dir.join(meshid::platform::local::KEY_FILE);
    let jwks = env.data_dir.join(meshid::platform::local::JWKS_FILE);
    std::fs::remove_file(&key).unwrap();
    let jwks_before = std::fs::read(&jwks).unwrap();

    let ca = CaProcess::spawn(bin(), &env, &[]).unwrap();
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    client
        .create_certificate(request(&csr, 600, Some(&token), None))
        .await
        .expect("the real issuer's token is still honoured");
    assert!(!key.exists(), "the CA created {}", key.display());
    assert_eq!(std::fs::read(&jwks).unwrap(), jwks_before, "JWKS rewritten");

    // Without the JWKS, the CA does not start, and says what to do.
    drop(ca);
    std::fs::remove_file(&jwks).unwrap();
    let err = CaProcess::spawn(bin(), &env, &[]).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("token-issuer-jwks.json"), "{text}");
    assert!(text.contains("meshid token issue"), "{text}");
    assert!(!key.exists() && !jwks.exists());
}

/// Issue 12 part 3: under `umask 000` the data directory, `manifests/` and
/// `audit.db` used to be created world-writable and world-readable; any user
/// could drop a Pod manifest in and obtain any identity from the agent.
#[test]
fn under_umask_000_the_data_directory_manifests_and_audit_are_the_owners_alone() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let under_umask_000 = |args: &[&str]| {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "umask 000; exec \"$@\"", "sh"])
            .arg(bin())
            .args(args);
        cmd
    };
    let token = base.path().join("web.token");
    let status = under_umask_000(&[
        "token",
        "issue",
        "--data-dir",
        data.to_str().unwrap(),
        "-n",
        "default",
        "--service-account",
        "web",
        "-o",
        token.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(status.success());
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("token-issuer-key.pem")), 0o600);

    let mut ca = under_umask_000(&[
        "ca",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let stdout = std::io::BufReader::new(ca.stdout.take().unwrap());
    let started = stdout
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("meshid CA listening on"));
    let modes = (
        mode(&data.join("manifests")),
        mode(&data.join("audit.db")),
        mode(&data.join("ca-key.pem")),
    );
    let _ = ca.kill();
    let _ = ca.wait();
    assert!(started, "the CA started");
    assert_eq!(
        modes,
        (0o700, 0o600, 0o600),
        "manifests/, audit.db, ca-key.pem"
    );
}
