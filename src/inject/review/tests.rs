use serde_json::json;

use super::*;

fn review(api_version: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "cart-7d9f-", "labels": {"app": "cart"}},
        "spec": {"containers": [{"name": "cart", "image": "cart:1"}]},
    })
}

fn enabled(_: &str) -> NamespaceInjection {
    NamespaceInjection::Enabled
}

fn patched(answer: &Answer, mut object: Value) -> Value {
    let response = &answer.review["response"];
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    json_patch::patch(&mut object, &patch).unwrap();
    object
}

#[test]
fn a_pod_create_is_answered_with_a_patch_that_injects_it_and_the_uid_echoed() {
    let answer = answer(
        &review("admission.k8s.io/v1", pod()),
        enabled,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(answer.verdict, Verdict::Injected);
    assert_eq!(answer.pod, "shop/cart-7d9f-");
    let r = &answer.review;
    assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r["kind"], "AdmissionReview");
    assert_eq!(r["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["response"]["allowed"], true);
    let mut expected = pod();
    inject_template(
        &mut expected,
        "shop",
        &NamespaceInjection::Enabled,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(patched(&answer, pod()), expected);
}

#[test]
fn v1beta1_is_answered_in_kind() {
    let answer = answer(
        &review("admission.k8s.io/v1beta1", pod()),
        enabled,
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(answer.review["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer.verdict, Verdict::Injected);
}

#[test]
fn the_namespace_label_is_asked_for_the_request_namespace() {
    let asked = std::sync::Mutex::new(Vec::new());
    let answer = answer(
        &review("admission.k8s.io/v1", pod()),
        |ns| {
            asked.lock().unwrap().push(ns.to_owned());
            NamespaceInjection::Other("on".into())
        },
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(*asked.lock().unwrap(), ["shop"]);
    let Verdict::Skipped(why) = &answer.verdict else {
        panic!("{:?}", answer.verdict)
    };
    assert!(why.contains("\"on\""));
    // Skipped pods get the reason as an annotation, through the patch.
    assert_eq!(
        patched(&answer, pod())["metadata"]["annotations"]["sidecar.meshid.io/skipped"],
        json!(why)
    );
}

#[test]
fn a_denied_pod_gets_allowed_false_and_a_message_naming_the_fault() {
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"traffic.meshid.io/excludeInboundPorts": "80,http"});
    let answer = answer(
        &review("admission.k8s.io/v1", bad),
        enabled,
        &InjectConfig::default(),
    )
    .unwrap();
    let response = &answer.review["response"];
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("traffic.meshid.io/excludeInboundPorts"),
        "{message}"
    );
    assert!(message.contains("\"http\""), "{message}");
    assert_eq!(answer.verdict.label(), "denied");
}

#[test]
fn what_is_not_a_pod_create_is_allowed_unchanged() {
    let mut update: Value = serde_json::from_slice(&review("admission.k8s.io/v1", pod())).unwrap();
    update["request"]["operation"] = json!("UPDATE");
    let mut deployment: Value =
        serde_json::from_slice(&review("admission.k8s.io/v1", pod())).unwrap();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    for body in [update, deployment] {
        let answer = answer(
            &serde_json::to_vec(&body).unwrap(),
            enabled,
            &InjectConfig::default(),
        )
        .unwrap();
        assert_eq!(answer.verdict.label(), "ignored");
        assert_eq!(answer.review["response"]["allowed"], true);
        assert!(answer.review["response"].get("patch").is_none());
    }
}

#[test]
fn bodies_that_are_not_reviews_are_refused_naming_what_is_wrong() {
    let cfg = InjectConfig::default();
    let err = answer(b"<html>", enabled, &cfg).unwrap_err();
    assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
    let big = vec![b' '; MAX_REVIEW_BYTES + 1];
    assert!(matches!(
        answer(&big, enabled, &cfg),
        Err(ReviewError::TooLarge { .. })
    ));
    for (api_version, kind) in [
        ("admission.k8s.io/v1", "Pod"),
        ("admission.k8s.io/v2", "AdmissionReview"),
        ("", ""),
    ] {
        let body = serde_json::to_vec(&json!({"apiVersion": api_version, "kind": kind})).unwrap();
        let err = answer(&body, enabled, &cfg).unwrap_err();
        assert!(matches!(err, ReviewError::NotAReview { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{kind:?}")), "{err}");
    }
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert_eq!(
        answer(no_request, enabled, &cfg).unwrap_err().to_string(),
        "the AdmissionReview has no request"
    );
    let mut no_uid: Value = serde_json::from_slice(&review("admission.k8s.io/v1", pod())).unwrap();
    no_uid["request"]["uid"] = json!("");
    let err = answer(&serde_json::to_vec(&no_uid).unwrap(), enabled, &cfg).unwrap_err();
    assert_eq!(err.to_string(), "the AdmissionReview has no request.uid");
}
