use std::collections::BTreeMap;

use time::macros::datetime;

use super::*;
use crate::policy::ModeSource;
use crate::policy::{
    MtlsMode, MutualTls, PeerAuthentication, WorkloadSelector, DEFAULT_ROOT_NAMESPACE,
};

struct TestPod {
    namespace: &'static str,
    name: &'static str,
    labels: BTreeMap<String, String>,
}

impl Workload for TestPod {
    fn namespace(&self) -> &str {
        self.namespace
    }
    fn name(&self) -> &str {
        self.name
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

fn pod(namespace: &'static str, name: &'static str, app: &str) -> TestPod {
    TestPod {
        namespace,
        name,
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
    }
}

fn policy(ns: &str, name: &str, mode: MtlsMode, minute: u8) -> PeerAuthentication {
    let mut p = PeerAuthentication::namespace_wide(ns, name, mode);
    p.metadata.creation_timestamp =
        Some(datetime!(2024-05-01 10:00:00 UTC) + time::Duration::minutes(minute.into()));
    p
}

fn selecting_db(mut p: PeerAuthentication) -> PeerAuthentication {
    p.spec.selector = Some(WorkloadSelector {
        match_labels: BTreeMap::from([("app".to_owned(), "db".to_owned())]),
    });
    p
}

fn names<W: Workload>(report: &[PodMode<W>]) -> Vec<String> {
    report
        .iter()
        .map(|m| format!("{}/{}", m.pod.namespace(), m.pod.name()))
        .collect()
}

#[test]
fn workload_policy_overrides_namespace_in_report() {
    let mut db = selecting_db(policy("shop", "db", MtlsMode::Permissive, 1));
    db.spec.port_level_mtls.insert(
        5432,
        MutualTls {
            mode: MtlsMode::Strict,
        },
    );
    let policies = Policies::new(
        DEFAULT_ROOT_NAMESPACE,
        vec![policy("shop", "default", MtlsMode::Strict, 0), db],
    );
    let report = report(
        &policies,
        [pod("shop", "web", "web"), pod("shop", "db", "db")],
    );
    let [db, web] = report.as_slice() else {
        panic!("two pods expected: {:?}", names(&report));
    };
    assert_eq!(web.effective.mode, MtlsMode::Strict);
    assert_eq!(web.effective.source.to_string(), "namespace shop/default");
    assert_eq!(db.effective.mode, MtlsMode::Permissive);
    assert_eq!(db.effective.for_port(5432), MtlsMode::Strict);
    assert_eq!(db.effective.source.to_string(), "workload shop/db");
}

#[test]
fn pods_are_reported_sorted_by_namespace_then_name() {
    let policies = Policies::new(DEFAULT_ROOT_NAMESPACE, Vec::new());
    let report = report(
        &policies,
        [
            pod("shop", "web", "web"),
            pod("bank", "vault", "v"),
            pod("shop", "cart", "c"),
        ],
    );
    assert_eq!(names(&report), ["bank/vault", "shop/cart", "shop/web"]);
    assert!(report
        .iter()
        .all(|m| m.effective.mode == MtlsMode::Permissive
            && m.effective.source == ModeSource::Default));
}

#[test]
fn warnings_list_the_mesh_first_then_each_pod_by_name() {
    let policies = Policies::new(
        DEFAULT_ROOT_NAMESPACE,
        vec![
            policy("shop", "a", MtlsMode::Strict, 0),
            policy("shop", "b", MtlsMode::Disable, 1),
            selecting_db(policy("shop", "db1", MtlsMode::Strict, 0)),
            selecting_db(policy("shop", "db2", MtlsMode::Disable, 1)),
        ],
    );
    let report = report(
        &policies,
        [pod("shop", "db", "db"), pod("shop", "web", "web")],
    );
    let lines = warning_lines(&policies, &report);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("namespace-wide PeerAuthentications in namespace shop"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("pod shop/db: "), "{}", lines[1]);
    assert!(lines[1].contains("shop/db2"), "{}", lines[1]);
    assert!(report[1].warnings.is_empty());
}
