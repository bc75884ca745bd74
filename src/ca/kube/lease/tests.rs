//! Leader election against the mock API server (Lease JSON as the real API
//! writes it, MicroTime with six fractional digits, `409` Status answers),
//! plus the pure decision.

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use time::macros::datetime;

use super::*;
use crate::test_helpers::kube_api::{Call, MockApi, Reply};
use crate::time::TestClock;

const NS: &str = "meshid-system";
const NAME: &str = "meshid-ca-root-cert";
const PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/meshid-system/leases/meshid-ca-root-cert";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/meshid-system/leases";
const ME: &str = "meshid-ca-7d9f-a";
const OTHER: &str = "meshid-ca-7d9f-b";

fn now() -> OffsetDateTime {
    datetime!(2026-11-22 10:00:10 UTC)
}

fn elector(client: ::kube::Client) -> LeaderElector {
    LeaderElector::new(
        client,
        LeaseConfig::new(NS, NAME, ME),
        Arc::new(TestClock::new(now())),
    )
}

/// A Lease as the API server returns it.
fn lease_json(holder: &str, renew: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": "6b1c5a52-0000-4000-8000-000000000001",
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-22T09:00:00Z",
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-11-22T09:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": transitions,
        },
    })
}

fn updated(call: &Call) -> Reply {
    let mut object = call.body.clone();
    object["metadata"]["resourceVersion"] = json!("4712");
    Reply::ok(object)
}

/// Answers GET with `lease` (404 when `None`) and accepts writes.
fn cluster(lease: Option<Value>) -> (::kube::Client, MockApi) {
    MockApi::start(move |call| match (&call.method, call.path.as_str()) {
        (&Method::GET, PATH) => match &lease {
            Some(lease) => Reply::ok(lease.clone()),
            None => Reply::status(
                404,
                "NotFound",
                "leases.coordination.k8s.io \"meshid-ca-root-cert\" not found",
            ),
        },
        (&Method::POST, COLLECTION) => {
            let mut object = call.body.clone();
            object["metadata"]["resourceVersion"] = json!("1");
            Reply::Json(http::StatusCode::CREATED, object)
        }
        (&Method::PUT, PATH) => updated(call),
        other => panic!("unexpected request {other:?}"),
    })
}

#[tokio::test]
async fn an_absent_lease_is_created_holding_it() {
    let (client, api) = cluster(None);
    let elector = elector(client);
    let leader = elector.subscribe();
    assert!(elector.try_acquire_or_renew().await.expect("round"));
    assert!(*leader.borrow());
    let posts = api.calls_to(&Method::POST, COLLECTION);
    assert_eq!(posts.len(), 1);
    let spec = &posts[0].body["spec"];
    assert_eq!(spec["holderIdentity"], ME);
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["renewTime"], "2026-11-22T10:00:10.000000Z");
    assert_eq!(spec["acquireTime"], "2026-11-22T10:00:10.000000Z");
}

#[tokio::test]
async fn our_own_lease_is_renewed_with_the_resource_version_read() {
    let (client, api) = cluster(Some(lease_json(ME, "2026-11-22T10:00:05.000000Z", 3)));
    assert!(elector(client).try_acquire_or_renew().await.expect("round"));
    let puts = api.calls_to(&Method::PUT, PATH);
    assert_eq!(puts.len(), 1);
    let body = &puts[0].body;
    assert_eq!(body["metadata"]["resourceVersion"], "4711");
    assert_eq!(body["spec"]["holderIdentity"], ME);
    assert_eq!(body["spec"]["renewTime"], "2026-11-22T10:00:10.000000Z");
    assert_eq!(body["spec"]["acquireTime"], "2026-11-22T09:00:00.000000Z");
    assert_eq!(body["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn a_lease_held_by_another_replica_and_unexpired_is_left_alone() {
    // Renewed 5 s ago with a 15 s duration.
    let (client, api) = cluster(Some(lease_json(OTHER, "2026-11-22T10:00:05.000000Z", 0)));
    let elector = elector(client);
    assert!(!elector.try_acquire_or_renew().await.expect("round"));
    assert!(!*elector.subscribe().borrow());
    assert!(api.calls_to(&Method::PUT, "/").is_empty());
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    // Renewed 16 s ago with a 15 s duration.
    let (client, api) = cluster(Some(lease_json(OTHER, "2026-11-22T09:59:54.000000Z", 2)));
    assert!(elector(client).try_acquire_or_renew().await.expect("round"));
    let puts = api.calls_to(&Method::PUT, PATH);
    assert_eq!(puts.len(), 1);
    let spec = &puts[0].body["spec"];
    assert_eq!(spec["holderIdentity"], ME);
    assert_eq!(spec["leaseTransitions"], 3);
    assert_eq!(spec["acquireTime"], "2026-11-22T10:00:10.000000Z");
    assert_eq!(puts[0].body["metadata"]["resourceVersion"], "4711");
}

#[tokio::test]
async fn a_conflict_on_update_means_another_replica_won() {
    let expired = lease_json(OTHER, "2026-11-22T09:00:00.000000Z", 0);
    let (client, _api) = MockApi::start(move |call| {
        match call.method {
        Method::GET => Reply::ok(expired.clone()),
        _ => Reply::status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"meshid-ca-root-cert\": \
             the object has been modified; please apply your changes to the latest version and try again",
        ),
    }
    });
    let elector = elector(client);
    assert!(!elector.try_acquire_or_renew().await.expect("round"));
    assert!(!*elector.subscribe().borrow());
}

#[tokio::test]
async fn losing_the_create_race_means_not_leader() {
    let (client, _api) = MockApi::start(|call| match call.method {
        Method::GET => Reply::status(404, "NotFound", "not found"),
        _ => Reply::status(
            409,
            "AlreadyExists",
            "leases.coordination.k8s.io \"meshid-ca-root-cert\" already exists",
        ),
    });
    assert!(!elector(client).try_acquire_or_renew().await.expect("round"));
}

#[tokio::test]
async fn a_leader_that_loses_the_lease_publishes_it() {
    let mut round = 0;
    let (client, _api) = MockApi::start(move |call| {
        round += 1;
        match (round, &call.method) {
            (1, _) => Reply::ok(lease_json(ME, "2026-11-22T10:00:05.000000Z", 0)),
            (2, _) => updated(call),
            _ => Reply::ok(lease_json(OTHER, "2026-11-22T10:00:09.000000Z", 1)),
        }
    });
    let elector = elector(client);
    let mut leader = elector.subscribe();
    assert!(elector.try_acquire_or_renew().await.expect("renew"));
    assert!(*leader.borrow_and_update());
    assert!(!elector.try_acquire_or_renew().await.expect("lost"));
    assert!(leader.has_changed().expect("open"));
    assert!(!*leader.borrow_and_update());
}

#[tokio::test]
async fn the_run_loop_leads_then_releases_on_cancellation() {
    let (client, api) = cluster(None);
    let elector = elector(client);
    let mut leader = elector.subscribe();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    leader.wait_for(|l| *l).await.expect("became leader");
    cancel.cancel();
    task.await.expect("run loop ended");
    assert!(!*leader.borrow());
    // The release GET answers with the (static) absent Lease: nothing to give up.
    assert_eq!(api.calls_to(&Method::GET, PATH).len(), 2);
}

#[test]
fn decide_covers_every_case() {
    let spec = |holder: Option<&str>, renew: Option<OffsetDateTime>| LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: Some(15),
        renew_time: renew.map(|t| to_micro(t).expect("time")),
        ..LeaseSpec::default()
    };
    let d = Duration::from_secs(15);
    let t = now();
    assert_eq!(decide(None, ME, t, d), Decision::Create);
    assert_eq!(
        decide(Some(&spec(Some(ME), Some(t))), ME, t, d),
        Decision::Renew
    );
    assert_eq!(
        decide(Some(&spec(None, Some(t))), ME, t, d),
        Decision::TakeOver
    );
    assert_eq!(
        decide(Some(&spec(Some(""), Some(t))), ME, t, d),
        Decision::TakeOver
    );
    assert_eq!(
        decide(Some(&spec(Some(OTHER), None)), ME, t, d),
        Decision::TakeOver
    );
    let renewed = t - time::Duration::seconds(14);
    assert_eq!(
        decide(Some(&spec(Some(OTHER), Some(renewed))), ME, t, d),
        Decision::HeldByOther {
            holder: OTHER.to_owned(),
            until: renewed + time::Duration::seconds(15)
        }
    );
    let expired = t - time::Duration::seconds(15);
    assert_eq!(
        decide(Some(&spec(Some(OTHER), Some(expired))), ME, t, d),
        Decision::TakeOver
    );
}
