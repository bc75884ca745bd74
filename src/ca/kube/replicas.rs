//! How many CA replicas the cluster asks for, read from the CA's own Pod
//! and the ReplicaSet that controls it, for one start-up check: an audit
//! store that is SQLite (one file per replica, on an emptyDir in
//! `deploy/base`) while more than one replica runs splits the audit log.
//!
//! Owns that read and the warning's text. Does not decide which audit store
//! is used (that is the CA's configuration) and never fails start-up: a
//! caller that cannot read the count logs that and carries on.

use ::kube::api::Api;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;

/// The annotation the Deployment controller puts on each of its ReplicaSets:
/// the Deployment's own `spec.replicas`.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";

/// The replica count wanted for the CA: the pod `pod_name` in `namespace` is
/// read, its controller `ownerReference` followed to a ReplicaSet, and the
/// larger of that ReplicaSet's `spec.replicas` (1 when unset, the API's
/// default) and its Deployment's (annotation
/// [`DESIRED_REPLICAS_ANNOTATION`]) returned: during a rolling update a new
/// ReplicaSet starts at 1 while its Deployment wants more. `None` when the
/// pod has no ReplicaSet as controller (a bare pod, a StatefulSet).
///
/// Needs `get` on the pod and on replicasets in `namespace`.
pub async fn desired_replicas(
    client: &kube::Client,
    namespace: &str,
    pod_name: &str,
) -> Result<Option<i32>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(pod_name).await?;
    let owner = pod
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|owner| {
            owner.controller == Some(true)
                && owner.kind == "ReplicaSet"
                && owner.api_version.starts_with("apps/")
        });
    let Some(owner) = owner else {
        return Ok(None);
    };
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let replica_set = replica_sets.get(&owner.name).await?;
    let own = replica_set.spec.and_then(|spec| spec.replicas).unwrap_or(1);
    let deployment = replica_set
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DESIRED_REPLICAS_ANNOTATION))
        .and_then(|value| value.parse::<i32>().ok());
    Ok(Some(deployment.map_or(own, |wanted| wanted.max(own))))
}

/// The start-up warning for an audit store that is SQLite while `replicas`
/// CA replicas are wanted, or `None` for one replica (or none).
pub fn sqlite_with_replicas_warning(replicas: i32) -> Option<String> {
    (replicas > 1).then(|| {
        format!(
            "the audit store is SQLite, but {replicas} CA replicas are wanted: each replica keeps \
             its own audit log in its data directory (an emptyDir in deploy/base, lost with the \
             pod), so no one log holds every decision and `meshid audit verify` sees only one \
             replica's. Fix: set MESHID_AUDIT_STORE (--audit-store) to a postgres:// DSN; \
             deploy/base takes it from key dsn of Secret meshid-audit-store \
             (see deploy/README.md, \"Audit store: PostgreSQL\")"
        )
    })
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::{json, Value};

    use super::*;
    use crate::test_helpers::kube_api::{MockApi, Reply};

    const NS: &str = "meshid-system";
    const POD: &str = "meshid-ca-7d9c8b6f5-x2k4p";
    const POD_PATH: &str = "/api/v1/namespaces/meshid-system/pods/meshid-ca-7d9c8b6f5-x2k4p";
    const RS_PATH: &str = "/apis/apps/v1/namespaces/meshid-system/replicasets/meshid-ca-7d9c8b6f5";

    /// The CA's pod as the API server returns it, with these owners.
    fn pod(owners: Value) -> Value {
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": POD,
                "namespace": NS,
                "uid": "uid-pod",
                "resourceVersion": "3003",
                "labels": {"app.kubernetes.io/name": "meshid-ca", "pod-template-hash": "7d9c8b6f5"},
                "ownerReferences": owners,
            },
            "spec": {"containers": [{"name": "ca", "image": "ghcr.io/meshid/meshid:latest"}]},
        })
    }

    fn rs_owner(kind: &str, controller: bool) -> Value {
        json!([{
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": "meshid-ca-7d9c8b6f5",
            "uid": "uid-rs",
            "controller": controller,
            "blockOwnerDeletion": true,
        }])
    }

    /// A ReplicaSet as the deployment controller writes it.
    fn replica_set(replicas: i32, desired_annotation: Option<&str>) -> Value {
        let mut annotations = json!({"deployment.kubernetes.io/revision": "3"});
        if let Some(desired) = desired_annotation {
            annotations[DESIRED_REPLICAS_ANNOTATION] = json!(desired);
        }
        json!({
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": "meshid-ca-7d9c8b6f5",
                "namespace": NS,
                "uid": "uid-rs",
                "resourceVersion": "3001",
                "annotations": annotations,
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "meshid-ca"}},
            },
        })
    }

    fn cluster(pod: Value, replica_set: Value) -> (kube::Client, MockApi) {
        MockApi::start(move |call| match call.path.as_str() {
            POD_PATH => Reply::ok(pod.clone()),
            RS_PATH => Reply::ok(replica_set.clone()),
            other => panic!("unexpected request to {other}"),
        })
    }

    #[tokio::test]
    async fn a_pod_of_a_replica_set_gets_its_replica_count() {
        let (client, api) = cluster(pod(rs_owner("ReplicaSet", true)), replica_set(2, Some("2")));
        let replicas = desired_replicas(&client, NS, POD).await.expect("read");
        assert_eq!(replicas, Some(2));
        assert_eq!(api.calls_to(&Method::GET, RS_PATH).len(), 1);
    }

    #[tokio::test]
    async fn a_new_replica_set_in_a_rollout_counts_its_deployments_replicas() {
        let (client, _api) = cluster(pod(rs_owner("ReplicaSet", true)), replica_set(1, Some("3")));
        let replicas = desired_replicas(&client, NS, POD).await.expect("read");
        assert_eq!(replicas, Some(3));
    }

    #[tokio::test]
    async fn a_replica_set_without_a_deployment_counts_its_own_replicas() {
        let (client, _api) = cluster(pod(rs_owner("ReplicaSet", true)), replica_set(4, None));
        let replicas = desired_replicas(&client, NS, POD).await.expect("read");
        assert_eq!(replicas, Some(4));
    }

    #[tokio::test]
    async fn a_pod_without_a_replica_set_controller_has_no_count() {
        for owners in [
            json!(null),
            rs_owner("ReplicaSet", false),
            rs_owner("StatefulSet", true),
        ] {
            let (client, api) = cluster(pod(owners.clone()), replica_set(2, Some("2")));
            let replicas = desired_replicas(&client, NS, POD).await.expect("read");
            assert_eq!(replicas, None, "owners {owners}");
            assert!(api.calls_to(&Method::GET, RS_PATH).is_empty());
        }
    }

    #[tokio::test]
    async fn a_missing_pod_is_an_error() {
        let (client, _api) = MockApi::start(|_| {
            Reply::status(404, "NotFound", &format!("pods \"{POD}\" not found"))
        });
        let err = desired_replicas(&client, NS, POD).await.expect_err("404");
        assert!(
            matches!(&err, kube::Error::Api(status) if status.code == 404),
            "{err}"
        );
    }

    #[test]
    fn one_replica_needs_no_warning() {
        assert_eq!(sqlite_with_replicas_warning(0), None);
        assert_eq!(sqlite_with_replicas_warning(1), None);
    }

    #[test]
    fn more_replicas_warn_naming_the_fix() {
        let warning = sqlite_with_replicas_warning(2).expect("warning");
        for needle in [
            "2 CA replicas",
            "MESHID_AUDIT_STORE",
            "--audit-store",
            "postgres://",
            "Secret meshid-audit-store",
            "deploy/README.md",
        ] {
            assert!(warning.contains(needle), "{needle}: {warning}");
        }
    }
}
