use std::fs;
use std::time::Duration as StdDuration;

use time::macros::datetime;
use time::OffsetDateTime;

use super::*;
use crate::identity::TrustDomain;
use crate::policy::MtlsMode;
use crate::time::TestClock;

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

const CLUSTER: &str = r#"# A cluster in one file.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: uid-web-1
  labels: {app: web}
  annotations:
    meshid.io/unix-uid: "1000"
  creationTimestamp: "2025-05-01T00:00:00Z"
  resourceVersion: "42"
spec:
  nodeName: node-a
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
status:
  phase: Running
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  uid: uid-web-2
spec:
  nodeName: node-b
  serviceAccountName: web
status:
  phase: Succeeded
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: skipped
spec: {replicas: 2}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
"#;

/// A pod that names neither namespace, service account nor phase.
const BARE_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tool\n  uid: uid-tool\nspec:\n  nodeName: node-a\n";

struct Env {
    manifests: tempfile::TempDir,
    _data: tempfile::TempDir,
    issuer: TokenIssuer,
    clock: TestClock,
}

impl Env {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(data.path()).unwrap();
        Self {
            manifests: tempfile::tempdir().unwrap(),
            _data: data,
            issuer,
            clock: TestClock::new(NOW),
        }
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.manifests.path().join(name), text).unwrap();
    }

    fn config(&self) -> LocalConfig {
        LocalConfig {
            poll_interval: StdDuration::from_millis(20),
            ..LocalConfig::new(
                self.manifests.path(),
                self.issuer.verifier(),
                Arc::new(self.clock.clone()),
            )
        }
    }

    fn open(&self) -> Result<Arc<LocalPlatform>, PlatformError> {
        LocalPlatform::open(self.config())
    }
}

fn names(pods: &[Pod]) -> Vec<&str> {
    pods.iter().map(|p| p.name.as_str()).collect()
}

fn manifest_error(err: PlatformError) -> (PathBuf, Option<usize>, String) {
    match err {
        PlatformError::Manifest {
            file,
            line,
            message,
        } => (file, line, message),
        other => panic!("expected a manifest error, got {other}"),
    }
}

#[test]
fn every_kind_is_loaded_and_indexed() {
    let env = Env::new();
    env.write("cluster.yaml", CLUSTER);
    env.write("tool.yml", BARE_POD);
    let p = env.open().unwrap();

    let web = p.pod("shop", "web-1").unwrap();
    assert_eq!(web.uid, "uid-web-1");
    assert_eq!(web.node_name.as_deref(), Some("node-a"));
    assert_eq!(web.service_account, "web");
    assert_eq!(web.labels["app"], "web");
    assert_eq!(web.annotations["meshid.io/unix-uid"], "1000");
    assert_eq!(web.phase.as_deref(), Some("Running"));
    assert_eq!(
        web.creation_timestamp,
        Some(datetime!(2025-05-01 00:00:00 UTC))
    );
    assert_eq!(
        web.identity(&TrustDomain::default()).unwrap().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(p.pod_by_uid("uid-web-2").unwrap().name, "web-2");
    assert_eq!(p.pod_by_uid("nope"), None);
    assert_eq!(p.pod("other", "web-1"), None);
    assert_eq!(names(&p.pods_on_node("node-a")), ["tool", "web-1"]);
    assert_eq!(names(&p.pods_on_node("node-b")), ["web-2"]);
    assert!(p.pods_on_node("node-z").is_empty());
    assert_eq!(
        names(&p.pods_for_service_account("shop", "web")),
        ["web-1", "web-2"]
    );
    assert!(p.pods_for_service_account("default", "web").is_empty());

    let namespaces = p.namespaces();
    let ns_names: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(ns_names, ["default", "shop"], "declared plus implied");
    assert_eq!(namespaces[1].labels["istio-injection"], "enabled");
    assert_eq!(
        p.service_accounts(),
        [("shop".to_owned(), "web".to_owned())]
    );
    let policies = p.peer_authentications();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].mode(), MtlsMode::Strict);
    assert!(p.is_ready());
}

#[test]
fn missing_fields_default_as_kubernetes_does() {
    let env = Env::new();
    env.write("tool.yaml", BARE_POD);
    env.write(
        "pa.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: loose\n",
    );
    let p = env.open().unwrap();
    let tool = p.pod("default", "tool").unwrap();
    assert_eq!(tool.service_account, "default");
    assert_eq!(tool.phase, None);
    assert!(tool.is_running(), "no phase counts as running");
    assert_eq!(
        p.peer_authentications()[0].metadata.namespace.as_deref(),
        Some("default")
    );
}

#[test]
fn only_terminated_or_unknown_pods_are_not_running() {
    let mut pod = Pod {
        namespace: "a".into(),
        name: "b".into(),
        uid: "u".into(),
        node_name: None,
        service_account: "default".into(),
        labels: Default::default(),
        annotations: Default::default(),
        phase: None,
        creation_timestamp: None,
        pod_ips: Vec::new(),
    };
    for (phase, running) in [
        (None, true),
        (Some("Running"), true),
        (Some("Pending"), true),
        (Some("Succeeded"), false),
        (Some("Failed"), false),
        (Some("Unknown"), false),
    ] {
        pod.phase = phase.map(Into::into);
        assert_eq!(pod.is_running(), running, "{phase:?}");
    }
}

#[test]
fn pod_without_uid_is_refused_naming_file_and_line() {
    let env = Env::new();
    env.write("pods.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec: {}\n");
    let (file, line, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(file, env.manifests.path().join("pods.yaml"));
    assert!(message.contains("uid"), "{message}");
    assert!(matches!(line, Some(8..=9)), "{line:?}: {message}");
    env.write(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  uid: \"\"\n",
    );
    let (_, _, message) = manifest_error(env.open().unwrap_err());
    assert!(
        message.contains("Pod default/web has an empty metadata.uid"),
        "{message}"
    );
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let env = Env::new();
    env.write("ok.yaml", BARE_POD);
    env.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [unclosed\n",
    );
    let err = env.open().unwrap_err();
    let shown = err.to_string();
    let (file, line, _) = manifest_error(err);
    assert_eq!(file, env.manifests.path().join("broken.yaml"));
    assert!(line.is_some(), "{shown}");
    assert!(shown.contains("broken.yaml:"), "{shown}");
}

#[test]
fn invalid_policy_mode_or_field_names_file_line_and_field() {
    let env = Env::new();
    let pa = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\n  namespace: shop\nspec:\n  mtls:\n    mode: STRCT\n";
    env.write("pa.yaml", pa);
    let (_, line, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(line, Some(8), "{message}");
    assert!(message.contains("spec.mtls.mode"), "{message}");
    env.write(
        "pa.yaml",
        &pa.replace("mode: STRCT", "mode: STRICT\n    extra: 1"),
    );
    let (_, line, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(line, Some(9), "{message}");
    assert!(message.contains("unknown field `extra`"), "{message}");
    env.write(
        "pa.yaml",
        &pa.replace(
            "mode: STRCT",
            "mode: STRICT\n  portLevelMtls:\n    80:\n      mode: DISABLE",
        ),
    );
    let (_, _, message) = manifest_error(env.open().unwrap_err());
    assert!(message.contains("spec.portLevelMtls"), "{message}");
}

#[test]
fn documents_without_kind_or_with_the_wrong_api_version_are_refused() {
    let env = Env::new();
    env.write("x.yaml", "metadata:\n  name: a\n");
    assert!(manifest_error(env.open().unwrap_err())
        .2
        .contains("has no kind"));
    env.write(
        "x.yaml",
        "apiVersion: apps/v1\nkind: Pod\nmetadata:\n  name: a\n  uid: u\n",
    );
    assert!(manifest_error(env.open().unwrap_err())
        .2
        .contains("expected \"v1\""));
    env.write("x.yaml", "- a list\n");
    assert!(env.open().is_err());
}

#[test]
fn duplicates_are_refused_naming_both_files() {
    let env = Env::new();
    env.write("a.yaml", BARE_POD);
    env.write("b.yaml", &BARE_POD.replace("name: tool", "name: other"));
    let (file, _, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(file, env.manifests.path().join("b.yaml"));
    assert!(
        message.contains("uid \"uid-tool\"") && message.contains("a.yaml"),
        "{message}"
    );
    env.write("b.yaml", &BARE_POD.replace("uid-tool", "uid-2"));
    assert!(manifest_error(env.open().unwrap_err())
        .2
        .contains("Pod default/tool is defined twice"));
}

#[test]
fn other_files_are_ignored_and_empty_documents_are_fine() {
    let env = Env::new();
    env.write("notes.txt", "not: [yaml");
    env.write(".hidden.yaml", "not: [yaml");
    env.write("empty.yaml", "");
    env.write("comments.yaml", "# nothing here\n---\n---\n");
    fs::create_dir(env.manifests.path().join("sub.yaml")).unwrap();
    fs::write(env.manifests.path().join("sub.yaml/pod.yaml"), "not: [yaml").unwrap();
    let p = env.open().unwrap();
    assert!(p.namespaces().is_empty());
}

#[test]
fn missing_directory_at_start_is_an_error() {
    let env = Env::new();
    let cfg = LocalConfig {
        manifest_dir: env.manifests.path().join("absent"),
        ..env.config()
    };
    assert!(matches!(
        LocalPlatform::open(cfg),
        Err(PlatformError::Io { .. })
    ));
}

#[test]
fn reload_applies_changes_and_bumps_the_generation() {
    let env = Env::new();
    env.write("tool.yaml", BARE_POD);
    let p = env.open().unwrap();
    let rx = p.changes();
    let g0 = *rx.borrow();
    assert!(!p.reload().unwrap(), "nothing changed");
    assert_eq!(p.generation(), g0);

    env.write("shop.yaml", CLUSTER);
    assert!(p.reload().unwrap());
    assert_eq!(p.generation(), g0 + 1);
    assert!(rx.has_changed().unwrap());
    assert!(p.pod("shop", "web-1").is_some());

    // Rewriting the same content is not a change.
    env.write("shop.yaml", CLUSTER);
    assert!(!p.reload().unwrap());
    assert_eq!(p.generation(), g0 + 1);

    fs::remove_file(env.manifests.path().join("shop.yaml")).unwrap();
    assert!(p.reload().unwrap());
    assert_eq!(p.pod("shop", "web-1"), None);
    assert_eq!(p.generation(), g0 + 2);
}

#[test]
fn a_bad_edit_keeps_the_last_good_state() {
    let env = Env::new();
    env.write("shop.yaml", CLUSTER);
    let p = env.open().unwrap();
    let g0 = p.generation();
    env.write(
        "shop.yaml",
        &CLUSTER.replace("mode: STRICT", "mode: [STRICT"),
    );
    assert!(matches!(p.reload(), Err(PlatformError::Manifest { .. })));
    assert!(p.pod("shop", "web-1").is_some());
    assert_eq!(p.peer_authentications()[0].mode(), MtlsMode::Strict);
    assert_eq!(p.generation(), g0);
    env.write(
        "shop.yaml",
        &CLUSTER.replace("mode: STRICT", "mode: PERMISSIVE"),
    );
    assert!(p.reload().unwrap());
    assert_eq!(p.peer_authentications()[0].mode(), MtlsMode::Permissive);
}

#[test]
fn a_deleted_directory_keeps_the_last_good_state_and_recovers() {
    let env = Env::new();
    env.write("shop.yaml", CLUSTER);
    let p = env.open().unwrap();
    fs::remove_dir_all(env.manifests.path()).unwrap();
    assert!(matches!(p.reload(), Err(PlatformError::Io { .. })));
    assert!(p.pod("shop", "web-1").is_some());
    fs::create_dir(env.manifests.path()).unwrap();
    env.write("shop.yaml", &CLUSTER.replace("uid-web-1", "uid-web-1b"));
    assert!(p.reload().unwrap());
    assert_eq!(p.pod("shop", "web-1").unwrap().uid, "uid-web-1b");
}

async fn wait_for(rx: &mut watch::Receiver<u64>, want: u64) {
    tokio::time::timeout(StdDuration::from_secs(10), rx.wait_for(|g| *g >= want))
        .await
        .expect("generation did not reach the expected value in time")
        .unwrap();
}

#[tokio::test]
async fn run_polls_for_changes_survives_bad_edits_and_stops_on_shutdown() {
    let env = Env::new();
    env.write("tool.yaml", BARE_POD);
    let p = env.open().unwrap();
    let mut rx = p.changes();
    let g0 = *rx.borrow_and_update();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&p).run(shutdown.clone()));

    env.write("shop.yaml", CLUSTER);
    wait_for(&mut rx, g0 + 1).await;
    assert!(p.pod("shop", "web-1").is_some());

    env.write("shop.yaml", "kind: [\n");
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    assert!(
        p.pod("shop", "web-1").is_some(),
        "last good state still served"
    );
    assert_eq!(p.generation(), g0 + 1);

    env.write("shop.yaml", &CLUSTER.replace("node-b", "node-c"));
    wait_for(&mut rx, g0 + 2).await;
    assert_eq!(names(&p.pods_on_node("node-c")), ["web-2"]);

    shutdown.cancel();
    tokio::time::timeout(StdDuration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn verify_token_checks_expiry_against_the_injected_clock() {
    let env = Env::new();
    let p = env.open().unwrap();
    let req = TokenRequest {
        namespace: "shop".into(),
        service_account: "web".into(),
        pod: None,
        node: None,
        audiences: vec!["istio-ca".into()],
        ttl: time::Duration::minutes(10),
    };
    let token = env.issuer.issue(&req, NOW).unwrap();
    let audiences = vec!["istio-ca".to_owned()];
    let platform: Arc<dyn Platform> = p;
    let got = platform.verify_token(&token, &audiences).await.unwrap();
    assert_eq!(got.service_account, "web");
    env.clock.advance(time::Duration::minutes(11));
    let err = platform.verify_token(&token, &audiences).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let other = vec!["other".to_owned()];
    env.clock.set(NOW);
    assert!(platform.verify_token(&token, &other).await.is_err());
}

#[test]
fn manifests_writable_by_other_users_are_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write("pods.yaml", BARE_POD);
    let file = env.manifests.path().join("pods.yaml");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    let (path, _, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(path, file);
    assert!(
        message.contains("writable by its group and every local user"),
        "{message}"
    );
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(env.open().is_ok());
    // The directory itself: anyone could add a Pod to it.
    fs::set_permissions(env.manifests.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (path, _, message) = manifest_error(env.open().unwrap_err());
    assert_eq!(path, env.manifests.path());
    assert!(message.contains("chmod go-w"), "{message}");
}

#[test]
fn pods_are_found_by_their_ips_and_a_bad_ip_names_the_pod() {
    let env = Env::new();
    env.write(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop, uid: uid-a}\n\
         spec: {serviceAccountName: web}\n\
         status: {podIP: 10.0.0.7, podIPs: [{ip: 10.0.0.7}, {ip: 'fd00::7'}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: shop, uid: uid-b}\n\
         status: {podIP: 10.0.0.8}\n",
    );
    let platform = env.open().unwrap();
    let a = platform.pods_with_ip("10.0.0.7".parse().unwrap());
    assert_eq!(names(&a), ["a"]);
    assert_eq!(a[0].pod_ips.len(), 2);
    assert_eq!(
        names(&platform.pods_with_ip("fd00::7".parse().unwrap())),
        ["a"]
    );
    assert_eq!(
        names(&platform.pods_with_ip("10.0.0.8".parse().unwrap())),
        ["b"]
    );
    assert!(platform
        .pods_with_ip("10.0.0.9".parse().unwrap())
        .is_empty());

    env.write(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop, uid: uid-a}\n\
         status: {podIPs: [{ip: 10.0.0.300}]}\n",
    );
    let (_, _, message) = manifest_error(env.open().unwrap_err());
    assert!(message.contains("Pod shop/a"), "{message}");
    assert!(message.contains("\"10.0.0.300\""), "{message}");
}
