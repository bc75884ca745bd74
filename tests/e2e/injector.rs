//! `meshid injector` as the API server meets it: a real process over TLS,
//! called by curl (checking the certificate against the webhook Service's
//! DNS name, as the API server does) with AdmissionReview v1 JSON as the
//! API server sends it; the returned JSONPatch applied to the request's pod
//! gives a Pod that passes the strict offline schema validation deploy/
//! passes (kubernetes-validate, from `.ci/validate-deploy`'s virtualenv).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use meshid::test_helpers::kube_api::{FakeApi, MUTATING_WEBHOOK_CONFIGURATIONS, NAMESPACES};
use meshid::test_helpers::process::{free_port, Managed};
use meshid::test_helpers::{CaProcess, TestEnv};
use serde_json::{json, Value};

use crate::kube::eventually;
use crate::support::{bin, http_get, write};

const SERVICE: &str = "meshid-injector.meshid-system.svc";

struct Injector {
    _process: Managed,
    addr: SocketAddr,
    metrics: SocketAddr,
}

fn spawn_injector(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Injector {
    let metrics = free_port().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("injector")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen"])
        .arg(metrics.to_string())
        .args(args)
        .env("RUST_LOG", "meshid=debug,info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let log = dir.join(format!("injector-{}.log", metrics.port()));
    let (process, line) = Managed::start(
        &mut cmd,
        log,
        "meshid injector",
        "meshid injector listening on ",
    )
    .unwrap();
    let addr = line
        .strip_prefix("meshid injector listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    Injector {
        _process: process,
        addr,
        metrics,
    }
}

/// POSTs `body` to `/inject` with curl, verifying the server as the webhook
/// Service's DNS name against `ca`. Returns (status, body), or curl's error.
fn post(addr: SocketAddr, ca: &Path, body: &[u8], method: &str) -> Result<(u16, String), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", method, "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{SERVICE}:{}:127.0.0.1", addr.port()))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{SERVICE}:{}/inject", addr.port()))
        .output()
        .expect("curl (installed by .ci/run)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((code.parse().unwrap(), body.to_owned()))
}

fn review(api_version: &str, namespace: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": api_version,
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "a7e0ab33", "groups": ["system:serviceaccounts"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }))
    .unwrap()
}

/// A pod as a ReplicaSet controller creates it.
fn shop_pod() -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "cart-6f7c9-",
            "namespace": "shop",
            "labels": {"app": "cart", "pod-template-hash": "6f7c9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-6f7c9", "uid": "f1d3c2b4-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "initContainers": [{"name": "migrate", "image": "cart:1.4", "command": ["/migrate"], "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "containers": [{
                "name": "cart", "image": "cart:1.4",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m"}},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "cart",
            "serviceAccount": "cart",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    })
}

fn response_of(body: &str) -> Value {
    let review: Value = serde_json::from_str(body).unwrap();
    review["response"].clone()
}

fn apply_patch(response: &Value, mut object: Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    json_patch::patch(&mut object, &patch).unwrap();
    object
}

/// The virtualenv `.ci/validate-deploy` installs kubernetes-validate into.
fn ci_python() -> Option<PathBuf> {
    let venv = std::env::var_os("MESHID_CI_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

/// Strict offline validation of `objects` against Kubernetes 1.30 and 1.37
/// schemas, as `.ci/validate-deploy` validates deploy/. Skips (saying so)
/// without the virtualenv.
fn assert_valid(objects: &[Value]) {
    let Some(python) = ci_python() else {
        eprintln!("SKIP schema validation: no target/ci-venv (run .ci/validate-deploy, or set MESHID_CI_VENV)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "objects.json",
        &serde_json::to_string(&objects).unwrap(),
    );
    let script = "import json, sys\nfrom kubernetes_validate import utils as kv\nbad = []\nfor o in json.load(open(sys.argv[1])):\n    for v in ('1.30.0', '1.37.0'):\n        try:\n            kv.validate(o, v, strict=True)\n        except kv.ValidationError as e:\n            bad.append(f\"{o['kind']} on {v}: {'.'.join(str(p) for p in e.path)}: {e.message}\")\nprint('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The serial and SANs of the certificate served at `addr` (openssl s_client).
fn served_certificate(addr: SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {SERVICE} </dev/null 2>/dev/null | openssl x509 -noout -serial -ext subjectAltName"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec![SERVICE.to_owned()]).unwrap();
    (
        write(dir, "tls.crt", &cert.cert.pem()),
        write(dir, "tls.key", &cert.signing_key.serialize_pem()),
    )
}

#[test]
fn admission_reviews_over_tls_are_answered_with_a_patch_that_gives_a_valid_pod() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let inj = spawn_injector(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(http_get(inj.metrics, "/readyz").0, 200);

    // A pod that asks for injection (the namespace's label is unknown without --kube).
    let mut pod = shop_pod();
    pod["metadata"]["annotations"] = json!({"sidecar.meshid.io/inject": "true", "traffic.meshid.io/excludeOutboundPorts": "5432"});
    let (code, body) = post(
        inj.addr,
        &cert,
        &review("admission.k8s.io/v1", "shop", &pod),
        "POST",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let response = response_of(&body);
    assert_eq!(response["uid"], "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    assert_eq!(response["allowed"], true);
    let mut injected = apply_patch(&response, pod.clone());
    let inits: Vec<&str> = injected["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["meshid-init", "meshid-proxy", "migrate"]);
    assert!(injected["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--exclude-outbound-ports=5432")));
    // As the API server would store it: with a name.
    injected["metadata"]["name"] = json!("cart-6f7c9-abcde");
    assert_valid(&[injected]);

    // v1beta1 is answered in kind.
    let (code, body) = post(
        inj.addr,
        &cert,
        &review("admission.k8s.io/v1beta1", "shop", &pod),
        "POST",
    )
    .unwrap();
    assert_eq!(code, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");

    // A bad port list: the pod is denied, naming the annotation and the entry.
    let mut bad = shop_pod();
    bad["metadata"]["annotations"] = json!({"sidecar.meshid.io/inject": "true", "traffic.meshid.io/excludeInboundPorts": "8080,90000"});
    let (code, body) = post(
        inj.addr,
        &cert,
        &review("admission.k8s.io/v1", "shop", &bad),
        "POST",
    )
    .unwrap();
    assert_eq!(code, 200);
    let response = response_of(&body);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("traffic.meshid.io/excludeInboundPorts") && message.contains("\"90000\""),
        "{message}"
    );

    // A container running as the proxy's uid: denied, naming it.
    let mut uid = pod.clone();
    uid["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1337});
    let (_, body) = post(
        inj.addr,
        &cert,
        &review("admission.k8s.io/v1", "shop", &uid),
        "POST",
    )
    .unwrap();
    let message = response_of(&body)["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("\"cart\"") && message.contains("1337"),
        "{message}"
    );

    // Not JSON, too large, another kind, GET: 400/405 with the reason, never a crash.
    let (code, body) = post(inj.addr, &cert, b"{not json", "POST").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("not JSON"), "{body}");
    let (code, body) = post(inj.addr, &cert, &vec![b' '; 7 * 1024 * 1024], "POST").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("at most"), "{body}");
    let (code, body) = post(
        inj.addr,
        &cert,
        br#"{"apiVersion":"v1","kind":"Pod"}"#,
        "POST",
    )
    .unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("\"Pod\""), "{body}");
    let (code, _) = post(inj.addr, &cert, b"", "GET").unwrap();
    assert_eq!(code, 405);
    // Still serving after all that.
    let (code, _) = post(
        inj.addr,
        &cert,
        &review("admission.k8s.io/v1", "shop", &pod),
        "POST",
    )
    .unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = http_get(inj.metrics, "/metrics");
    assert!(
        metrics.contains("meshid_injector_reviews_total{verdict=\"injected\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshid_injector_reviews_total{verdict=\"bad_request\"} 3"),
        "{metrics}"
    );
}

#[test]
fn inject_file_gives_workloads_that_validate() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "shop.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: cart}\n  template:\n    metadata:\n      labels: {app: cart}\n      annotations: {traffic.meshid.io/excludeOutboundIPRanges: 10.96.0.0/12}\n    spec:\n      containers:\n        - name: cart\n          image: cart:1.4\n          ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  selector: {app: cart}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: report\n  namespace: shop\nspec:\n  schedule: '0 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: report, image: report:1}]\n",
    );
    let out = Command::new(bin())
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Deployment cart: injected") && stderr.contains("CronJob report: injected"),
        "{stderr}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs[0]["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"],
        "Always"
    );
    assert!(
        docs[0]["spec"]["template"]["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--exclude-outbound-cidrs=10.96.0.0/12"))
    );
    assert_valid(&docs);

    // Bad input: the document and the fault are named, nothing on stdout.
    let bad = write(dir.path(), "bad.yaml", "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations: {traffic.meshid.io/includeInboundPorts: 'http'}\n    spec: {containers: [{name: web, image: w}]}\n");
    let out = Command::new(bin())
        .args(["inject", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1 (Deployment web)")
            && stderr.contains("traffic.meshid.io/includeInboundPorts")
            && stderr.contains("\"http\""),
        "{stderr}"
    );
    let out = Command::new(bin())
        .args(["inject", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_issues_the_serving_certificate_and_the_webhook_trusts_it() {
    let env = TestEnv::new();
    let dns = format!("--workload-dns-names=meshid-system/meshid-injector={SERVICE}");
    // The CA's address is fixed; run it once so its root exists, then stop it.
    let ca_addr = free_port().unwrap().to_string();
    let mut ca = CaProcess::spawn_at(bin(), &env, &ca_addr, &[&dns]).unwrap();
    ca.terminate().unwrap();
    drop(ca);
    let root = write(env.dir.path(), "root-cert.pem", &env.root_pem());
    let token = env.token_file(
        "injector-token",
        "meshid-system",
        "meshid-injector",
        None,
        None,
    );

    // The API server, with our MutatingWebhookConfiguration (no caBundle) and labelled namespaces.
    let api = FakeApi::start();
    let kubeconfig = api.kubeconfig(env.dir.path());
    let hook = |name: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "clientConfig": {"service": {"name": "meshid-injector", "namespace": "meshid-system", "path": "/inject", "port": 443}}})
    };
    api.put(
        &MUTATING_WEBHOOK_CONFIGURATIONS,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "meshid-injector"},
            "webhooks": [hook("namespace.inject.meshid.io"), hook("object.inject.meshid.io")]}),
    );
    for (name, label) in [
        ("shop", Some("enabled")),
        ("quiet", Some("disabled")),
        ("odd", Some("yes")),
        ("plain", None),
    ] {
        let labels = label.map_or_else(|| json!({}), |l| json!({"meshid.io/inject": l}));
        api.put(&NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
    }

    // The injector starts while the CA is down: it serves nothing and is not ready.
    let inj = spawn_injector(
        env.dir.path(),
        &[
            "--kube",
            "--ca-address",
            &format!("https://{ca_addr}"),
            "--ca-root",
            root.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            // Short, so the test sees a renewal (at half the lifetime).
            "--serving-cert-ttl",
            "6s",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let pod = shop_pod();
    assert_eq!(http_get(inj.metrics, "/readyz").0, 503);
    let refused = post(
        inj.addr,
        &root,
        &review("admission.k8s.io/v1", "shop", &pod),
        "POST",
    );
    assert!(
        refused.is_err(),
        "answered without a certificate: {refused:?}"
    );

    // The CA comes up: the injector gets its certificate (URI and DNS SAN,
    // checked by curl against the Service name), becomes ready, and the
    // webhook configuration's caBundle becomes the trust bundle.
    let _ca = CaProcess::spawn_at(bin(), &env, &ca_addr, &[&dns]).unwrap();
    eventually(
        "the injector to become ready",
        Duration::from_secs(30),
        || http_get(inj.metrics, "/readyz").0 == 200,
    )
    .await;
    let bundle = base64::engine::general_purpose::STANDARD.encode(env.root_pem());
    eventually(
        "caBundle to equal the trust bundle",
        Duration::from_secs(30),
        || {
            api.get(&MUTATING_WEBHOOK_CONFIGURATIONS, "", "meshid-injector")
                .is_some_and(|c| {
                    c["webhooks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|w| w["clientConfig"]["caBundle"] == bundle)
                })
        },
    )
    .await;
    // The certificate the injector serves: issued by the CA, for its
    // identity and the Service name; renewed before it expires.
    let first = served_certificate(inj.addr);
    assert!(
        first.contains("URI:spiffe://cluster.local/ns/meshid-system/sa/meshid-injector"),
        "{first}"
    );
    assert!(first.contains(&format!("DNS:{SERVICE}")), "{first}");
    let serial = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("serial="))
            .unwrap()
            .to_owned()
    };
    eventually(
        "the serving certificate to be renewed",
        Duration::from_secs(20),
        || serial(&served_certificate(inj.addr)) != serial(&first),
    )
    .await;
    let config = api
        .get(&MUTATING_WEBHOOK_CONFIGURATIONS, "", "meshid-injector")
        .unwrap();
    assert_eq!(
        config["webhooks"][1]["clientConfig"]["service"]["path"], "/inject",
        "the rest is kept"
    );

    // Namespace labels decide: enabled injects; disabled wins over the pod's
    // wish; another value is ignored and said so.
    let verdict = |namespace: &str, pod: &Value| {
        let (code, body) = post(
            inj.addr,
            &root,
            &review("admission.k8s.io/v1", namespace, pod),
            "POST",
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let response = response_of(&body);
        let after = apply_patch(&response, pod.clone());
        after["metadata"]["annotations"]["sidecar.meshid.io/skipped"]
            .as_str()
            .map_or_else(|| "injected".to_owned(), str::to_owned)
    };
    assert_eq!(verdict("shop", &pod), "injected");
    let mut asks = pod.clone();
    asks["metadata"]["labels"]["sidecar.meshid.io/inject"] = json!("true");
    assert!(verdict("quiet", &asks).contains("disabled"));
    assert!(verdict("odd", &pod).contains("\"yes\""));
    assert_eq!(verdict("odd", &asks), "injected");
    assert_eq!(verdict("plain", &asks), "injected");
}
