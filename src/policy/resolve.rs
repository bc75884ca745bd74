//! Resolution: which mTLS mode PeerAuthentication policies give one workload,
//! exactly as Istio's `ComposePeerAuthentication` computes it.
//!
//! Owns the scopes and their order; not where policies or workloads come from
//! (the platform) nor what a mode does to a connection (the proxy). Pure: data
//! in, decision out; warnings are returned as data for the caller to log.
//!
//! The rules (Istio's, plus AUDIT as a mode of its own):
//!
//! - Start PERMISSIVE ([`ModeSource::Default`]).
//! - Mesh scope: a policy in the root namespace without a selector. A policy
//!   whose `selector.matchLabels` is empty (`{}`) counts as having no selector,
//!   as in Istio (`spec.Selector == nil || len(MatchLabels) == 0`).
//! - Namespace scope: a policy without a selector in the workload's namespace
//!   (for a workload in the root namespace that is the mesh policy itself).
//! - Workload scope: a policy with a non-empty selector in the workload's
//!   namespace whose every `matchLabels` entry is on the workload. Selector
//!   policies in the root namespace are ignored, for every workload, even one
//!   in the root namespace (Istio ignores them too); a warning says so.
//! - Within a scope the oldest `creationTimestamp` wins (an absent one counts
//!   as oldest, ties go to the lexicographically smaller name); the others are
//!   named in a [`PolicyWarning::Shadowed`].
//! - Apply mesh → namespace → workload; UNSET (or no `spec.mtls`) inherits
//!   from the level above.
//! - `portLevelMtls` is honoured from the workload policy only (it is refused
//!   on others by validation, and ignored here if one slips through); a port's
//!   UNSET inherits the workload-wide result.
//!
//! Rule enforced: the result is never UNSET, so a proxy never has to guess.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use super::{MtlsMode, PeerAuthentication};

/// The root namespace when none is configured (`--root-namespace`): its
/// selector-less policy is the mesh-wide one (Istio's is `istio-system`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "meshid-system";

/// The namespace of an object whose `metadata.namespace` is absent, as kubectl assumes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Names one PeerAuthentication, with the creation time that orders it in its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp`; absent sorts as oldest.
    pub creation_timestamp: Option<OffsetDateTime>,
}

impl PolicyRef {
    /// The reference to `policy`.
    pub fn of(policy: &PeerAuthentication) -> Self {
        Self {
            namespace: policy.namespace_or(DEFAULT_NAMESPACE).to_owned(),
            name: policy.metadata.name.clone(),
            creation_timestamp: policy.metadata.creation_timestamp,
        }
    }

    /// Precedence within a scope: `Less` means `self` wins over `other`.
    /// Oldest first (absent timestamps before any), then by name, then by namespace.
    pub fn precedence(&self, other: &Self) -> Ordering {
        self.creation_timestamp
            .cmp(&other.creation_timestamp)
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.namespace.cmp(&other.namespace))
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a mode came from: the level whose policy set it (not UNSET).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModeSource {
    /// No policy sets a mode: PERMISSIVE, as in Istio.
    Default,
    /// The mesh-wide policy (root namespace, no selector).
    Mesh {
        /// The root namespace.
        namespace: String,
        /// The policy's name.
        name: String,
    },
    /// The namespace-wide policy of the workload's namespace.
    Namespace {
        /// The workload's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
    },
    /// A workload policy whose selector matches the workload.
    Workload {
        /// The workload's namespace.
        namespace: String,
        /// The policy's name.
        name: String,
    },
}

impl fmt::Display for ModeSource {
    /// `default`, `mesh meshid-system/default`, `namespace shop/default`, `workload shop/db`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Mesh { namespace, name } => write!(f, "mesh {namespace}/{name}"),
            Self::Namespace { namespace, name } => write!(f, "namespace {namespace}/{name}"),
            Self::Workload { namespace, name } => write!(f, "workload {namespace}/{name}"),
        }
    }
}

/// The mode a workload's proxy enforces. Never UNSET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMode {
    /// The workload-wide mode: DISABLE, PERMISSIVE, STRICT or AUDIT.
    pub mode: MtlsMode,
    /// Port-level modes from the workload policy, UNSET entries already
    /// replaced by [`EffectiveMode::mode`]. Ports not listed use `mode`.
    pub ports: BTreeMap<u32, MtlsMode>,
    /// Where [`EffectiveMode::mode`] came from.
    pub source: ModeSource,
    /// Where [`EffectiveMode::ports`] came from: the workload policy, when it has port entries.
    pub ports_source: Option<ModeSource>,
}

impl EffectiveMode {
    /// The mode for connections to `port` of the workload.
    pub fn for_port(&self, port: u32) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// The scope in which policies compete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Mesh-wide: the root namespace, no selector.
    Mesh,
    /// Namespace-wide policies of one namespace.
    Namespace {
        /// The namespace.
        namespace: String,
    },
    /// Workload policies of one namespace selecting the same workload.
    Workload {
        /// The namespace.
        namespace: String,
    },
}

/// Something about the policies an operator should fix; resolution still
/// gives an answer (Istio's), the caller logs these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyWarning {
    /// Several policies qualify in one scope: the oldest applies, the others are ignored.
    Shadowed {
        /// The scope.
        scope: Scope,
        /// The policy that applies.
        applied: PolicyRef,
        /// The policies ignored, oldest first.
        ignored: Vec<PolicyRef>,
    },
    /// A policy with a selector in the root namespace: Istio ignores those, and so do we.
    SelectorInRootNamespace {
        /// The ignored policy.
        policy: PolicyRef,
    },
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shadowed {
                scope,
                applied,
                ignored,
            } => {
                let what = match scope {
                    Scope::Mesh => "mesh-wide PeerAuthentications".to_owned(),
                    Scope::Namespace { namespace } => {
                        format!("namespace-wide PeerAuthentications in namespace {namespace}")
                    }
                    Scope::Workload { namespace } => format!(
                        "workload PeerAuthentications in namespace {namespace} select the same workload"
                    ),
                };
                let names: Vec<String> = ignored.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{} {what}: the oldest, {applied}, applies; ignored: {} (keep one per scope)",
                    ignored.len() + 1,
                    names.join(", ")
                )
            }
            Self::SelectorInRootNamespace { policy } => write!(
                f,
                "PeerAuthentication {policy} has a selector in the root namespace {}: such policies are ignored; put it in the workload's namespace",
                policy.namespace
            ),
        }
    }
}

/// A resolution's answer: the mode, and warnings about the workload-scope policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The mode the workload's proxy enforces.
    pub effective: EffectiveMode,
    /// Warnings specific to this workload (competing workload policies).
    pub warnings: Vec<PolicyWarning>,
}

/// Every policy of the mesh, sorted into scopes once, to resolve many workloads.
#[derive(Debug, Clone)]
pub struct Policies {
    root_namespace: String,
    /// The winning mesh-wide policy.
    mesh: Option<PeerAuthentication>,
    /// Namespace → its winning namespace-wide policy (root namespace excluded).
    namespaces: BTreeMap<String, PeerAuthentication>,
    /// Namespace → its selector policies, highest precedence (oldest) first.
    workloads: BTreeMap<String, Vec<PeerAuthentication>>,
    /// Warnings that do not depend on a workload.
    warnings: Vec<PolicyWarning>,
}

impl Policies {
    /// Sorts `policies` into scopes under `root_namespace` and picks each
    /// scope's winner; the warnings about mesh and namespace scopes and about
    /// root-namespace selectors are in [`Policies::warnings`].
    pub fn new(
        root_namespace: &str,
        policies: impl IntoIterator<Item = PeerAuthentication>,
    ) -> Self {
        let mut mesh = Vec::new();
        let mut namespaces: BTreeMap<String, Vec<PeerAuthentication>> = BTreeMap::new();
        let mut workloads: BTreeMap<String, Vec<PeerAuthentication>> = BTreeMap::new();
        let mut warnings = Vec::new();
        for policy in policies {
            let namespace = policy.namespace_or(DEFAULT_NAMESPACE).to_owned();
            match (namespace == root_namespace, policy.is_namespace_wide()) {
                (true, true) => mesh.push(policy),
                (true, false) => warnings.push(PolicyWarning::SelectorInRootNamespace {
                    policy: PolicyRef::of(&policy),
                }),
                (false, true) => namespaces.entry(namespace).or_default().push(policy),
                (false, false) => workloads.entry(namespace).or_default().push(policy),
            }
        }
        let mesh = pick_oldest(mesh, Scope::Mesh, &mut warnings);
        let namespaces = namespaces
            .into_iter()
            .filter_map(|(namespace, candidates)| {
                let scope = Scope::Namespace {
                    namespace: namespace.clone(),
                };
                pick_oldest(candidates, scope, &mut warnings).map(|p| (namespace, p))
            })
            .collect();
        for candidates in workloads.values_mut() {
            candidates.sort_by(|a, b| PolicyRef::of(a).precedence(&PolicyRef::of(b)));
        }
        Self {
            root_namespace: root_namespace.to_owned(),
            mesh,
            namespaces,
            workloads,
            warnings,
        }
    }

    /// The root namespace these policies were sorted under.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// Warnings that hold for every workload: competing mesh- or namespace-wide
    /// policies, selector policies in the root namespace. Log them once per change.
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The namespace-wide policy in effect for `namespace` (the mesh policy
    /// for the root namespace), if any.
    pub fn namespace_policy(&self, namespace: &str) -> Option<&PeerAuthentication> {
        if namespace == self.root_namespace {
            self.mesh.as_ref()
        } else {
            self.namespaces.get(namespace)
        }
    }

    /// The effective mode of a workload in `namespace` with pod `labels`.
    pub fn resolve(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Resolution {
        let mut warnings = Vec::new();
        let mut effective = EffectiveMode {
            mode: MtlsMode::Permissive,
            ports: BTreeMap::new(),
            source: ModeSource::Default,
            ports_source: None,
        };
        if let Some(mesh) = &self.mesh {
            apply(&mut effective, mesh, |namespace, name| ModeSource::Mesh {
                namespace,
                name,
            });
        }
        if namespace != self.root_namespace {
            if let Some(policy) = self.namespaces.get(namespace) {
                apply(&mut effective, policy, |namespace, name| {
                    ModeSource::Namespace { namespace, name }
                });
            }
            let mut selecting = self
                .workloads
                .get(namespace)
                .into_iter()
                .flatten()
                .filter(|p| p.selects(labels));
            if let Some(workload) = selecting.next() {
                let ignored: Vec<PolicyRef> = selecting.map(PolicyRef::of).collect();
                if !ignored.is_empty() {
                    warnings.push(PolicyWarning::Shadowed {
                        scope: Scope::Workload {
                            namespace: namespace.to_owned(),
                        },
                        applied: PolicyRef::of(workload),
                        ignored,
                    });
                }
                let source = |namespace, name| ModeSource::Workload { namespace, name };
                apply(&mut effective, workload, source);
                if !workload.spec.port_level_mtls.is_empty() {
                    effective.ports = workload
                        .spec
                        .port_level_mtls
                        .iter()
                        .map(|(port, mtls)| match mtls.mode {
                            MtlsMode::Unset => (*port, effective.mode),
                            mode => (*port, mode),
                        })
                        .collect();
                    let r = PolicyRef::of(workload);
                    effective.ports_source = Some(source(r.namespace, r.name));
                }
            }
        }
        Resolution {
            effective,
            warnings,
        }
    }
}

/// One-shot resolution for a single workload: [`Policies::new`] then
/// [`Policies::resolve`], with the warnings that concern this workload (its
/// mesh and namespace scopes, root-namespace selectors, its workload scope).
pub fn resolve(
    root_namespace: &str,
    policies: impl IntoIterator<Item = PeerAuthentication>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Resolution {
    let policies = Policies::new(root_namespace, policies);
    let mut resolution = policies.resolve(namespace, labels);
    let mut relevant: Vec<PolicyWarning> = policies
        .warnings()
        .iter()
        .filter(|w| match w {
            PolicyWarning::Shadowed {
                scope: Scope::Namespace { namespace: ns },
                ..
            } => ns == namespace,
            _ => true,
        })
        .cloned()
        .collect();
    relevant.append(&mut resolution.warnings);
    resolution.warnings = relevant;
    resolution
}

/// Overrides the effective mode with `policy`'s unless it is UNSET.
fn apply(
    effective: &mut EffectiveMode,
    policy: &PeerAuthentication,
    source: impl FnOnce(String, String) -> ModeSource,
) {
    let mode = policy.mode();
    if mode != MtlsMode::Unset {
        let r = PolicyRef::of(policy);
        effective.mode = mode;
        effective.source = source(r.namespace, r.name);
    }
}

/// The oldest of `candidates`; a warning names the others.
fn pick_oldest(
    mut candidates: Vec<PeerAuthentication>,
    scope: Scope,
    warnings: &mut Vec<PolicyWarning>,
) -> Option<PeerAuthentication> {
    candidates.sort_by(|a, b| PolicyRef::of(a).precedence(&PolicyRef::of(b)));
    let mut candidates = candidates.into_iter();
    let winner = candidates.next()?;
    let ignored: Vec<PolicyRef> = candidates.map(|p| PolicyRef::of(&p)).collect();
    if !ignored.is_empty() {
        warnings.push(PolicyWarning::Shadowed {
            scope,
            applied: PolicyRef::of(&winner),
            ignored,
        });
    }
    Some(winner)
}

#[cfg(test)]
mod tests;
