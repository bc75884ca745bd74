use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::platform::{Namespace, PlatformError, VerifyFuture};
use crate::policy::PeerAuthentication;
use crate::test_helpers::TestEnv;

const NODE: &str = "node-a";
const UID_A: &str = "4e8a2f3c-1b2d-4f5e-9a8b-7c6d5e4f3a2b";
const UID_B: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const CTR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn underscored(uid: &str) -> String {
    uid.replace('-', "_")
}

// ---- process_start_time --------------------------------------------------

/// A `stat` line shaped like the kernel's, start time in field 22.
fn stat_line(pid: i32, comm: &str, start: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 183 0 0 0 3 1 0 0 20 0 1 0 {start} \
         12345678 456 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 2 0 0 0 0 0\n"
    )
}

#[test]
fn start_time_is_read_after_the_last_parenthesis() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("4242")).unwrap();
    let comm = "evil) (S 1 2 3 ) 99 (x";
    fs::write(dir.path().join("4242/stat"), stat_line(4242, comm, 987_654)).unwrap();
    assert_eq!(process_start_time(dir.path(), 4242).unwrap(), 987_654);
}

#[test]
fn start_time_of_a_missing_process_or_a_bad_stat_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        process_start_time(dir.path(), 7),
        Err(AttestError::ProcessGone { pid: 7 })
    ));
    fs::create_dir(dir.path().join("8")).unwrap();
    for bad in [
        "8 (x S 1 2",
        "8 (x) S 1 2 3",
        "8 (x) S 1 1 1 0 -1 1 1 0 0 0 1 1 0 0 20 0 1 0 soon 1",
    ] {
        fs::write(dir.path().join("8/stat"), bad).unwrap();
        let err = process_start_time(dir.path(), 8).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcFormat { .. }),
            "{bad}: {err}"
        );
        assert!(!err.is_refusal());
    }
}

#[test]
fn start_time_of_the_real_current_process() {
    let pid = i32::try_from(std::process::id()).unwrap();
    let first = process_start_time(Path::new("/proc"), pid).unwrap();
    assert!(first > 0);
    assert_eq!(process_start_time(Path::new("/proc"), pid).unwrap(), first);
}

// ---- attest_peer -----------------------------------------------------------

/// A manifest directory (real local platform) and a fake `/proc` tree.
struct Fixture {
    env: TestEnv,
    proc_root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let env = TestEnv::new();
        let proc_root = env.dir.path().join("proc");
        fs::create_dir(&proc_root).unwrap();
        Self { env, proc_root }
    }

    /// Writes a pod manifest in namespace `shop`, service account `name`'s
    /// first word, with an optional uid annotation and phase.
    fn pod(&self, name: &str, uid: &str, node: &str, unix_uid: Option<&str>, phase: &str) {
        let annotations = unix_uid
            .map(|u| format!("  annotations:\n    {UNIX_UID_ANNOTATION}: \"{u}\"\n"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  uid: {uid}\n\
             {annotations}spec:\n  nodeName: {node}\n  serviceAccountName: sa-{name}\n\
             status:\n  phase: {phase}\n"
        );
        fs::write(self.env.manifests.join(format!("pod-{name}.yaml")), yaml).unwrap();
    }

    fn platform(&self) -> Arc<LocalPlatform> {
        let cfg = LocalConfig::new(
            &self.env.manifests,
            self.env.issuer().verifier(),
            crate::time::system_clock(),
        );
        LocalPlatform::open(cfg).unwrap()
    }

    fn attestor_with(&self, platform: Arc<dyn Platform>) -> Attestor {
        Attestor::new(platform, NODE.into(), TrustDomain::default())
            .with_proc_root(self.proc_root.clone())
    }

    fn attestor(&self) -> Attestor {
        self.attestor_with(self.platform())
    }

    /// A fake process: `<proc>/<pid>/cgroup` and `<pid>/stat`.
    fn process(&self, pid: i32, cgroup: &str, start: u64) {
        let dir = self.proc_root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup"), cgroup).unwrap();
        fs::write(dir.join("stat"), stat_line(pid, "app", start)).unwrap();
    }
}

fn creds(pid: Option<i32>, uid: u32) -> PeerCredentials {
    PeerCredentials { pid, uid, gid: uid }
}

fn in_pod(uid: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CTR}.scope\n",
        underscored(uid)
    )
}

const HOST_CGROUP: &str = "0::/user.slice/user-1000.slice/session-3.scope\n";

#[test]
fn peer_in_a_pods_cgroup_attests_as_that_pod() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, None, "Running");
    f.process(100, &in_pod(UID_A), 5000);
    let workload = f.attestor().attest_peer(&creds(Some(100), 4242)).unwrap();
    assert_eq!(workload.pod.uid, UID_A);
    assert_eq!(workload.identity, f.env.id("shop", "sa-web"));
}

#[test]
fn peer_in_the_cgroup_of_a_pod_on_another_node_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, "node-b", None, "Running");
    // Even with a uid annotation on this node: the cgroup decides.
    f.pod("tool", UID_B, NODE, Some("1000"), "Running");
    f.process(100, &in_pod(UID_A), 5000);
    let err = f
        .attestor()
        .attest_peer(&creds(Some(100), 1000))
        .unwrap_err();
    match &err {
        AttestError::NotOnNode {
            pod,
            node,
            this_node,
        } => {
            assert_eq!(pod, "shop/web");
            assert_eq!(node.as_deref(), Some("node-b"));
            assert_eq!(this_node, NODE);
        }
        other => panic!("{other}"),
    }
    assert!(err.is_refusal());
    assert!(err.to_string().contains("node-b"), "{err}");
}

#[test]
fn peer_in_the_cgroup_of_an_unknown_or_finished_pod_is_refused() {
    let f = Fixture::new();
    f.pod("tool", UID_B, NODE, Some("1000"), "Running");
    f.pod("job", UID_A, NODE, None, "Succeeded");
    let attestor = f.attestor();
    let unknown = "c0ffee00-0000-4000-8000-000000000001";
    f.process(100, &in_pod(unknown), 5000);
    assert!(matches!(
        attestor.attest_peer(&creds(Some(100), 1000)),
        Err(AttestError::UnknownPod { pid: 100, pod_uid }) if pod_uid == unknown
    ));
    f.process(101, &in_pod(UID_A), 5000);
    assert!(matches!(
        attestor.attest_peer(&creds(Some(101), 1000)),
        Err(AttestError::PodNotRunning { phase, .. }) if phase == "Succeeded"
    ));
}

#[test]
fn peer_with_cgroups_of_two_pods_is_refused_not_attested_by_uid() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, Some("1000"), "Running");
    f.pod("db", UID_B, NODE, None, "Running");
    let cgroup = format!("2:cpu:/kubepods/pod{UID_A}/{CTR}\n1:memory:/kubepods/pod{UID_B}/{CTR}\n");
    f.process(100, &cgroup, 5000);
    let err = f
        .attestor()
        .attest_peer(&creds(Some(100), 1000))
        .unwrap_err();
    match err {
        AttestError::ConflictingCgroups { pid: 100, pod_uids } => {
            assert_eq!(pod_uids, [UID_A, UID_B]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn peer_outside_any_pod_attests_by_its_uid_annotation() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, Some("1000"), "Running");
    f.pod("db", UID_B, NODE, Some("1001"), "Running");
    f.process(100, HOST_CGROUP, 5000);
    let attestor = f.attestor();
    let workload = attestor.attest_peer(&creds(Some(100), 1001)).unwrap();
    assert_eq!(workload.identity, f.env.id("shop", "sa-db"));
    // No pid, or pid 0 (a peer in a pid namespace we cannot see): uid only.
    for pid in [None, Some(0), Some(-5)] {
        let workload = attestor.attest_peer(&creds(pid, 1000)).unwrap();
        assert_eq!(workload.pod.name, "web");
    }
}

#[test]
fn peer_whose_uid_is_on_no_pod_of_this_node_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, "node-b", Some("1000"), "Running");
    f.pod("plus", UID_B, NODE, Some("+1000"), "Running");
    f.pod("zero", "uid-zero", NODE, Some("01000"), "Running");
    f.pod("space", "uid-space", NODE, Some(" 1000"), "Running");
    f.process(100, HOST_CGROUP, 5000);
    let err = f
        .attestor()
        .attest_peer(&creds(Some(100), 1000))
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::NoPod { pid: Some(100), uid: 1000, node } if node == NODE),
        "{err}"
    );
    assert!(
        err.to_string().contains("meshid.io/unix-uid: \"1000\""),
        "{err}"
    );
}

#[test]
fn uid_claimed_by_several_running_pods_is_ambiguous() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, Some("1000"), "Running");
    f.pod("db", UID_B, NODE, Some("1000"), "Pending");
    f.pod("old", "uid-old", NODE, Some("1000"), "Failed");
    let err = f.attestor().attest_peer(&creds(None, 1000)).unwrap_err();
    match err {
        AttestError::AmbiguousUid {
            uid: 1000,
            mut pods,
        } => {
            pods.sort();
            assert_eq!(pods, ["shop/db", "shop/web"]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn uid_of_a_finished_pod_only_is_refused() {
    let f = Fixture::new();
    f.pod("old", UID_A, NODE, Some("1000"), "Failed");
    let err = f.attestor().attest_peer(&creds(None, 1000)).unwrap_err();
    assert!(matches!(err, AttestError::PodNotRunning { .. }), "{err}");
}

/// The local platform, running `hook` before each pod lookup: the moment
/// between the two start-time reads, where a caller can exit.
struct Hooked {
    inner: Arc<LocalPlatform>,
    hook: Box<dyn Fn() + Send + Sync>,
}

impl Platform for Hooked {
    fn verify_token<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        self.inner.verify_token(token, audiences)
    }
    fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        (self.hook)();
        self.inner.pod_by_uid(uid)
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.inner.pod(namespace, name)
    }
    fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        (self.hook)();
        self.inner.pods_on_node(node)
    }
    fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        self.inner.pods_with_ip(ip)
    }
    fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.inner
            .pods_for_service_account(namespace, service_account)
    }
    fn namespaces(&self) -> Vec<Namespace> {
        self.inner.namespaces()
    }
    fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        self.inner.peer_authentications()
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes()
    }
    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

fn hooked(f: &Fixture, hook: impl Fn() + Send + Sync + 'static) -> Attestor {
    f.attestor_with(Arc::new(Hooked {
        inner: f.platform(),
        hook: Box::new(hook),
    }))
}

#[test]
fn caller_that_exits_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, Some("1000"), "Running");
    // Gone before attestation starts.
    assert!(matches!(
        f.attestor().attest_peer(&creds(Some(100), 1000)),
        Err(AttestError::ProcessGone { pid: 100 })
    ));
    // Gone during the lookup, by either path.
    for cgroup in [in_pod(UID_A), HOST_CGROUP.to_owned()] {
        f.process(100, &cgroup, 5000);
        let dir = f.proc_root.join("100");
        let attestor = hooked(&f, move || fs::remove_dir_all(&dir).unwrap());
        let err = attestor.attest_peer(&creds(Some(100), 1000)).unwrap_err();
        assert!(
            matches!(err, AttestError::ProcessGone { pid: 100 }),
            "{err}"
        );
        assert!(err.is_refusal());
    }
}

#[test]
fn pid_reused_during_attestation_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, Some("1000"), "Running");
    for cgroup in [in_pod(UID_A), HOST_CGROUP.to_owned()] {
        f.process(100, &cgroup, 5000);
        let stat = f.proc_root.join("100/stat");
        // The caller exits and a new process (later start time) takes its pid.
        let attestor = hooked(&f, move || {
            fs::write(&stat, stat_line(100, "intruder", 5077)).unwrap()
        });
        match attestor.attest_peer(&creds(Some(100), 1000)) {
            Err(AttestError::PidReused {
                pid: 100,
                before: 5000,
                after: 5077,
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_real_current_process_attests_through_real_proc() {
    let f = Fixture::new();
    // Real SO_PEERCRED of our own process, through tokio's safe API.
    let (a, _b) = tokio::net::UnixStream::pair().unwrap();
    let peer = PeerCredentials::from_tokio(a.peer_cred().unwrap());
    let pid = i32::try_from(std::process::id()).unwrap();
    assert_eq!(peer.pid, Some(pid));
    // Where the tests themselves run in a Kubernetes pod, the cgroup decides.
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let pod_uid = pod_uid_from_cgroup(&cgroup).unwrap_or_else(|| UID_A.to_owned());
    f.pod("me", &pod_uid, NODE, Some(&peer.uid.to_string()), "Running");
    let attestor = Attestor::new(f.platform(), NODE.into(), TrustDomain::default());
    let workload = attestor.attest_peer(&peer).unwrap();
    assert_eq!(workload.identity, f.env.id("shop", "sa-me"));
}

// ---- attest_token ----------------------------------------------------------

fn audiences() -> Vec<String> {
    vec!["istio-ca".to_owned()]
}

#[tokio::test]
async fn bound_token_of_a_pod_on_this_node_attests() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, None, "Running");
    let token = f
        .env
        .token("shop", "sa-web", Some(("web", UID_A)), Some(NODE));
    let workload = f
        .attestor()
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap();
    assert_eq!(workload.identity, f.env.id("shop", "sa-web"));
    assert_eq!(workload.pod.name, "web");
}

#[tokio::test]
async fn token_of_a_pod_on_another_node_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, "node-b", None, "Running");
    let attestor = f.attestor();
    let token = f
        .env
        .token("shop", "sa-web", Some(("web", UID_A)), Some("node-b"));
    let err = attestor
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::NotOnNode { .. }), "{err}");
    // Claiming this node does not move the pod.
    let token = f
        .env
        .token("shop", "sa-web", Some(("web", UID_A)), Some(NODE));
    let err = attestor
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::TokenPodMismatch { claim: "node", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn token_whose_pod_was_recreated_or_is_gone_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, None, "Running");
    let attestor = f.attestor();
    let token = f.env.token("shop", "sa-web", Some(("web", UID_B)), None);
    let err = attestor
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    match &err {
        AttestError::TokenPodMismatch {
            claim: "uid",
            token,
            actual,
            ..
        } => {
            assert_eq!((token.as_str(), actual.as_str()), (UID_B, UID_A));
        }
        other => panic!("{other}"),
    }
    let token = f.env.token("shop", "sa-web", Some(("gone", UID_B)), None);
    let err = attestor
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::PodGone { pod } if pod == "shop/gone"),
        "{err}"
    );
    let token = f.env.token("shop", "sa-other", Some(("web", UID_A)), None);
    let err = attestor
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::TokenPodMismatch {
                claim: "service account",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn token_without_pod_claims_is_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, None, "Running");
    let token = f.env.token("shop", "sa-web", None, Some(NODE));
    let err = f
        .attestor()
        .attest_token(&bearer(&token), &audiences())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::TokenNotBound { service_account } if service_account == "shop/sa-web"),
        "{err}"
    );
}

#[tokio::test]
async fn foreign_invalid_or_wrong_audience_tokens_are_refused() {
    let f = Fixture::new();
    f.pod("web", UID_A, NODE, None, "Running");
    let attestor = f.attestor();
    let foreign = TestEnv::new().token("shop", "sa-web", Some(("web", UID_A)), Some(NODE));
    let good = f
        .env
        .token("shop", "sa-web", Some(("web", UID_A)), Some(NODE));
    let wrong_audience = vec!["someone-else".to_owned()];
    for (token, audiences) in [
        (foreign.as_str(), audiences()),
        ("not-a-jwt", audiences()),
        (good.as_str(), wrong_audience),
    ] {
        let err = attestor
            .attest_token(&bearer(token), &audiences)
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Token { .. }), "{err}");
        assert!(err.is_refusal());
        assert!(
            !err.to_string().contains(&good),
            "the token leaked into {err}"
        );
    }
}

#[test]
fn platform_unavailability_is_not_a_refusal() {
    let err = AttestError::from_platform(PlatformError::Unavailable("api server down".into()));
    assert!(matches!(err, AttestError::Platform(_)));
    assert!(!err.is_refusal());
}

#[test]
fn peer_pod_uids_names_the_pods_of_a_caller_and_none_for_a_host_process() {
    let f = Fixture::new();
    f.process(100, &in_pod(UID_A), 5000);
    f.process(101, HOST_CGROUP, 5001);
    let attestor = f.attestor();
    // Whether or not the platform knows the pod: this is where it runs.
    assert_eq!(
        attestor.peer_pod_uids(&creds(Some(100), 0)).unwrap(),
        [UID_A]
    );
    assert!(attestor
        .peer_pod_uids(&creds(Some(101), 0))
        .unwrap()
        .is_empty());
    for no_pid in [None, Some(0)] {
        assert!(matches!(
            attestor.peer_pod_uids(&creds(no_pid, 0)),
            Err(AttestError::NoPid)
        ));
    }
    // A pid that is gone cannot be placed.
    assert!(attestor.peer_pod_uids(&creds(Some(999), 0)).is_err());
}

fn bearer(token: &str) -> BearerToken {
    BearerToken::from_header(&format!("Bearer {token}")).expect("a token")
}
