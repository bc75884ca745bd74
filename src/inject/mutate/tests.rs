use serde_json::json;

use super::*;
use crate::inject::{NamespaceInjection as Ns, POD_INJECT};

fn cfg() -> InjectConfig {
    InjectConfig::default()
}

/// A realistic pod: two containers (one with its own mounts and env), an
/// init container of its own, a volume and a container already using our
/// preferred names, and a field this build does not know.
fn shop_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "cart-7d9f",
            "namespace": "shop",
            "labels": {"app": "cart"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        "spec": {
            "serviceAccountName": "cart",
            "initContainers": [{"name": "migrate", "image": "cart:1", "command": ["migrate"]}],
            "containers": [
                {
                    "name": "cart",
                    "image": "cart:1",
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "volumeMounts": [{"name": "meshid-token", "mountPath": "/data"}],
                },
                {"name": "meshid-proxy", "image": "someone-elses:2"},
            ],
            "volumes": [{"name": "meshid-token", "emptyDir": {}}],
            "futureField": {"kept": true},
        },
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn injected(mut pod: Value) -> Value {
    assert_eq!(
        inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap(),
        Outcome::Injected
    );
    pod
}

#[test]
fn an_injected_pod_holds_init_rules_then_the_native_sidecar_then_its_own_init_containers() {
    let pod = injected(shop_pod());
    let spec = &pod["spec"];
    // Our names were taken by the pod's own container and volume: ours get a suffix.
    assert_eq!(
        names(&spec["initContainers"]),
        ["meshid-init", "meshid-proxy-2", "migrate"]
    );
    assert_eq!(names(&spec["containers"]), ["cart", "meshid-proxy"]);
    assert_eq!(
        names(&spec["volumes"]),
        ["meshid-token", "meshid-agent-socket", "meshid-token-2"]
    );
    assert_eq!(spec["futureField"], json!({"kept": true}));

    let init = &spec["initContainers"][0];
    assert_eq!(init["command"], json!(["meshid-proxy"]));
    assert_eq!(init["args"][0], "init");
    assert!(init["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--proxy-uid=1337")));
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["args"][0], "--capture");
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 1337);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15020);
    assert!(proxy["resources"]["requests"]["cpu"].is_string());
    assert!(proxy["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        proxy["volumeMounts"],
        json!([
            {"name": "meshid-agent-socket", "mountPath": "/var/run/meshid", "readOnly": true},
            {"name": "meshid-token-2", "mountPath": TOKEN_DIR, "readOnly": true},
        ])
    );
    assert_eq!(
        spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "istio-ca", "expirationSeconds": 3600, "path": "meshid-token"})
    );
    assert_eq!(spec["volumes"][1]["hostPath"]["path"], "/var/run/meshid");

    // Every application container, the pod's own init container included,
    // reaches the Workload API; the pod's own mounts and env are kept.
    for c in [
        &spec["initContainers"][2],
        &spec["containers"][0],
        &spec["containers"][1],
    ] {
        let env = c["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///var/run/meshid/agent.sock"})),
            "{c}"
        );
        assert!(c["volumeMounts"].as_array().unwrap().contains(
            &json!({"name": "meshid-agent-socket", "mountPath": "/var/run/meshid", "readOnly": true})
        ));
    }
    assert_eq!(
        spec["containers"][0]["env"][0],
        json!({"name": "MODE", "value": "prod"})
    );

    let meta = &pod["metadata"];
    assert_eq!(meta["labels"][TLS_MODE_LABEL], "meshid");
    assert_eq!(meta["labels"]["app"], "cart");
    assert_eq!(meta["annotations"]["prometheus.io/scrape"], "true");
    let status: Value =
        serde_json::from_str(meta["annotations"][STATUS_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(
        status["initContainers"],
        json!(["meshid-init", "meshid-proxy-2"])
    );
}

#[test]
fn injecting_twice_changes_nothing_the_second_time() {
    let once = injected(shop_pod());
    let mut twice = once.clone();
    let outcome = inject_template(&mut twice, "shop", &Ns::Enabled, &cfg()).unwrap();
    assert_eq!(
        outcome,
        Outcome::Skipped("already injected by meshid".into())
    );
    assert_eq!(twice, once);
}

#[test]
fn a_pod_without_lists_or_metadata_gets_them() {
    let mut pod = json!({"spec": {"containers": [{"name": "app", "image": "a"}]}});
    inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap();
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["meshid-init", "meshid-proxy"]
    );
    assert_eq!(pod["metadata"]["labels"][TLS_MODE_LABEL], "meshid");
}

#[test]
fn existing_socket_mount_and_spiffe_variable_are_kept() {
    let mut pod = json!({"spec": {"containers": [{
        "name": "app",
        "image": "a",
        "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///elsewhere.sock"}],
        "volumeMounts": [{"name": "mine", "mountPath": "/var/run/meshid"}],
    }], "volumes": [{"name": "mine", "emptyDir": {}}]}});
    inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap();
    let app = &pod["spec"]["containers"][0];
    assert_eq!(app["env"].as_array().unwrap().len(), 1);
    assert_eq!(app["env"][0]["value"], "unix:///elsewhere.sock");
    assert_eq!(app["volumeMounts"].as_array().unwrap().len(), 1);
}

#[test]
fn capture_annotations_become_init_flags() {
    let mut pod = shop_pod();
    pod["metadata"]["annotations"] = json!({
        "traffic.meshid.io/excludeInboundPorts": "9090, 9100-9110",
        "traffic.meshid.io/excludeOutboundPorts": "5432",
        "traffic.meshid.io/excludeOutboundIPRanges": "10.96.0.0/12,fd00::/108",
        "traffic.meshid.io/includeInboundPorts": "8080",
    });
    let pod = injected(pod);
    let args = &pod["spec"]["initContainers"][0]["args"];
    for flag in [
        "--exclude-inbound-ports=9090,9100-9110",
        "--exclude-outbound-ports=5432",
        "--exclude-outbound-cidrs=10.96.0.0/12,fd00::/108",
        "--include-inbound-ports=8080",
        "--proxy-ports=15008,15020",
    ] {
        assert!(
            args.as_array().unwrap().contains(&json!(flag)),
            "{flag} in {args}"
        );
    }
}

#[test]
fn a_bad_capture_annotation_denies_the_pod_naming_annotation_and_entry() {
    for (annotation, value, entry) in [
        ("traffic.meshid.io/excludeInboundPorts", "9090,90x", "90x"),
        ("traffic.meshid.io/excludeOutboundPorts", "70000", "70000"),
        ("traffic.meshid.io/includeInboundPorts", "8080,0", "0"),
        (
            "traffic.meshid.io/excludeOutboundIPRanges",
            "10.0.0.0/8,10.0.0/33",
            "10.0.0/33",
        ),
    ] {
        let mut pod = shop_pod();
        pod["metadata"]["annotations"][annotation] = json!(value);
        let before = pod.clone();
        let err = inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(annotation), "{message}");
        assert!(message.contains(&format!("{entry:?}")), "{message}");
        assert_eq!(pod, before, "a denied pod is not half-changed");
    }
    let mut pod = shop_pod();
    pod["metadata"]["annotations"]["traffic.meshid.io/excludeOutboundPorts"] = json!(5432);
    let err = inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denied::NotAString {
            annotation: "traffic.meshid.io/excludeOutboundPorts"
        }
    );
}

#[test]
fn a_container_running_as_the_proxy_uid_is_denied_by_name() {
    // Its own securityContext, or the pod's, or in an init container.
    let mut own = shop_pod();
    own["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1337});
    let mut pod_level = shop_pod();
    pod_level["spec"]["securityContext"] = json!({"runAsUser": 1337});
    let mut init = shop_pod();
    init["spec"]["initContainers"][0]["securityContext"] = json!({"runAsUser": 1337});
    for (mut pod, container) in [(own, "cart"), (pod_level, "migrate"), (init, "migrate")] {
        let err = inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap_err();
        assert_eq!(
            err,
            Denied::RunsAsProxyUid {
                container: container.into(),
                uid: 1337
            }
        );
        assert!(err.to_string().contains("bypass the mesh"));
    }
    // A container that overrides a pod-level 1337 with its own uid is fine
    // only if every container does.
    let mut ok = shop_pod();
    ok["spec"]["securityContext"] = json!({"runAsUser": 1337});
    for list in ["initContainers", "containers"] {
        for c in ok["spec"][list].as_array_mut().unwrap() {
            c["securityContext"] = json!({"runAsUser": 1000});
        }
    }
    assert_eq!(
        inject_template(&mut ok, "shop", &Ns::Enabled, &cfg()).unwrap(),
        Outcome::Injected
    );
}

fn skipped_why(mut pod: Value, ns: &str, label: Ns) -> String {
    let outcome = inject_template(&mut pod, ns, &label, &cfg()).unwrap();
    let Outcome::Skipped(why) = outcome else {
        panic!("injected: {pod}");
    };
    assert_eq!(
        pod["metadata"]["annotations"][SKIPPED_ANNOTATION],
        json!(why)
    );
    assert!(
        pod["spec"]
            .get("initContainers")
            .unwrap()
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    why
}

#[test]
fn pods_that_must_not_be_injected_are_left_alone_with_the_reason() {
    let mut host = shop_pod();
    host["spec"]["hostNetwork"] = json!(true);
    assert!(skipped_why(host, "shop", Ns::Enabled).contains("hostNetwork"));

    let mut istio = shop_pod();
    istio["metadata"]["annotations"]["sidecar.istio.io/status"] = json!("{}");
    assert!(skipped_why(istio, "shop", Ns::Enabled).contains("Istio"));
    let mut istio_container = shop_pod();
    istio_container["spec"]["containers"][1]["name"] = json!("istio-proxy");
    assert!(skipped_why(istio_container, "shop", Ns::Enabled).contains("Istio"));

    assert!(skipped_why(shop_pod(), "meshid-system", Ns::Enabled).contains("meshid's own"));
    let mut part_of = shop_pod();
    part_of["metadata"]["labels"]["app.kubernetes.io/part-of"] = json!("meshid");
    assert!(skipped_why(part_of, "shop", Ns::Enabled).contains("meshid's own"));

    let mut no = shop_pod();
    no["metadata"]["annotations"][POD_INJECT] = json!("false");
    assert!(skipped_why(no, "shop", Ns::Enabled).contains("\"false\""));
}

#[test]
fn the_namespace_label_and_the_pod_annotation_decide_together() {
    let asks = |pod: &mut Value| pod["metadata"]["annotations"][POD_INJECT] = json!("true");
    // A pod asking, in a namespace that is not labelled: injected.
    let mut pod = shop_pod();
    asks(&mut pod);
    assert_eq!(
        inject_template(&mut pod, "shop", &Ns::Unset, &cfg()).unwrap(),
        Outcome::Injected
    );
    // The label works as the annotation does (the webhook's objectSelector matches labels).
    let mut pod = shop_pod();
    pod["metadata"]["labels"][POD_INJECT] = json!("true");
    assert_eq!(
        inject_template(&mut pod, "shop", &Ns::Unset, &cfg()).unwrap(),
        Outcome::Injected
    );
    // ... but never in a disabled namespace.
    let mut pod = shop_pod();
    asks(&mut pod);
    assert!(skipped_why(pod, "shop", Ns::Disabled).contains("disabled"));
    // Not asking, namespace not labelled, or labelled with another value.
    assert!(skipped_why(shop_pod(), "shop", Ns::Unset).contains("not labelled"));
    let why = skipped_why(shop_pod(), "shop", Ns::Other("yes".into()));
    assert!(why.contains("\"yes\"") && why.contains("ignored"), "{why}");
    // A value other than true/false is refused, naming it.
    let mut pod = shop_pod();
    pod["metadata"]["annotations"][POD_INJECT] = json!("yes");
    let err = inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denied::BadInjectValue {
            value: "yes".into()
        }
    );
}

#[test]
fn what_is_not_a_pod_template_is_refused() {
    for bad in [
        json!([]),
        json!({"metadata": {}}),
        json!({"spec": "x"}),
        json!({"metadata": 3, "spec": {}}),
        json!({"spec": {"containers": {"name": "x"}}}),
    ] {
        let mut pod = bad.clone();
        assert!(
            matches!(
                inject_template(&mut pod, "shop", &Ns::Enabled, &cfg()),
                Err(Denied::Malformed(_))
            ),
            "{bad}"
        );
        assert_eq!(pod, bad);
    }
}
