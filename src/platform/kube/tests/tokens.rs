//! JWKS mode: a token bound to a pod is only good while that pod exists.

use std::sync::Arc;

use time::OffsetDateTime;

use super::cluster::{eventually, pod, FakeCluster, PODS};
use super::{start_with, Running};
use crate::platform::kube::{KubeConfig, TokenVerifier};
use crate::platform::{Platform, PlatformError, VerifiedToken, VerifyFuture};

/// Accepts every token `<namespace>/<pod name>/<pod uid>` as bound to that pod,
/// and `<namespace>` alone as bound to none.
struct BoundTokens;

impl TokenVerifier for BoundTokens {
    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        let mut parts = token.split('/');
        let namespace = parts.next().unwrap_or_default().to_owned();
        let pod_name = parts.next().map(str::to_owned);
        let pod_uid = parts.next().map(str::to_owned);
        Box::pin(async move {
            Ok(VerifiedToken {
                issuer: "https://kubernetes.default.svc".into(),
                namespace,
                service_account: "web".into(),
                audiences: audiences.to_vec(),
                pod_name,
                pod_uid,
                node_name: None,
                node_uid: None,
                expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
            })
        })
    }
}

fn jwks(cluster: &FakeCluster, check_bound_pod: bool) -> Running {
    let config = KubeConfig {
        check_bound_pod,
        ..KubeConfig::default()
    };
    start_with(cluster, config, Arc::new(BoundTokens))
}

async fn verify(running: &Running, token: &str) -> Result<VerifiedToken, PlatformError> {
    running
        .platform
        .verify_token(token, &["istio-ca".to_owned()])
        .await
}

fn refusal(result: Result<VerifiedToken, PlatformError>) -> String {
    match result {
        Err(PlatformError::InvalidToken { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn cluster_with_web() -> FakeCluster {
    let cluster = FakeCluster::new();
    cluster.apply(PODS, pod("shop", "web-1", "u-1", "node-a", Some("web")));
    cluster
}

#[tokio::test]
async fn token_bound_to_an_existing_pod_is_accepted() {
    let cluster = cluster_with_web();
    let running = jwks(&cluster, true);
    eventually("synced", || running.platform.is_ready()).await;
    let token = verify(&running, "shop/web-1/u-1").await.expect("accepted");
    assert_eq!(token.pod_uid.as_deref(), Some("u-1"));
    verify(&running, "shop")
        .await
        .expect("a token bound to no pod passes");
}

#[tokio::test]
async fn token_bound_to_a_deleted_pod_is_refused_naming_it() {
    let cluster = cluster_with_web();
    let running = jwks(&cluster, true);
    eventually("synced", || running.platform.is_ready()).await;
    cluster.delete(PODS, Some("shop"), "web-1");
    eventually("deleted", || {
        running.platform.pod("shop", "web-1").is_none()
    })
    .await;
    let reason = refusal(verify(&running, "shop/web-1/u-1").await);
    assert!(reason.contains("shop/web-1"), "{reason}");
    assert!(reason.contains("no longer exists"), "{reason}");
}

#[tokio::test]
async fn token_bound_to_a_pod_recreated_with_another_uid_is_refused() {
    let cluster = cluster_with_web();
    let running = jwks(&cluster, true);
    eventually("synced", || running.platform.is_ready()).await;
    cluster.delete(PODS, Some("shop"), "web-1");
    cluster.apply(PODS, pod("shop", "web-1", "u-2", "node-a", Some("web")));
    eventually("recreated", || running.platform.pod_by_uid("u-2").is_some()).await;
    let reason = refusal(verify(&running, "shop/web-1/u-1").await);
    assert!(reason.contains("u-2"), "{reason}");
    verify(&running, "shop/web-1/u-2")
        .await
        .expect("the new pod's token");
}

#[tokio::test]
async fn bound_token_before_the_pod_cache_synced_is_unavailable_not_refused() {
    let cluster = cluster_with_web();
    cluster.set_down(true);
    let running = jwks(&cluster, true);
    match verify(&running, "shop/web-1/u-1").await {
        Err(PlatformError::Unavailable(message)) => assert!(message.contains("shop/web-1")),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn tokenreview_mode_leaves_the_pod_check_to_the_api_server() {
    let cluster = cluster_with_web();
    let running = jwks(&cluster, false);
    eventually("synced", || running.platform.is_ready()).await;
    verify(&running, "shop/gone/u-9")
        .await
        .expect("not checked here");
}
