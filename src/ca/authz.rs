//! Authorization, as a pure function: may this authenticated caller get that
//! identity? Data in, decision out; no I/O, so every rule is tested here.
//!
//! Rules enforced:
//! 1. A caller gets its own identity only.
//! 2. A token bound to a pod is honoured only while that pod exists with the
//!    same UID (a token outliving its pod, or a recycled pod name, is refused).
//! 3. Impersonation (`ImpersonatedIdentity`) is for node agents listed in
//!    `--trusted-node-accounts` only, and only for a service account that has a
//!    running pod on the caller's own node. A stolen node-agent token therefore
//!    yields the identities of that node's pods, nothing else.
//! 4. Identities outside our trust domain are never granted.
//! 6. DNS SANs only for the service accounts and names listed in
//!    `--workload-dns-names` ([`WorkloadDnsNames`]).
//! 5. A renewal (client certificate, no token) is honoured only while the
//!    platform has a pod that may hold the identity ([`Pod::may_hold`]), and,
//!    when the presented certificate was issued to a pod, while that very pod
//!    (same UID) still may. Its lifetime is capped by the issuer
//!    ([`renewal_ttl`](crate::ca::issuer::renewal_ttl)).
//!
//! Every pod check is [`Pod::may_hold`], the rule the agent applies too: the
//! pod is in the namespace, runs the service account, and is running.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::ca::authn::Caller;
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::{Pod, PodRefusal};

mod dns_names;
pub use dns_names::WorkloadDnsNames;

/// Node-agent service accounts allowed to impersonate (`ns/sa` pairs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedNodeAccounts(BTreeSet<(String, String)>);

impl TrustedNodeAccounts {
    /// Whether `namespace/service_account` is a trusted node agent.
    pub fn contains(&self, namespace: &str, service_account: &str) -> bool {
        self.0
            .contains(&(namespace.to_owned(), service_account.to_owned()))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for TrustedNodeAccounts {
    type Err = String;

    /// Parses `ns/sa,ns/sa`; empty entries are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('/') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                    set.insert((ns.to_owned(), sa.to_owned()));
                }
                _ => {
                    return Err(format!(
                        "{entry:?} is not of the form <namespace>/<service-account>"
                    ))
                }
            }
        }
        Ok(Self(set))
    }
}

impl fmt::Display for TrustedNodeAccounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self.0.iter().map(|(ns, sa)| format!("{ns}/{sa}")).collect();
        f.write_str(&entries.join(","))
    }
}

/// The facts the decision needs, gathered by the caller of [`check_authorized`].
#[derive(Debug)]
pub struct AuthzInput<'a> {
    /// Who is asking (already authenticated).
    pub caller: &'a Caller,
    /// The identity named in `ImpersonatedIdentity`, if any.
    pub impersonate: Option<&'a SpiffeId>,
    /// Our trust domain.
    pub trust_domain: &'a TrustDomain,
    /// Node agents allowed to impersonate.
    pub trusted: &'a TrustedNodeAccounts,
    /// The pod the caller's token names, as the platform knows it now
    /// (None when the token names no pod, or the pod does not exist).
    pub caller_pod: Option<&'a Pod>,
    /// The platform's pods of the impersonated service account (any node), or,
    /// for a renewal, of the certificate's own service account.
    pub target_pods: &'a [Pod],
    /// For a renewal: the pod (name, UID) the presented certificate was
    /// issued to, as the audit store recorded it (None: issued to no one pod).
    pub issued_to: Option<(&'a str, &'a str)>,
}

/// A granted identity, with the facts that justified it (for the audit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The identity to put in the certificate.
    pub identity: SpiffeId,
    /// The caller's node, when known.
    pub node: Option<String>,
    /// Whether the identity is another's, obtained by a node agent.
    pub impersonated: bool,
    /// With impersonation, the running pods of the requested service account
    /// on the caller's node that justified it, as (name, uid), sorted by name:
    /// the certificate is for one of them. For a renewal of a certificate
    /// issued to a pod, that pod. Empty otherwise.
    pub pods: Vec<(String, String)>,
}

/// Why an identity was refused. Messages name both identities.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unauthorized {
    /// The token names a pod the platform does not know (deleted, or never existed).
    #[error("the token of {caller} is bound to pod {namespace}/{pod}, which does not exist")]
    PodGone {
        /// The caller.
        caller: SpiffeId,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// The token's pod UID differs from the live pod's (the pod was recreated).
    #[error("the token of {caller} is bound to pod {pod} with uid {token_uid}, but that pod now has uid {pod_uid}")]
    PodUidMismatch {
        /// The caller.
        caller: SpiffeId,
        /// The pod's name.
        pod: String,
        /// UID in the token.
        token_uid: String,
        /// UID of the live pod.
        pod_uid: String,
    },
    /// The token's node claim disagrees with the node the pod runs on.
    /// The token's pod exists but may not hold the token's identity: it has
    /// finished, or runs another service account ([`Pod::may_hold`]).
    #[error("the token of {caller} is bound to a pod that may not hold it: {refusal}")]
    PodMayNotHold {
        /// The caller.
        caller: SpiffeId,
        /// Why not.
        refusal: PodRefusal,
    },
    /// A renewal for a service account with no pod that may hold it.
    #[error(
        "{caller} renews with a certificate, but no running pod of that service account exists"
    )]
    RenewalNoPod {
        /// The certificate's identity.
        caller: SpiffeId,
    },
    /// A renewal of a certificate issued to a pod that is gone (or finished).
    #[error("{caller} renews a certificate issued to pod {pod} (uid {uid}), which no longer may hold it")]
    RenewalPodGone {
        /// The certificate's identity.
        caller: SpiffeId,
        /// `namespace/name` of the pod it was issued to.
        pod: String,
        /// That pod's UID.
        uid: String,
    },
    #[error("the token of {caller} says node {token_node}, but its pod runs on node {pod_node}")]
    NodeMismatch {
        /// The caller.
        caller: SpiffeId,
        /// Node in the token.
        token_node: String,
        /// Node of the live pod.
        pod_node: String,
    },
    /// Impersonation by a caller that is not a trusted node agent.
    #[error("{caller} may not ask for {requested}: only node agents in --trusted-node-accounts may impersonate")]
    NotTrustedNode {
        /// The caller.
        caller: SpiffeId,
        /// The identity it asked for.
        requested: SpiffeId,
    },
    /// Impersonation whose caller's node is unknown.
    #[error(
        "{caller} asks for {requested}, but its token names no pod or node, so its node is unknown"
    )]
    NodeUnknown {
        /// The caller.
        caller: SpiffeId,
        /// The identity it asked for.
        requested: SpiffeId,
    },
    /// No running pod of the requested service account on the caller's node.
    #[error("{caller} asks for {requested}, but no running pod of that service account is on node {node}")]
    NoPodOnNode {
        /// The caller.
        caller: SpiffeId,
        /// The identity it asked for.
        requested: SpiffeId,
        /// The caller's node.
        node: String,
    },
    /// The requested identity is in another trust domain or not a Kubernetes identity.
    #[error("{caller} asks for {requested}, which is not a service-account identity of trust domain {trust_domain}")]
    ForeignIdentity {
        /// The caller.
        caller: SpiffeId,
        /// The identity it asked for.
        requested: SpiffeId,
        /// Our trust domain.
        trust_domain: TrustDomain,
    },
}

/// Decides which identity, if any, the caller gets.
pub fn check_authorized(input: &AuthzInput<'_>) -> Result<Permit, Unauthorized> {
    let caller_id = input.caller.identity();
    let node = caller_node(input)?;

    let requested = match input.impersonate {
        None => None,
        Some(requested) if requested == caller_id => None,
        Some(requested) => Some(requested),
    };
    let Some(requested) = requested else {
        if let Caller::Certificate { .. } = input.caller {
            return renewal(input, caller_id);
        }
        return Ok(Permit {
            identity: caller_id.clone(),
            node,
            impersonated: false,
            pods: Vec::new(),
        });
    };

    // Rule 3: only trusted node agents, authenticated by token (a token says
    // which node they run on; a renewal certificate does not).
    let trusted = match input.caller {
        Caller::Token(token) => input
            .trusted
            .contains(&token.claims.namespace, &token.claims.service_account),
        Caller::Certificate { .. } => false,
    };
    if !trusted {
        return Err(Unauthorized::NotTrustedNode {
            caller: caller_id.clone(),
            requested: requested.clone(),
        });
    }
    // Rule 4.
    let target = match requested.kubernetes() {
        Ok(k) if requested.is_member_of(input.trust_domain) => k,
        _ => {
            return Err(Unauthorized::ForeignIdentity {
                caller: caller_id.clone(),
                requested: requested.clone(),
                trust_domain: input.trust_domain.clone(),
            })
        }
    };
    let Some(node) = node else {
        return Err(Unauthorized::NodeUnknown {
            caller: caller_id.clone(),
            requested: requested.clone(),
        });
    };
    let mut pods: Vec<(String, String)> = input
        .target_pods
        .iter()
        .filter(|pod| {
            pod.may_hold(target.namespace, target.service_account)
                .is_ok()
                && pod.node_name.as_deref() == Some(node.as_str())
        })
        .map(|pod| (pod.name.clone(), pod.uid.clone()))
        .collect();
    pods.sort();
    if pods.is_empty() {
        return Err(Unauthorized::NoPodOnNode {
            caller: caller_id.clone(),
            requested: requested.clone(),
            node,
        });
    }
    Ok(Permit {
        identity: requested.clone(),
        node: Some(node),
        impersonated: true,
        pods,
    })
}

/// Rule 2, and where the caller runs: the live pod's node (a server-side
/// fact) wins; the token's node claim is used only when it names no pod.
/// Rule 5: a renewal by client certificate.
fn renewal(input: &AuthzInput<'_>, caller: &SpiffeId) -> Result<Permit, Unauthorized> {
    let Ok(k) = caller.kubernetes() else {
        return Err(Unauthorized::RenewalNoPod {
            caller: caller.clone(),
        });
    };
    let holders: Vec<&Pod> = input
        .target_pods
        .iter()
        .filter(|pod| pod.may_hold(k.namespace, k.service_account).is_ok())
        .collect();
    if holders.is_empty() {
        return Err(Unauthorized::RenewalNoPod {
            caller: caller.clone(),
        });
    }
    let Some((name, uid)) = input.issued_to else {
        return Ok(Permit {
            identity: caller.clone(),
            node: None,
            impersonated: false,
            pods: Vec::new(),
        });
    };
    let Some(pod) = holders.iter().find(|pod| pod.uid == uid) else {
        return Err(Unauthorized::RenewalPodGone {
            caller: caller.clone(),
            pod: format!("{}/{name}", k.namespace),
            uid: uid.to_owned(),
        });
    };
    Ok(Permit {
        identity: caller.clone(),
        node: pod.node_name.clone(),
        impersonated: false,
        pods: vec![(pod.name.clone(), pod.uid.clone())],
    })
}

fn caller_node(input: &AuthzInput<'_>) -> Result<Option<String>, Unauthorized> {
    let Caller::Token(token) = input.caller else {
        return Ok(None);
    };
    let claims = &token.claims;
    let caller = || token.identity.clone();
    let Some(pod_name) = &claims.pod_name else {
        return Ok(claims.node_name.clone());
    };
    let Some(pod) = input.caller_pod else {
        return Err(Unauthorized::PodGone {
            caller: caller(),
            namespace: claims.namespace.clone(),
            pod: pod_name.clone(),
        });
    };
    if let Some(token_uid) = &claims.pod_uid {
        if token_uid != &pod.uid {
            return Err(Unauthorized::PodUidMismatch {
                caller: caller(),
                pod: pod_name.clone(),
                token_uid: token_uid.clone(),
                pod_uid: pod.uid.clone(),
            });
        }
    }
    // Rule 2: the token's pod must still be one that may hold its identity
    // (not finished; running the account the token names).
    pod.may_hold(&claims.namespace, &claims.service_account)
        .map_err(|refusal| Unauthorized::PodMayNotHold {
            caller: caller(),
            refusal,
        })?;
    match (&claims.node_name, &pod.node_name) {
        (Some(token_node), Some(pod_node)) if token_node != pod_node => {
            Err(Unauthorized::NodeMismatch {
                caller: caller(),
                token_node: token_node.clone(),
                pod_node: pod_node.clone(),
            })
        }
        (token_node, pod_node) => Ok(pod_node.clone().or_else(|| token_node.clone())),
    }
}

#[cfg(test)]
mod tests;
