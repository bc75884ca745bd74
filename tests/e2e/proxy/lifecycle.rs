//! The proxy's life around its agent: started before it, certificate
//! rotation, the agent going away and a new one taking its place; SIGTERM.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_its_agent_retries_and_serves_once_the_agent_is_up() {
    let (env, ca) = env_and_ca();
    let late = env.dir.path().join("late.sock");
    let token = workload_token(&env, "backend");
    let app = echo_server().await;
    let (dir, socket) = (env.dir.path().to_owned(), late.clone());
    let proxy = std::thread::spawn(move || {
        let inbound = format!("127.0.0.1:0={app}");
        ProxyProcess::spawn(
            bin(),
            &dir,
            "early",
            &socket,
            &[
                "--inbound",
                &inbound,
                "--token-file",
                token.to_str().unwrap(),
            ],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (agent, _) = start_agent(&env, &ca, "1h");
    std::os::unix::fs::symlink(&agent.socket, &late).unwrap();
    let mut proxy = tokio::task::spawn_blocking(move || proxy.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(get(proxy.inbound[0]).await.is_ok());
    let log = proxy.log_text();
    assert!(log.contains("no SDS stream from the agent"), "{log}");
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_swapped_in_and_mtls_goes_on() {
    let p = setup_with("4s", &[]).await;
    let mut live = TcpStream::connect(p.via_frontend()).await.unwrap();
    request(&mut live, false).await.unwrap();
    eventually("both proxies swap in a rotated certificate", async || {
        p.backend.log_text().contains("new certificate in force")
            && p.frontend.log_text().contains("new certificate in force")
    })
    .await;
    request(&mut live, false)
        .await
        .expect("a connection made with the old certificate goes on");
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "mTLS after the rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_their_certificates_while_the_agent_is_away_and_reconnect() {
    let mut p = setup().await;
    assert!(get(p.via_frontend()).await.is_ok());
    let mut agent = std::mem::replace(&mut p.agent, start_agent(&p.env, &p.ca, "1h").0);
    let status = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    eventually("both proxies notice the agent is gone", async || {
        p.backend
            .log_text()
            .contains("no SDS stream from the agent")
            && p.frontend
                .log_text()
                .contains("no SDS stream from the agent")
    })
    .await;
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "mTLS without the agent"
    );
    // The new agent (already running) takes the old one's place.
    std::fs::remove_file(&p.agent_link).unwrap();
    std::os::unix::fs::symlink(&p.agent.socket, &p.agent_link).unwrap();
    eventually(
        "both proxies get a certificate from the new agent",
        async || {
            p.backend.log_text().contains("new certificate in force")
                && p.frontend.log_text().contains("new certificate in force")
        },
    )
    .await;
    p.set_mode("STRICT");
    eventually("the policy stream is back: plaintext refused", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    assert!(
        get(p.via_frontend()).await.is_ok(),
        "mTLS with the new certificates"
    );
}
