//! `ListWorkloadPolicies`: the effective mode of every pod on this agent's
//! node, for `meshid mtls status --agent-socket`.
//!
//! Rule enforced ([`may_list`]): the listing is for the node's operator, never
//! for a workload (which may learn its own policy only, through
//! `WatchPolicy`). The caller's peer credentials must say uid 0 or the
//! agent's own uid, *and* the caller must not run inside a pod other than the
//! agent's own: a container running as root shows uid 0 too, so uid alone
//! would let any root workload list its neighbours and their modes. Where the
//! caller runs comes from its pid's `/proc/<pid>/cgroup`, read under the
//! attestor's start-time check; a caller whose pid the kernel does not give,
//! whose cgroup cannot be read, or whose pid was reused meanwhile, is refused
//! (fail closed). A bearer token never helps: it attests a workload, not an
//! operator.

use super::follow::PolicyIndex;
use super::{proto, PolicyPushError};
use crate::agent::attest::{pod_uids, PeerCredentials};
use crate::policy::report::{report, warning_lines, PodMode};
use crate::policy::MtlsMode;

/// This process's effective uid; `None` when it cannot be read, and then
/// only uid 0 may list.
pub(super) fn own_uid() -> Option<u32> {
    crate::proc_self::effective_uid()
}

/// The pods this process runs in (empty outside Kubernetes).
pub(super) fn own_pods() -> Vec<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .map(|c| pod_uids(&c))
        .unwrap_or_default()
}

/// What [`may_list`] decides on.
pub(super) struct ListingCaller<'a> {
    /// The connection's peer credentials, if the kernel gave them.
    pub(super) peer: Option<&'a PeerCredentials>,
    /// The pods the caller runs in ([`crate::agent::attest::Attestor::peer_pod_uids`]), or why
    /// that cannot be told.
    pub(super) pods: Result<Vec<String>, String>,
}

/// Whether `caller` may list every workload's policy on an agent running as
/// `agent_uid` inside `agent_pods`; the refusal says why.
pub(super) fn may_list(
    caller: &ListingCaller<'_>,
    agent_uid: Option<u32>,
    agent_pods: &[String],
) -> Result<(), String> {
    let Some(peer) = caller.peer else {
        return Err(
            "no peer credentials on this connection: listing every workload's \
                    policy is for the node's operator (uid 0 or the agent's uid)"
                .to_owned(),
        );
    };
    if peer.uid != 0 && Some(peer.uid) != agent_uid {
        return Err(format!(
            "uid {} may not list every workload's policy: only uid 0{} may (a workload learns \
             its own policy through WatchPolicy)",
            peer.uid,
            agent_uid.map_or_else(String::new, |uid| format!(" or the agent's uid {uid}")),
        ));
    }
    match &caller.pods {
        Err(why) => Err(format!(
            "uid {} may list only from outside any workload's pod, and where it runs is \
             unknown: {why}",
            peer.uid
        )),
        Ok(pods) => match pods.iter().find(|pod| !agent_pods.contains(pod)) {
            Some(pod) => Err(format!(
                "the caller (uid {}) runs in pod {pod}, a workload: it learns its own policy \
                 only, through WatchPolicy, even as root",
                peer.uid
            )),
            None => Ok(()),
        },
    }
}

/// Every running pod on `node` (of `namespace`, when not empty), sorted by
/// namespace and name, with its resolved mode, and the policy warnings.
pub(super) fn list(
    index: &PolicyIndex,
    node: &str,
    namespace: &str,
) -> Result<proto::ListWorkloadPoliciesResponse, PolicyPushError> {
    let generation = *index.platform.changes().borrow();
    let policies = index.policies(generation);
    let pods = index
        .platform
        .pods_on_node(node)
        .into_iter()
        .filter(|pod| pod.is_running())
        .filter(|pod| namespace.is_empty() || pod.namespace == namespace);
    let report = report(&policies, pods);
    let warnings = warning_lines(&policies, &report);
    let wire = |mode: MtlsMode| proto::MtlsMode::try_from(mode).map(i32::from);
    let mut workloads = Vec::with_capacity(report.len());
    for PodMode { pod, effective, .. } in report {
        let unset = |e: PolicyPushError| {
            tracing::error!(pod = %format_args!("{}/{}", pod.namespace, pod.name), error = %e,
                "policy listing failed");
            e
        };
        workloads.push(proto::WorkloadPolicy {
            mode: wire(effective.mode).map_err(unset)?,
            port_modes: effective
                .ports
                .iter()
                .map(|(port, mode)| Ok((*port, wire(*mode).map_err(unset)?)))
                .collect::<Result<_, PolicyPushError>>()?,
            source: effective.source.to_string(),
            ports_source: effective
                .ports_source
                .map(|s| s.to_string())
                .unwrap_or_default(),
            namespace: pod.namespace,
            pod: pod.name,
            service_account: pod.service_account,
        });
    }
    Ok(proto::ListWorkloadPoliciesResponse {
        node: node.to_owned(),
        workloads,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerCredentials {
        PeerCredentials {
            pid: Some(42),
            uid,
            gid: uid,
        }
    }

    fn on_host(peer: &PeerCredentials) -> ListingCaller<'_> {
        ListingCaller {
            peer: Some(peer),
            pods: Ok(Vec::new()),
        }
    }

    #[test]
    fn root_and_the_agents_own_uid_may_list_from_outside_any_pod() {
        assert_eq!(may_list(&on_host(&peer(0)), Some(1000), &[]), Ok(()));
        assert_eq!(may_list(&on_host(&peer(1000)), Some(1000), &[]), Ok(()));
        assert_eq!(may_list(&on_host(&peer(0)), None, &[]), Ok(()));
    }

    #[test]
    fn a_workloads_uid_or_no_credentials_may_not_list() {
        let refused = may_list(&on_host(&peer(1001)), Some(1000), &[]).unwrap_err();
        assert!(refused.contains("uid 1001"), "{refused}");
        assert!(refused.contains("agent's uid 1000"), "{refused}");
        // /proc unreadable: only root.
        assert!(may_list(&on_host(&peer(1000)), None, &[]).is_err());
        let anonymous = ListingCaller {
            peer: None,
            pods: Ok(Vec::new()),
        };
        let refused = may_list(&anonymous, Some(1000), &[]).unwrap_err();
        assert!(refused.contains("no peer credentials"), "{refused}");
    }

    #[test]
    fn root_inside_a_workloads_pod_may_not_list() {
        let root = peer(0);
        let in_pod = ListingCaller {
            peer: Some(&root),
            pods: Ok(vec!["1111-2222".into()]),
        };
        let refused = may_list(&in_pod, Some(0), &["9999-0000".into()]).unwrap_err();
        assert!(refused.contains("pod 1111-2222"), "{refused}");
        // The agent's own pod (`kubectl exec` into the agent) may.
        assert_eq!(may_list(&in_pod, Some(0), &["1111-2222".into()]), Ok(()));
    }

    #[test]
    fn a_caller_whose_place_is_unknown_may_not_list() {
        let root = peer(0);
        let unknown = ListingCaller {
            peer: Some(&root),
            pods: Err(crate::agent::attest::AttestError::NoPid.to_string()),
        };
        let refused = may_list(&unknown, Some(0), &[]).unwrap_err();
        assert!(refused.contains("no pid"), "{refused}");
    }

    #[test]
    fn this_process_is_found_where_it_runs() {
        assert!(own_uid().is_some());
    }
}
