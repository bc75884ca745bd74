//! The pure half of root distribution: desired state (the bundle in every
//! live namespace) against observed state (namespaces and our ConfigMaps)
//! gives the writes to make. No I/O, so every case is a unit test.

use std::collections::BTreeMap;

/// One namespace as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObservedNamespace {
    pub(crate) name: String,
    /// `status.phase: Terminating` or a deletion timestamp: writes would fail.
    pub(crate) terminating: bool,
}

/// Our ConfigMap in one namespace, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObservedConfigMap {
    /// The value under `root-cert.pem`, if any.
    pub(crate) root_cert: Option<String>,
    /// Whether it carries our label.
    pub(crate) labelled: bool,
}

/// A write to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// No ConfigMap in this namespace: create it.
    Create { namespace: String },
    /// The ConfigMap was edited or the bundle changed: rewrite our key and label.
    Repair { namespace: String },
}

/// The writes that make every live namespace hold `bundle`, in namespace order.
/// Terminating namespaces are skipped; ConfigMaps already right are left alone.
pub(crate) fn plan(
    namespaces: &[ObservedNamespace],
    configmaps: &BTreeMap<String, ObservedConfigMap>,
    bundle: &str,
) -> Vec<Action> {
    let mut live: Vec<&ObservedNamespace> = namespaces.iter().filter(|n| !n.terminating).collect();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    live.into_iter()
        .filter_map(|ns| match configmaps.get(&ns.name) {
            None => Some(Action::Create {
                namespace: ns.name.clone(),
            }),
            Some(cm) if cm.root_cert.as_deref() != Some(bundle) || !cm.labelled => {
                Some(Action::Repair {
                    namespace: ns.name.clone(),
                })
            }
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn ns(name: &str, terminating: bool) -> ObservedNamespace {
        ObservedNamespace {
            name: name.to_owned(),
            terminating,
        }
    }

    fn cm(root_cert: Option<&str>, labelled: bool) -> ObservedConfigMap {
        ObservedConfigMap {
            root_cert: root_cert.map(str::to_owned),
            labelled,
        }
    }

    fn create(ns: &str) -> Action {
        Action::Create {
            namespace: ns.to_owned(),
        }
    }

    fn repair(ns: &str) -> Action {
        Action::Repair {
            namespace: ns.to_owned(),
        }
    }

    #[test]
    fn every_namespace_without_the_configmap_gets_one() {
        let namespaces = [ns("shop", false), ns("default", false)];
        assert_eq!(
            plan(&namespaces, &BTreeMap::new(), BUNDLE),
            vec![create("default"), create("shop")]
        );
    }

    #[test]
    fn terminating_namespaces_are_skipped() {
        let namespaces = [ns("gone", true), ns("shop", false)];
        let configmaps = BTreeMap::from([("gone".to_owned(), cm(Some("old"), true))]);
        assert_eq!(plan(&namespaces, &configmaps, BUNDLE), vec![create("shop")]);
    }

    #[test]
    fn an_edited_or_unlabelled_configmap_is_repaired_and_a_right_one_left_alone() {
        let namespaces = [
            ns("a", false),
            ns("b", false),
            ns("c", false),
            ns("d", false),
        ];
        let configmaps = BTreeMap::from([
            ("a".to_owned(), cm(Some(BUNDLE), true)),
            ("b".to_owned(), cm(Some("edited"), true)),
            ("c".to_owned(), cm(None, true)),
            ("d".to_owned(), cm(Some(BUNDLE), false)),
        ]);
        assert_eq!(
            plan(&namespaces, &configmaps, BUNDLE),
            vec![repair("b"), repair("c"), repair("d")]
        );
    }

    #[test]
    fn a_new_bundle_repairs_every_configmap() {
        let namespaces = [ns("a", false), ns("b", false)];
        let configmaps = BTreeMap::from([
            ("a".to_owned(), cm(Some(BUNDLE), true)),
            ("b".to_owned(), cm(Some(BUNDLE), true)),
        ]);
        let rotated = format!("{BUNDLE}{BUNDLE}");
        assert_eq!(
            plan(&namespaces, &configmaps, &rotated),
            vec![repair("a"), repair("b")]
        );
        assert!(plan(&namespaces, &configmaps, BUNDLE).is_empty());
    }

    #[test]
    fn a_configmap_in_a_namespace_not_seen_is_ignored() {
        let configmaps = BTreeMap::from([("ghost".to_owned(), cm(Some("x"), true))]);
        assert!(plan(&[], &configmaps, BUNDLE).is_empty());
    }
}
