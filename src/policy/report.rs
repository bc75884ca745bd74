//! The per-pod mTLS report: every pod with the mode its proxy enforces, where
//! that mode came from, and the warnings an operator should see.
//!
//! Owns the one way a set of pods is turned into "effective mode per pod", for
//! every reader of it (the agent's `ListWorkloadPolicies`, `meshid mtls status`
//! on both platforms, `meshid up`'s status line). It does not decide a mode
//! ([`super::resolve`](mod@super::resolve) does) and does not know where pods come from: the
//! input is anything that is a [`Workload`] (the platform's `Pod` is one).
//!
//! Rules enforced: pods are reported sorted by namespace and name, each once;
//! warnings list the mesh's own ([`Policies::warnings`]) before the per-pod
//! ones, each per-pod warning naming its pod.

use std::collections::BTreeMap;

use super::resolve::{EffectiveMode, Policies, PolicyWarning};

/// What the report needs to know about a pod: where it lives and its labels.
pub trait Workload {
    /// `metadata.namespace`.
    fn namespace(&self) -> &str;
    /// `metadata.name`.
    fn name(&self) -> &str;
    /// `metadata.labels`, matched against workload selectors.
    fn labels(&self) -> &BTreeMap<String, String>;
}

impl<W: Workload + ?Sized> Workload for &W {
    fn namespace(&self) -> &str {
        (**self).namespace()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        (**self).labels()
    }
}

/// One pod of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMode<W> {
    /// The pod as the caller gave it.
    pub pod: W,
    /// The mode its proxy enforces, per port, and where each came from.
    pub effective: EffectiveMode,
    /// Warnings about the policies competing for this pod.
    pub warnings: Vec<PolicyWarning>,
}

impl<W: Workload> PodMode<W> {
    /// This pod's warnings, each as `pod <namespace>/<name>: <warning>`.
    pub fn warning_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.warnings
            .iter()
            .map(|w| format!("pod {}/{}: {w}", self.pod.namespace(), self.pod.name()))
    }
}

/// The effective mode of every pod of `pods`, sorted by namespace and name.
pub fn report<W: Workload>(
    policies: &Policies,
    pods: impl IntoIterator<Item = W>,
) -> Vec<PodMode<W>> {
    let mut pods: Vec<W> = pods.into_iter().collect();
    pods.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    pods.into_iter()
        .map(|pod| {
            let resolution = policies.resolve(pod.namespace(), pod.labels());
            PodMode {
                pod,
                effective: resolution.effective,
                warnings: resolution.warnings,
            }
        })
        .collect()
}

/// Every warning of a report: the mesh's own first, then each pod's
/// ([`PodMode::warning_lines`]).
pub fn warning_lines<W: Workload>(policies: &Policies, report: &[PodMode<W>]) -> Vec<String> {
    policies
        .warnings()
        .iter()
        .map(ToString::to_string)
        .chain(report.iter().flat_map(PodMode::warning_lines))
        .collect()
}

#[cfg(test)]
mod tests;
