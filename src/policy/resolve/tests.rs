use std::collections::BTreeMap;

use time::macros::datetime;
use time::OffsetDateTime;

use super::*;
use crate::policy::{MutualTls, WorkloadSelector};
use MtlsMode::{Audit, Disable, Permissive, Strict, Unset};

const ROOT: &str = DEFAULT_ROOT_NAMESPACE;
const T0: OffsetDateTime = datetime!(2024-05-01 10:00:00 UTC);

/// A policy created `age` minutes after T0 (`None`: no creationTimestamp).
fn at(minutes: Option<i64>) -> Option<OffsetDateTime> {
    minutes.map(|m| T0 + time::Duration::minutes(m))
}

fn policy(ns: &str, name: &str, mode: MtlsMode) -> PeerAuthentication {
    let mut p = PeerAuthentication::namespace_wide(ns, name, mode);
    p.metadata.creation_timestamp = at(Some(0));
    p
}

fn created(mut p: PeerAuthentication, minutes: Option<i64>) -> PeerAuthentication {
    p.metadata.creation_timestamp = at(minutes);
    p
}

fn selecting(mut p: PeerAuthentication, labels: &[(&str, &str)]) -> PeerAuthentication {
    p.spec.selector = Some(WorkloadSelector {
        match_labels: labels_of(labels),
    });
    p
}

fn ports(mut p: PeerAuthentication, ports: &[(u32, MtlsMode)]) -> PeerAuthentication {
    p.spec.port_level_mtls = ports
        .iter()
        .map(|(port, mode)| (*port, MutualTls { mode: *mode }))
        .collect();
    p
}

fn labels_of(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn mesh(mode: MtlsMode) -> PeerAuthentication {
    policy(ROOT, "default", mode)
}

fn ns(mode: MtlsMode) -> PeerAuthentication {
    policy("shop", "default", mode)
}

fn wl(mode: MtlsMode) -> PeerAuthentication {
    selecting(policy("shop", "db", mode), &[("app", "db")])
}

fn from_mesh() -> ModeSource {
    ModeSource::Mesh {
        namespace: ROOT.into(),
        name: "default".into(),
    }
}

fn from_ns() -> ModeSource {
    ModeSource::Namespace {
        namespace: "shop".into(),
        name: "default".into(),
    }
}

fn from_wl(name: &str) -> ModeSource {
    ModeSource::Workload {
        namespace: "shop".into(),
        name: name.into(),
    }
}

/// Resolves for the pod `shop` / `app=db, v=1`.
fn db_pod(policies: Vec<PeerAuthentication>) -> Resolution {
    resolve(
        ROOT,
        policies,
        "shop",
        &labels_of(&[("app", "db"), ("v", "1")]),
    )
}

struct Case {
    what: &'static str,
    policies: Vec<PeerAuthentication>,
    mode: MtlsMode,
    source: ModeSource,
}

/// The table: one row per scope combination (rustfmt would spread each row over six lines).
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use ModeSource::Default as Dflt;
    vec![
        Case { what: "nothing", policies: vec![], mode: Permissive, source: Dflt },
        // One scope at a time, every mode (AUDIT at each level).
        Case { what: "mesh strict", policies: vec![mesh(Strict)], mode: Strict, source: from_mesh() },
        Case { what: "mesh disable", policies: vec![mesh(Disable)], mode: Disable, source: from_mesh() },
        Case { what: "mesh audit", policies: vec![mesh(Audit)], mode: Audit, source: from_mesh() },
        Case { what: "mesh permissive", policies: vec![mesh(Permissive)], mode: Permissive, source: from_mesh() },
        Case { what: "namespace strict", policies: vec![ns(Strict)], mode: Strict, source: from_ns() },
        Case { what: "namespace audit", policies: vec![ns(Audit)], mode: Audit, source: from_ns() },
        Case { what: "namespace disable", policies: vec![ns(Disable)], mode: Disable, source: from_ns() },
        Case { what: "workload strict", policies: vec![wl(Strict)], mode: Strict, source: from_wl("db") },
        Case { what: "workload audit", policies: vec![wl(Audit)], mode: Audit, source: from_wl("db") },
        Case { what: "workload disable", policies: vec![wl(Disable)], mode: Disable, source: from_wl("db") },
        // Two scopes: the narrower wins.
        Case { what: "mesh + namespace", policies: vec![mesh(Strict), ns(Disable)], mode: Disable, source: from_ns() },
        Case { what: "mesh + workload", policies: vec![mesh(Strict), wl(Disable)], mode: Disable, source: from_wl("db") },
        Case { what: "namespace + workload", policies: vec![ns(Strict), wl(Permissive)], mode: Permissive, source: from_wl("db") },
        Case { what: "mesh audit + namespace strict", policies: vec![mesh(Audit), ns(Strict)], mode: Strict, source: from_ns() },
        // All three.
        Case { what: "all three", policies: vec![mesh(Disable), ns(Strict), wl(Audit)], mode: Audit, source: from_wl("db") },
        Case { what: "all three, workload strict", policies: vec![mesh(Audit), ns(Disable), wl(Strict)], mode: Strict, source: from_wl("db") },
        // UNSET at each level inherits from the level above.
        Case { what: "mesh unset", policies: vec![mesh(Unset)], mode: Permissive, source: Dflt },
        Case { what: "namespace unset", policies: vec![ns(Unset)], mode: Permissive, source: Dflt },
        Case { what: "workload unset", policies: vec![wl(Unset)], mode: Permissive, source: Dflt },
        Case { what: "namespace unset under mesh", policies: vec![mesh(Strict), ns(Unset)], mode: Strict, source: from_mesh() },
        Case { what: "workload unset under namespace", policies: vec![ns(Disable), wl(Unset)], mode: Disable, source: from_ns() },
        Case { what: "workload unset under mesh", policies: vec![mesh(Audit), wl(Unset)], mode: Audit, source: from_mesh() },
        Case { what: "namespace + workload unset under mesh", policies: vec![mesh(Strict), ns(Unset), wl(Unset)], mode: Strict, source: from_mesh() },
        Case { what: "all unset", policies: vec![mesh(Unset), ns(Unset), wl(Unset)], mode: Permissive, source: Dflt },
        Case { what: "workload unset, namespace audit, mesh strict", policies: vec![mesh(Strict), ns(Audit), wl(Unset)], mode: Audit, source: from_ns() },
    ]
}

#[test]
fn every_scope_combination_and_unset_inheritance() {
    for case in cases() {
        // The order policies arrive in never matters.
        for policies in [
            case.policies.clone(),
            case.policies.iter().rev().cloned().collect(),
        ] {
            let r = db_pod(policies);
            assert_eq!(r.effective.mode, case.mode, "{}", case.what);
            assert_eq!(r.effective.source, case.source, "{}", case.what);
            assert!(r.effective.ports.is_empty(), "{}", case.what);
            assert_eq!(r.effective.ports_source, None, "{}", case.what);
            assert!(r.warnings.is_empty(), "{}: {:?}", case.what, r.warnings);
        }
    }
}

#[test]
fn a_policy_without_spec_mtls_is_unset() {
    let mut p = ns(Strict);
    p.spec.mtls = None;
    let r = db_pod(vec![mesh(Disable), p]);
    assert_eq!(r.effective.mode, Disable);
    assert_eq!(r.effective.source, from_mesh());
}

#[test]
fn the_result_is_never_unset() {
    for m in MtlsMode::ALL {
        for n in MtlsMode::ALL {
            for w in MtlsMode::ALL {
                let e = db_pod(vec![mesh(m), ns(n), ports(wl(w), &[(80, Unset)])]).effective;
                assert_ne!(e.mode, Unset);
                assert_ne!(e.for_port(80), Unset);
            }
        }
    }
}

#[test]
fn port_level_modes_override_and_unset_ports_inherit_the_workload_result() {
    let r = db_pod(vec![
        mesh(Permissive),
        ports(wl(Strict), &[(8080, Disable), (9090, Unset), (7070, Audit)]),
    ]);
    let e = r.effective;
    assert_eq!(e.mode, Strict);
    assert_eq!(
        e.ports,
        BTreeMap::from([(7070, Audit), (8080, Disable), (9090, Strict)])
    );
    assert_eq!(e.ports_source, Some(from_wl("db")));
    assert_eq!(e.for_port(8080), Disable);
    assert_eq!(e.for_port(9090), Strict);
    assert_eq!(
        e.for_port(1234),
        Strict,
        "unlisted ports use the workload mode"
    );
}

#[test]
fn unset_port_under_an_unset_workload_inherits_the_namespace_mode() {
    let e = db_pod(vec![
        ns(Audit),
        ports(wl(Unset), &[(8080, Unset), (9000, Strict)]),
    ])
    .effective;
    assert_eq!(e.mode, Audit);
    assert_eq!(e.source, from_ns());
    assert_eq!(e.ports, BTreeMap::from([(8080, Audit), (9000, Strict)]));
    assert_eq!(e.ports_source, Some(from_wl("db")));
}

#[test]
fn port_levels_on_mesh_or_namespace_policies_are_ignored() {
    // Validation refuses these; resolution ignores them if one slips through, as Istio.
    let e = db_pod(vec![
        ports(mesh(Strict), &[(80, Disable)]),
        ports(ns(Unset), &[(81, Disable)]),
    ])
    .effective;
    assert_eq!(e.mode, Strict);
    assert!(e.ports.is_empty());
    assert_eq!(e.ports_source, None);
}

#[test]
fn a_selector_that_does_not_match_falls_back_to_the_namespace() {
    for selector in [
        vec![("app", "web")],
        vec![("app", "db"), ("tier", "backend")], // one label missing on the pod
        vec![("v", "2")],
    ] {
        let p = selecting(policy("shop", "other", Strict), &selector);
        let e = db_pod(vec![ns(Disable), p]).effective;
        assert_eq!(e.mode, Disable, "{selector:?}");
        assert_eq!(e.source, from_ns());
    }
    // A subset of the pod's labels matches.
    let p = selecting(policy("shop", "subset", Strict), &[("v", "1")]);
    assert_eq!(db_pod(vec![p]).effective.source, from_wl("subset"));
}

#[test]
fn an_empty_selector_is_namespace_wide_as_in_istio() {
    let p = selecting(policy("shop", "empty", Strict), &[]);
    let r = resolve(ROOT, vec![p], "shop", &BTreeMap::new());
    assert_eq!(r.effective.mode, Strict);
    assert_eq!(
        r.effective.source,
        ModeSource::Namespace {
            namespace: "shop".into(),
            name: "empty".into()
        }
    );
    // … and in the root namespace, mesh-wide.
    let p = selecting(policy(ROOT, "empty", Audit), &[]);
    let r = db_pod(vec![p]);
    assert_eq!(r.effective.mode, Audit);
    assert!(matches!(r.effective.source, ModeSource::Mesh { .. }));
    assert!(r.warnings.is_empty());
}

#[test]
fn policies_of_other_namespaces_are_ignored() {
    let r = db_pod(vec![
        policy("other", "default", Strict),
        selecting(policy("other", "db", Disable), &[("app", "db")]),
    ]);
    assert_eq!(r.effective.mode, Permissive);
    assert_eq!(r.effective.source, ModeSource::Default);
}

#[test]
fn selector_policies_in_the_root_namespace_are_ignored_with_a_warning() {
    let root_selector = ports(
        selecting(policy(ROOT, "db-everywhere", Strict), &[("app", "db")]),
        &[(80, Disable)],
    );
    let r = db_pod(vec![mesh(Audit), root_selector.clone()]);
    assert_eq!(r.effective.mode, Audit);
    assert_eq!(r.effective.source, from_mesh());
    assert!(r.effective.ports.is_empty());
    assert_eq!(
        r.warnings,
        vec![PolicyWarning::SelectorInRootNamespace {
            policy: PolicyRef::of(&root_selector)
        }]
    );
    assert!(r.warnings[0]
        .to_string()
        .contains("meshid-system/db-everywhere"));
    // Also for a workload in the root namespace itself.
    let r = resolve(
        ROOT,
        vec![root_selector],
        ROOT,
        &labels_of(&[("app", "db")]),
    );
    assert_eq!(r.effective.mode, Permissive);
    assert_eq!(r.effective.source, ModeSource::Default);
}

#[test]
fn in_the_root_namespace_the_namespace_policy_is_the_mesh_policy() {
    let r = resolve(ROOT, vec![mesh(Strict)], ROOT, &BTreeMap::new());
    assert_eq!(r.effective.source, from_mesh());
    let policies = Policies::new(ROOT, vec![mesh(Strict), ns(Audit)]);
    assert_eq!(
        policies.namespace_policy(ROOT).map(|p| p.mode()),
        Some(Strict)
    );
    assert_eq!(
        policies.namespace_policy("shop").map(|p| p.mode()),
        Some(Audit)
    );
    assert!(policies.namespace_policy("other").is_none());
}

#[test]
fn the_root_namespace_is_configurable() {
    // Under root `istio-system`, meshid-system is an ordinary namespace.
    let r = resolve(
        "istio-system",
        vec![mesh(Strict), policy("istio-system", "default", Disable)],
        "shop",
        &BTreeMap::new(),
    );
    assert_eq!(r.effective.mode, Disable);
    assert_eq!(
        r.effective.source,
        ModeSource::Mesh {
            namespace: "istio-system".into(),
            name: "default".into()
        }
    );
}

#[test]
fn a_policy_without_namespace_is_in_default() {
    let mut p = policy("x", "default", Strict);
    p.metadata.namespace = None;
    let r = resolve(ROOT, vec![p], "default", &BTreeMap::new());
    assert_eq!(
        r.effective.source,
        ModeSource::Namespace {
            namespace: "default".into(),
            name: "default".into()
        }
    );
}

#[test]
fn the_oldest_namespace_policy_wins_and_the_others_are_named() {
    let old = created(policy("shop", "zz-old", Strict), Some(-60));
    let new = created(policy("shop", "aa-new", Disable), Some(60));
    let newer = created(policy("shop", "default", Audit), Some(120));
    for order in [
        vec![new.clone(), newer.clone(), old.clone()],
        vec![old.clone(), new.clone(), newer.clone()],
    ] {
        let r = db_pod(order);
        assert_eq!(r.effective.mode, Strict);
        assert_eq!(
            r.effective.source,
            ModeSource::Namespace {
                namespace: "shop".into(),
                name: "zz-old".into()
            }
        );
        assert_eq!(
            r.warnings,
            vec![PolicyWarning::Shadowed {
                scope: Scope::Namespace {
                    namespace: "shop".into()
                },
                applied: PolicyRef::of(&old),
                ignored: vec![PolicyRef::of(&new), PolicyRef::of(&newer)],
            }]
        );
        let text = r.warnings[0].to_string();
        assert!(text.contains("namespace shop"), "{text}");
        assert!(text.contains("shop/zz-old, applies"), "{text}");
        assert!(
            text.contains("ignored: shop/aa-new, shop/default"),
            "{text}"
        );
    }
}

#[test]
fn ties_go_to_the_smaller_name_and_an_absent_timestamp_is_oldest() {
    let b = policy("shop", "b", Strict);
    let a = policy("shop", "a", Disable);
    assert_eq!(db_pod(vec![b.clone(), a.clone()]).effective.mode, Disable);
    let undated = created(policy("shop", "z", Audit), None);
    let r = db_pod(vec![b, a, undated.clone()]);
    assert_eq!(r.effective.mode, Audit);
    assert!(
        matches!(&r.warnings[0], PolicyWarning::Shadowed { applied, ignored, .. }
        if *applied == PolicyRef::of(&undated) && ignored.len() == 2)
    );
}

#[test]
fn the_oldest_mesh_policy_wins() {
    let old = created(policy(ROOT, "old", Disable), Some(-1));
    let r = db_pod(vec![mesh(Strict), old.clone()]);
    assert_eq!(r.effective.mode, Disable);
    assert_eq!(
        r.warnings,
        vec![PolicyWarning::Shadowed {
            scope: Scope::Mesh,
            applied: PolicyRef::of(&old),
            ignored: vec![PolicyRef::of(&mesh(Strict))],
        }]
    );
    assert!(r.warnings[0].to_string().contains("mesh-wide"));
}

#[test]
fn the_oldest_matching_workload_policy_wins_with_its_ports() {
    let old = ports(
        created(
            selecting(policy("shop", "old", Audit), &[("app", "db")]),
            Some(-5),
        ),
        &[(80, Unset)],
    );
    let new = ports(
        created(
            selecting(policy("shop", "new", Strict), &[("v", "1")]),
            Some(5),
        ),
        &[(80, Disable)],
    );
    // Older still, but does not select the pod: no competition.
    let elsewhere = created(
        selecting(policy("shop", "web", Disable), &[("app", "web")]),
        Some(-50),
    );
    let r = db_pod(vec![new.clone(), elsewhere, old.clone()]);
    assert_eq!(r.effective.mode, Audit);
    assert_eq!(r.effective.source, from_wl("old"));
    assert_eq!(r.effective.ports, BTreeMap::from([(80, Audit)]));
    assert_eq!(
        r.warnings,
        vec![PolicyWarning::Shadowed {
            scope: Scope::Workload {
                namespace: "shop".into()
            },
            applied: PolicyRef::of(&old),
            ignored: vec![PolicyRef::of(&new)],
        }]
    );
}

#[test]
fn policies_warnings_cover_every_namespace_and_resolve_only_this_one() {
    let set = vec![
        policy("shop", "a", Strict),
        policy("shop", "b", Strict),
        policy("bank", "a", Strict),
        policy("bank", "b", Strict),
    ];
    let policies = Policies::new(ROOT, set.clone());
    assert_eq!(policies.root_namespace(), ROOT);
    assert_eq!(policies.warnings().len(), 2);
    // Policies::resolve leaves scope-wide warnings to Policies::warnings.
    assert!(policies
        .resolve("shop", &BTreeMap::new())
        .warnings
        .is_empty());
    // The one-shot function keeps only the ones about the workload's namespace.
    let r = db_pod(set);
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].to_string().contains("namespace shop"));
}

#[test]
fn mode_sources_display_as_status_shows_them() {
    assert_eq!(ModeSource::Default.to_string(), "default");
    assert_eq!(from_mesh().to_string(), "mesh meshid-system/default");
    assert_eq!(from_ns().to_string(), "namespace shop/default");
    assert_eq!(from_wl("strict-db").to_string(), "workload shop/strict-db");
}
