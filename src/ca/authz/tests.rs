//! Every authorization rule, including attempts to break it.

use super::*;
use crate::ca::authn::TokenCaller;
use crate::platform::VerifiedToken;
use time::OffsetDateTime;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(&td(), ns, sa).unwrap()
}

fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        node_name: Some(node.into()),
        service_account: sa.into(),
        labels: Default::default(),
        annotations: Default::default(),
        phase: Some("Running".into()),
        creation_timestamp: None,
        pod_ips: Vec::new(),
    }
}

fn token_caller(ns: &str, sa: &str, pod: Option<(&str, &str)>, node: Option<&str>) -> Caller {
    Caller::Token(Box::new(TokenCaller {
        identity: id(ns, sa),
        claims: VerifiedToken {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
            audiences: vec!["istio-ca".into()],
            pod_name: pod.map(|p| p.0.into()),
            pod_uid: pod.map(|p| p.1.into()),
            node_name: node.map(Into::into),
            node_uid: None,
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        },
    }))
}

fn trusted() -> TrustedNodeAccounts {
    "meshid-system/meshid-agent".parse().unwrap()
}

fn decide(
    caller: &Caller,
    impersonate: Option<&SpiffeId>,
    caller_pod: Option<&Pod>,
    target_pods: &[Pod],
) -> Result<Permit, Unauthorized> {
    check_authorized(&AuthzInput {
        caller,
        impersonate,
        trust_domain: &td(),
        trusted: &trusted(),
        caller_pod,
        target_pods,
        issued_to: None,
    })
}

fn cert_caller(ns: &str, sa: &str) -> Caller {
    Caller::Certificate {
        identity: id(ns, sa),
        serial_hex: "0abc".into(),
        lifetime: std::time::Duration::from_secs(60),
    }
}

fn renew(
    caller: &Caller,
    pods: &[Pod],
    issued_to: Option<(&str, &str)>,
) -> Result<Permit, Unauthorized> {
    check_authorized(&AuthzInput {
        caller,
        impersonate: None,
        trust_domain: &td(),
        trusted: &trusted(),
        caller_pod: None,
        target_pods: pods,
        issued_to,
    })
}

fn with_phase(mut p: Pod, phase: &str) -> Pod {
    p.phase = Some(phase.into());
    p
}

#[test]
fn caller_gets_its_own_identity() {
    let workload = pod("default", "web-1", "uid-1", "web", "node-a");
    let caller = token_caller("default", "web", Some(("web-1", "uid-1")), Some("node-a"));
    let permit = decide(&caller, None, Some(&workload), &[]).unwrap();
    assert_eq!(permit.identity, id("default", "web"));
    assert_eq!(permit.node.as_deref(), Some("node-a"));
    assert!(!permit.impersonated);
}

#[test]
fn asking_for_own_identity_by_impersonation_is_not_impersonation() {
    let caller = token_caller("default", "web", None, None);
    let own = id("default", "web");
    let permit = decide(&caller, Some(&own), None, &[]).unwrap();
    assert_eq!(permit.identity, own);
    assert!(!permit.impersonated);
}

#[test]
fn token_for_deleted_pod_is_refused() {
    let caller = token_caller("default", "web", Some(("web-1", "uid-1")), None);
    assert!(matches!(
        decide(&caller, None, None, &[]),
        Err(Unauthorized::PodGone { .. })
    ));
}

#[test]
fn token_whose_pod_uid_differs_is_refused() {
    let recreated = pod("default", "web-1", "uid-2", "web", "node-a");
    let caller = token_caller("default", "web", Some(("web-1", "uid-1")), None);
    let err = decide(&caller, None, Some(&recreated), &[]).unwrap_err();
    assert!(matches!(err, Unauthorized::PodUidMismatch { .. }), "{err}");
    assert!(err.to_string().contains("uid-1") && err.to_string().contains("uid-2"));
}

#[test]
fn token_node_claim_must_match_pod_node() {
    let workload = pod("default", "web-1", "uid-1", "web", "node-a");
    let caller = token_caller("default", "web", Some(("web-1", "uid-1")), Some("node-b"));
    assert!(matches!(
        decide(&caller, None, Some(&workload), &[]),
        Err(Unauthorized::NodeMismatch { .. })
    ));
}

#[test]
fn trusted_agent_gets_identity_of_pod_on_its_node() {
    let agent_pod = pod(
        "meshid-system",
        "agent-x",
        "a-uid",
        "meshid-agent",
        "node-a",
    );
    let caller = token_caller(
        "meshid-system",
        "meshid-agent",
        Some(("agent-x", "a-uid")),
        Some("node-a"),
    );
    let target = id("shop", "cart");
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    let permit = decide(&caller, Some(&target), Some(&agent_pod), &pods).unwrap();
    assert_eq!(permit.identity, target);
    assert!(permit.impersonated);
    assert_eq!(permit.node.as_deref(), Some("node-a"));
}

#[test]
fn untrusted_caller_cannot_impersonate_and_both_identities_are_named() {
    let caller = token_caller("default", "web", None, Some("node-a"));
    let target = id("shop", "cart");
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    let err = decide(&caller, Some(&target), None, &pods).unwrap_err();
    assert!(matches!(err, Unauthorized::NotTrustedNode { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("ns/default/sa/web") && msg.contains("ns/shop/sa/cart"),
        "{msg}"
    );
}

#[test]
fn certificate_caller_cannot_impersonate_even_as_a_trusted_account() {
    let caller = cert_caller("meshid-system", "meshid-agent");
    let target = id("shop", "cart");
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    assert!(matches!(
        decide(&caller, Some(&target), None, &pods),
        Err(Unauthorized::NotTrustedNode { .. })
    ));
}

#[test]
fn agent_cannot_get_identity_of_pod_on_another_node() {
    let agent_pod = pod(
        "meshid-system",
        "agent-x",
        "a-uid",
        "meshid-agent",
        "node-a",
    );
    let caller = token_caller(
        "meshid-system",
        "meshid-agent",
        Some(("agent-x", "a-uid")),
        Some("node-a"),
    );
    let target = id("shop", "cart");
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-b")];
    let err = decide(&caller, Some(&target), Some(&agent_pod), &pods).unwrap_err();
    assert!(
        matches!(err, Unauthorized::NoPodOnNode { ref node, .. } if node == "node-a"),
        "{err}"
    );
}

#[test]
fn agent_cannot_get_identity_of_a_finished_pod() {
    let agent_pod = pod(
        "meshid-system",
        "agent-x",
        "a-uid",
        "meshid-agent",
        "node-a",
    );
    let caller = token_caller(
        "meshid-system",
        "meshid-agent",
        Some(("agent-x", "a-uid")),
        None,
    );
    let mut done = pod("shop", "cart-1", "c-uid", "cart", "node-a");
    done.phase = Some("Succeeded".into());
    assert!(matches!(
        decide(
            &caller,
            Some(&id("shop", "cart")),
            Some(&agent_pod),
            &[done]
        ),
        Err(Unauthorized::NoPodOnNode { .. })
    ));
}

#[test]
fn agent_without_known_node_cannot_impersonate() {
    let caller = token_caller("meshid-system", "meshid-agent", None, None);
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    assert!(matches!(
        decide(&caller, Some(&id("shop", "cart")), None, &pods),
        Err(Unauthorized::NodeUnknown { .. })
    ));
}

#[test]
fn foreign_trust_domain_is_never_granted() {
    let caller = token_caller("meshid-system", "meshid-agent", None, Some("node-a"));
    let foreign = SpiffeId::parse("spiffe://evil.example/ns/shop/sa/cart").unwrap();
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    assert!(matches!(
        decide(&caller, Some(&foreign), None, &pods),
        Err(Unauthorized::ForeignIdentity { .. })
    ));
    let odd = SpiffeId::parse("spiffe://cluster.local/admin").unwrap();
    assert!(matches!(
        decide(&caller, Some(&odd), None, &pods),
        Err(Unauthorized::ForeignIdentity { .. })
    ));
}

#[test]
fn trusted_node_accounts_parse_and_reject_bad_entries() {
    let t: TrustedNodeAccounts = " istio-system/ztunnel , meshid-system/meshid-agent,"
        .parse()
        .unwrap();
    assert!(t.contains("istio-system", "ztunnel"));
    assert!(t.contains("meshid-system", "meshid-agent"));
    assert!(!t.contains("istio-system", "meshid-agent"));
    assert!("ztunnel".parse::<TrustedNodeAccounts>().is_err());
    assert!("a/b/c".parse::<TrustedNodeAccounts>().is_err());
    assert!("".parse::<TrustedNodeAccounts>().unwrap().is_empty());
}

#[test]
fn renewal_needs_a_running_pod_of_the_account() {
    let caller = cert_caller("default", "web");
    // The attack: the pod's manifest was deleted; the certificate still renews.
    assert!(matches!(
        renew(&caller, &[], None),
        Err(Unauthorized::RenewalNoPod { .. })
    ));
    for phase in ["Succeeded", "Failed", "Unknown"] {
        let done = with_phase(pod("default", "web-1", "u1", "web", "node-a"), phase);
        assert!(
            matches!(
                renew(&caller, &[done], None),
                Err(Unauthorized::RenewalNoPod { .. })
            ),
            "{phase}"
        );
    }
    let other_account = pod("default", "web-1", "u1", "api", "node-a");
    assert!(renew(&caller, &[other_account], None).is_err());
    let running = pod("default", "web-1", "u1", "web", "node-a");
    let permit = renew(&caller, std::slice::from_ref(&running), None).unwrap();
    assert_eq!(permit.identity, id("default", "web"));
    assert!(permit.pods.is_empty(), "issued to no one pod");
    // Pending counts (native sidecars get their certificate before they run).
    assert!(renew(&caller, &[with_phase(running, "Pending")], None).is_ok());
}

#[test]
fn renewal_of_a_certificate_issued_to_a_pod_stops_when_that_pod_is_gone() {
    let caller = cert_caller("default", "web");
    let successor = pod("default", "web-2", "u2", "web", "node-b");
    // Another pod of the account runs, but the one the certificate was for is gone.
    let err = renew(
        &caller,
        std::slice::from_ref(&successor),
        Some(("web-1", "u1")),
    )
    .unwrap_err();
    assert!(matches!(err, Unauthorized::RenewalPodGone { .. }), "{err}");
    assert!(err.to_string().contains("default/web-1"), "{err}");
    // A pod recreated under the same name has a new UID: still gone.
    let recreated = pod("default", "web-1", "u9", "web", "node-a");
    assert!(renew(&caller, &[recreated], Some(("web-1", "u1"))).is_err());
    // While the pod runs, the renewal is for it, on its node.
    let original = pod("default", "web-1", "u1", "web", "node-a");
    let permit = renew(&caller, &[successor, original], Some(("web-1", "u1"))).unwrap();
    assert_eq!(permit.pods, vec![("web-1".to_owned(), "u1".to_owned())]);
    assert_eq!(permit.node.as_deref(), Some("node-a"));
}

#[test]
fn a_token_bound_to_a_finished_pod_is_refused() {
    for phase in ["Succeeded", "Failed", "Unknown"] {
        let workload = with_phase(pod("default", "web-1", "uid-1", "web", "node-a"), phase);
        let caller = token_caller("default", "web", Some(("web-1", "uid-1")), Some("node-a"));
        let err = decide(&caller, None, Some(&workload), &[]).unwrap_err();
        assert!(
            matches!(err, Unauthorized::PodMayNotHold { .. }),
            "{phase}: {err}"
        );
    }
}

#[test]
fn a_failed_node_agent_cannot_impersonate() {
    let agent_pod = with_phase(
        pod(
            "meshid-system",
            "agent-a",
            "a-uid",
            "meshid-agent",
            "node-a",
        ),
        "Failed",
    );
    let caller = token_caller(
        "meshid-system",
        "meshid-agent",
        Some(("agent-a", "a-uid")),
        Some("node-a"),
    );
    let pods = [pod("shop", "cart-1", "c-uid", "cart", "node-a")];
    let err = decide(&caller, Some(&id("shop", "cart")), Some(&agent_pod), &pods).unwrap_err();
    assert!(matches!(err, Unauthorized::PodMayNotHold { .. }), "{err}");
}

#[test]
fn a_token_bound_to_a_pod_of_another_service_account_is_refused() {
    // The pod runs as `api`; the token says `web`.
    let workload = pod("default", "web-1", "uid-1", "api", "node-a");
    let caller = token_caller("default", "web", Some(("web-1", "uid-1")), Some("node-a"));
    let err = decide(&caller, None, Some(&workload), &[]).unwrap_err();
    assert!(
        matches!(
            err,
            Unauthorized::PodMayNotHold {
                refusal: PodRefusal::OtherAccount { .. },
                ..
            }
        ),
        "{err}"
    );
}
