//! Informers against the mock API server: sync, readiness, events, `410
//! Gone`, outages, node filtering, PeerAuthentication versions and bad policies.

use std::time::Duration;

use http::Method;

use super::cluster::{
    eventually, namespace, pod, v1_policy, v1beta1_policy, FakeCluster, NAMESPACES, PA_V1,
    PA_V1BETA1, PODS,
};
use super::{start, Running};
use crate::platform::kube::KubeConfig;
use crate::platform::Platform;
use crate::policy::MtlsMode;

fn seeded() -> FakeCluster {
    let cluster = FakeCluster::new();
    cluster.apply(NAMESPACES, namespace("shop"));
    cluster.apply(PODS, pod("shop", "web-1", "u-web-1", "node-a", Some("web")));
    cluster.apply(PODS, pod("shop", "web-2", "u-web-2", "node-b", Some("web")));
    cluster.apply(PODS, pod("shop", "job", "u-job", "node-a", None));
    cluster
}

async fn ready(running: &Running) {
    let platform = &running.platform;
    eventually("first sync", || platform.is_ready()).await;
}

fn names(pods: Vec<crate::platform::Pod>) -> Vec<String> {
    pods.into_iter().map(|p| p.name).collect()
}

#[tokio::test]
async fn readiness_waits_for_the_first_sync_of_every_watch() {
    let cluster = seeded();
    cluster.set_unreachable(PODS, true);
    let running = start(&cluster, KubeConfig::default());
    let platform = &running.platform;
    assert!(!platform.is_ready());
    let api = running.api.clone();
    eventually("namespaces and policies listed, pods tried", || {
        api.calls_to(&Method::GET, NAMESPACES).len() >= 2
            && api.calls_to(&Method::GET, PA_V1BETA1).len() >= 2
            && !api.calls_to(&Method::GET, PODS).is_empty()
    })
    .await;
    assert_eq!(platform.namespaces().len(), 1);
    assert!(!platform.is_ready(), "pods have not synced");

    cluster.set_unreachable(PODS, false);
    ready(&running).await;
    let job = platform.pod("shop", "job").expect("synced pod");
    assert_eq!(job.service_account, "default");
    assert_eq!(
        platform.pod_by_uid("u-web-2").map(|p| p.name),
        Some("web-2".into())
    );
    assert_eq!(names(platform.pods_on_node("node-a")), ["job", "web-1"]);
    assert_eq!(
        names(platform.pods_for_service_account("shop", "web")),
        ["web-1", "web-2"]
    );
}

#[tokio::test]
async fn agent_watches_only_its_node() {
    let cluster = seeded();
    let running = start(
        &cluster,
        KubeConfig {
            node_name: Some("node-a".into()),
            ..KubeConfig::default()
        },
    );
    ready(&running).await;
    let api = running.api.clone();
    // Two pod watches: this node's pods, and every pod's addresses (for
    // destination discovery, kept to a few fields per pod).
    eventually("pod watches open", || cluster.open_watches(PODS) == 2).await;
    let calls = api.calls_to(&Method::GET, PODS);
    let (scoped, cluster_wide): (Vec<_>, Vec<_>) = calls
        .iter()
        .partition(|c| c.query("fieldSelector").is_some());
    let list = scoped.iter().find(|c| !c.is_watch()).expect("a list");
    let watch = scoped.iter().find(|c| c.is_watch()).expect("a watch");
    assert!(cluster_wide.iter().any(|c| c.is_watch()), "{calls:?}");
    for call in [*list, *watch] {
        assert_eq!(
            call.query("fieldSelector"),
            Some("spec.nodeName=node-a"),
            "{call:?}"
        );
    }
    // The watch resumes from the list's resourceVersion.
    assert_eq!(watch.query("resourceVersion"), Some("104"));
    // The mock ignores the selector; what matters is that it was asked for.
    let all = start(&cluster, KubeConfig::default());
    ready(&all).await;
    let calls = all.api.calls_to(&Method::GET, PODS);
    assert!(
        calls.iter().all(|c| c.query("fieldSelector").is_none()),
        "{calls:?}"
    );
}

#[tokio::test]
async fn added_modified_deleted_events_change_lookups_and_bump_changes() {
    let cluster = seeded();
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    let platform = &running.platform;
    let mut changes = platform.changes();
    changes.borrow_and_update();

    cluster.apply(PODS, pod("shop", "web-3", "u-web-3", "node-a", Some("web")));
    tokio::time::timeout(Duration::from_secs(20), changes.changed())
        .await
        .expect("bumped")
        .expect("sender alive");
    eventually("ADDED applied", || platform.pod_by_uid("u-web-3").is_some()).await;

    cluster.apply(PODS, pod("shop", "web-3", "u-web-3", "node-b", Some("api")));
    eventually("MODIFIED applied", || {
        platform.pod("shop", "web-3").and_then(|p| p.node_name) == Some("node-b".into())
    })
    .await;
    assert_eq!(
        names(platform.pods_for_service_account("shop", "api")),
        ["web-3"]
    );
    assert!(!names(platform.pods_on_node("node-a")).contains(&"web-3".to_owned()));

    let before = *changes.borrow_and_update();
    cluster.delete(PODS, Some("shop"), "web-3");
    eventually("DELETED applied", || {
        platform.pod_by_uid("u-web-3").is_none()
    })
    .await;
    assert!(platform.pod("shop", "web-3").is_none());
    assert!(*platform.changes().borrow() > before, "generation bumped");

    cluster.apply(NAMESPACES, namespace("bank"));
    eventually("namespace ADDED", || platform.namespaces().len() == 2).await;
}

#[tokio::test]
async fn watch_ending_with_410_gone_relists() {
    let cluster = seeded();
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    let platform = &running.platform;
    eventually("pod watch open", || cluster.open_watches(PODS) == 1).await;

    // While the watch is expired, web-2 goes and web-9 comes: only a relist can tell.
    cluster.replace_silently(
        PODS,
        vec![
            pod("shop", "web-1", "u-web-1", "node-a", Some("web")),
            pod("shop", "web-9", "u-web-9", "node-a", Some("web")),
        ],
    );
    cluster.expire_watches(PODS);
    eventually("relisted", || platform.pod_by_uid("u-web-9").is_some()).await;
    assert!(
        platform.pod("shop", "web-2").is_none(),
        "missing from the relist: gone"
    );
    assert!(platform.pod_by_uid("u-job").is_none());
    assert_eq!(names(platform.pods_on_node("node-a")), ["web-1", "web-9"]);
    assert!(platform.is_ready());
    let lists = running
        .api
        .calls_to(&Method::GET, PODS)
        .into_iter()
        .filter(|c| !c.is_watch())
        .count();
    assert_eq!(lists, 2, "one list, then one relist");

    // And the new watch delivers events again.
    cluster.apply(PODS, pod("shop", "web-10", "u-web-10", "node-b", None));
    eventually("event after relist", || {
        platform.pod_by_uid("u-web-10").is_some()
    })
    .await;
}

#[tokio::test]
async fn api_server_down_at_start_is_retried_until_ready() {
    let cluster = seeded();
    cluster.set_down(true);
    let running = start(&cluster, KubeConfig::default());
    let api = running.api.clone();
    eventually("retried while down", || {
        api.calls_to(&Method::GET, PODS).len() >= 2
    })
    .await;
    assert!(!running.platform.is_ready());
    assert!(running.platform.pod_by_uid("u-web-1").is_none());

    cluster.set_down(false);
    ready(&running).await;
    assert!(running.platform.pod_by_uid("u-web-1").is_some());
}

#[tokio::test]
async fn api_server_gone_after_sync_keeps_serving_and_stays_ready() {
    let cluster = seeded();
    cluster.apply(
        PA_V1BETA1,
        v1beta1_policy("shop", "default", "p1", "STRICT"),
    );
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    let platform = &running.platform;
    eventually("pod watch open", || cluster.open_watches(PODS) == 1).await;
    let calls_before = running.api.calls().len();

    cluster.set_down(true);
    let api = running.api.clone();
    eventually("watches retried against the dead server", || {
        api.calls().len() >= calls_before + 4
    })
    .await;
    assert!(platform.is_ready());
    assert!(platform.pod_by_uid("u-web-1").is_some());
    assert_eq!(names(platform.pods_on_node("node-b")), ["web-2"]);
    assert_eq!(platform.peer_authentications().len(), 1);

    // Back up: watches resume and deliver again.
    cluster.set_down(false);
    cluster.apply(PODS, pod("shop", "late", "u-late", "node-a", None));
    eventually("caught up after the outage", || {
        platform.pod_by_uid("u-late").is_some()
    })
    .await;
}

#[tokio::test]
async fn stale_caches_turn_unready_when_a_staleness_bound_is_set() {
    let cluster = seeded();
    let running = start(
        &cluster,
        KubeConfig {
            max_staleness: Some(Duration::from_millis(300)),
            ..KubeConfig::default()
        },
    );
    ready(&running).await;
    eventually("pod watch open", || cluster.open_watches(PODS) == 1).await;
    cluster.set_down(true);
    let platform = &running.platform;
    eventually("unready once stale", || !platform.is_ready()).await;
    assert!(platform.pod_by_uid("u-web-1").is_some(), "still serving");
    // Back up: the next event on each watch shows it is current again.
    cluster.set_down(false);
    cluster.apply(PODS, pod("shop", "late", "u-late", "node-a", None));
    cluster.apply(NAMESPACES, namespace("bank"));
    cluster.apply(PA_V1, v1_policy("bank", "a", "p1", "STRICT"));
    cluster.apply(PA_V1BETA1, v1beta1_policy("bank", "b", "p2", "STRICT"));
    eventually("ready again", || platform.is_ready()).await;
}

#[tokio::test]
async fn peer_authentication_with_invalid_mode_is_skipped_and_the_others_apply() {
    let cluster = seeded();
    cluster.apply(PA_V1, v1_policy("shop", "typo", "p1", "STRICTT"));
    cluster.apply(PA_V1, v1_policy("bank", "default", "p2", "STRICT"));
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    let platform = &running.platform;
    let got = platform.peer_authentications();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].metadata.namespace.as_deref(), Some("bank"));
    assert_eq!(got[0].mode(), MtlsMode::Strict);

    // Fixed later: applies; broken later: dropped, the rest stays.
    cluster.apply(PA_V1, v1_policy("shop", "typo", "p1", "PERMISSIVE"));
    eventually("fixed policy applies", || {
        platform.peer_authentications().len() == 2
    })
    .await;
    cluster.apply(PA_V1, v1_policy("bank", "default", "p2", "AUDITT"));
    eventually("broken policy dropped", || {
        let got = platform.peer_authentications();
        got.len() == 1 && got[0].metadata.name == "typo"
    })
    .await;
}

#[tokio::test]
async fn policies_served_only_under_v1beta1_still_sync() {
    let cluster = seeded();
    cluster.set_missing(PA_V1);
    cluster.apply(
        PA_V1BETA1,
        v1beta1_policy("shop", "default", "p1", "PERMISSIVE"),
    );
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    let platform = &running.platform;
    let got = platform.peer_authentications();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mode(), MtlsMode::Permissive);
    cluster.apply(
        PA_V1BETA1,
        v1beta1_policy("shop", "default", "p1", "STRICT"),
    );
    eventually("v1beta1 events apply", || {
        platform.peer_authentications().first().map(|p| p.mode()) == Some(MtlsMode::Strict)
    })
    .await;
}

#[tokio::test]
async fn policy_served_under_both_versions_counts_once() {
    let cluster = seeded();
    cluster.apply(PA_V1, v1_policy("shop", "default", "p1", "STRICT"));
    cluster.apply(
        PA_V1BETA1,
        v1beta1_policy("shop", "default", "p1", "STRICT"),
    );
    let running = start(&cluster, KubeConfig::default());
    ready(&running).await;
    assert_eq!(running.platform.peer_authentications().len(), 1);
}
