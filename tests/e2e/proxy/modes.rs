//! The four modes against real clients: raw TCP, the frontend's proxy,
//! `openssl s_client` and curl; live connections across a mode switch.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_reaches_backend_over_mtls_and_the_backend_logs_its_identity() {
    let p = setup().await;
    let answer = get(p.via_frontend()).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually(
        "the backend proxy logs the frontend's SPIFFE ID",
        async || p.backend.log_text().contains(FRONTEND),
    )
    .await;
    // PERMISSIVE (the default): plaintext passes too, and so does openssl
    // without a client certificate.
    assert!(get(p.backend_inbound()).await.is_ok());
    let out = s_client(p.backend_inbound(), None).await;
    assert!(out.contains(BODY), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_another_identity_is_refused_by_the_outbound_proxy() {
    let p = setup().await;
    let err = get(p.via_frontend_wrong_id()).await.unwrap_err();
    assert!(!err.contains(BODY), "{err}");
    eventually("the frontend logs the refusal", async || {
        let log = p.frontend.log_text();
        log.contains("outbound connection refused") && log.contains("someone-else")
    })
    .await;
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "the right route still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_and_certless_tls_and_passes_mtls() {
    let p = setup().await;
    assert!(get(p.backend_inbound()).await.is_ok());
    p.set_mode("STRICT");
    eventually("plaintext refused", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "mTLS through the frontend"
    );
    let out = s_client(p.backend_inbound(), None).await;
    assert!(!out.contains(BODY), "no client certificate: {out}");
    let out = s_client(p.backend_inbound(), Some(&p.client_certs)).await;
    assert!(out.contains(BODY), "with a client certificate: {out}");
    let log = p.backend.log_text();
    assert!(log.contains("inbound connection refused"), "{log}");
    assert!(
        log.contains("spiffe://cluster.local/ns/default/sa/client"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_plaintext_and_counts_what_strict_would_refuse() {
    let p = setup().await;
    p.set_mode("AUDIT");
    eventually("plaintext counted as would-refuse", async || {
        get(p.backend_inbound()).await.is_ok()
            && metrics(p.backend.metrics_addr)
                .await
                .contains("meshid_proxy_would_refuse_total{kind=\"plaintext\"}")
    })
    .await;
    assert!(get(p.via_frontend()).await.is_ok());
    let out = s_client(p.backend_inbound(), None).await;
    assert!(
        out.contains(BODY),
        "TLS without a client certificate passes: {out}"
    );
    let text = metrics(p.backend.metrics_addr).await;
    assert!(
        text.contains("meshid_proxy_would_refuse_total{kind=\"tls_without_client_cert\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_strict_closes_a_live_plaintext_connection_and_keeps_mtls() {
    let p = setup().await;
    let mut plain = TcpStream::connect(p.backend_inbound()).await.unwrap();
    request(&mut plain, false).await.unwrap();
    let mut mtls = TcpStream::connect(p.via_frontend()).await.unwrap();
    request(&mut mtls, false).await.unwrap();
    p.set_mode("STRICT");
    let switched = Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    eprintln!(
        "live plaintext connection closed {:?} after set-mode",
        switched.elapsed()
    );
    request(&mut mtls, false)
        .await
        .expect("the live mTLS connection goes on");
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "new mTLS connections work"
    );
    assert!(
        get(p.backend_inbound()).await.is_err(),
        "new plaintext is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_refused_in_strict_after_the_sniff_wait() {
    let p = setup().await;
    p.set_mode("STRICT");
    eventually("plaintext refused", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    let mut silent = TcpStream::connect(p.backend_inbound()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_passes_tls_bytes_untouched_where_permissive_terminates_them() {
    let p = setup().await;
    let answer = send_raw(p.backend_inbound(), TLS_LOOKALIKE).await;
    assert!(
        !answer.contains(BODY),
        "PERMISSIVE terminates TLS: {answer:?}"
    );
    p.set_mode("DISABLE");
    eventually("DISABLE passes the bytes to the application", async || {
        send_raw(p.backend_inbound(), TLS_LOOKALIKE)
            .await
            .contains(BODY)
    })
    .await;
    assert!(get(p.backend_inbound()).await.is_ok(), "plaintext too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_level_strict_override_refuses_plaintext_in_a_permissive_namespace() {
    let p = setup().await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: backend-1\n  namespace: default\n  \
               uid: uid-backend-1\n  labels:\n    app: backend\nspec:\n  nodeName: node-a\n  \
               serviceAccountName: backend\nstatus:\n  phase: Running\n";
    std::fs::write(p.env.manifests.join("pod-default-backend-1.yaml"), pod).unwrap();
    let policy = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  \
         name: backend-port\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      \
         app: backend\n  portLevelMtls:\n    {}:\n      mode: STRICT\n",
        p.app.port()
    );
    std::fs::write(p.env.manifests.join("pa-backend-port.yaml"), policy).unwrap();
    eventually("plaintext refused on the STRICT port", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    assert!(get(p.via_frontend()).await.is_ok(), "mTLS passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_plaintext_and_curl_with_a_client_certificate_in_permissive_and_strict() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let p = setup().await;
    let plain = format!("http://{}/", p.backend_inbound());
    let tls = format!("https://{}/", p.backend_inbound());
    let certs = &p.client_certs;
    // The proxy's certificate names a SPIFFE ID, not a host: curl checks the
    // chain against the bundle but not the name (-k); the proxy checks ours.
    let with_cert = vec![
        "-k".to_owned(),
        "--cacert".to_owned(),
        certs.join("root-cert.pem").display().to_string(),
        "--cert".to_owned(),
        certs.join("cert-chain.pem").display().to_string(),
        "--key".to_owned(),
        certs.join("key.pem").display().to_string(),
        tls.clone(),
    ];
    let (ok, out) = curl(vec![plain.clone()]).await;
    assert!(ok && out.contains(BODY), "PERMISSIVE plaintext: {out}");
    let (ok, out) = curl(with_cert.clone()).await;
    assert!(ok && out.contains(BODY), "PERMISSIVE mTLS: {out}");
    p.set_mode("STRICT");
    eventually("curl plaintext refused", async || {
        !curl(vec![plain.clone()]).await.0
    })
    .await;
    let (ok, out) = curl(vec!["-k".to_owned(), tls.clone()]).await;
    assert!(
        !ok && !out.contains(BODY),
        "STRICT without a certificate: {out}"
    );
    let (ok, out) = curl(with_cert).await;
    assert!(ok && out.contains(BODY), "STRICT mTLS: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_drain_period_a_disallowed_live_connection_is_closed_only_after_it() {
    let p = setup_with("1h", &["--mode-change-drain", "3s"]).await;
    let mut plain = TcpStream::connect(p.backend_inbound()).await.unwrap();
    request(&mut plain, false).await.unwrap();
    p.set_mode("STRICT");
    eventually("STRICT in force for new connections", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    let in_force = Instant::now();
    request(&mut plain, false)
        .await
        .expect("still open during the drain period");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let after = in_force.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "closed {after:?} after STRICT was seen"
    );
}
