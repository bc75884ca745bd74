//! `ListWorkloadPolicies`: the effective mode of every pod on this agent's
//! node, for `meshid mtls status --agent-socket`.
//!
//! Rule enforced ([`may_list`]): the listing is for the node's operator. A
//! caller whose peer credentials say uid 0 or the agent's own uid may list;
//! anyone else — a workload's proxy, which may learn its own policy only,
//! through `WatchPolicy` — is refused, and a caller without peer credentials
//! is refused too (a bearer token attests a workload, not an operator).

use super::follow::PolicyIndex;
use super::{proto, PolicyPushError};
use crate::agent::attest::PeerCredentials;
use crate::policy::MtlsMode;

/// The effective uid of this process, from the owner of `/proc/self`
/// (`None` when /proc cannot tell: then only uid 0 may list).
pub(super) fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Whether a caller with `peer` credentials may list every workload's policy
/// on an agent running as `agent_uid`; the refusal says why.
pub(super) fn may_list(
    peer: Option<&PeerCredentials>,
    agent_uid: Option<u32>,
) -> Result<(), String> {
    let Some(peer) = peer else {
        return Err(
            "no peer credentials on this connection: listing every workload's \
                    policy is for the node's operator (uid 0 or the agent's uid)"
                .to_owned(),
        );
    };
    if peer.uid == 0 || Some(peer.uid) == agent_uid {
        return Ok(());
    }
    Err(format!(
        "uid {} may not list every workload's policy: only uid 0{} may (a workload learns \
         its own policy through WatchPolicy)",
        peer.uid,
        agent_uid.map_or_else(String::new, |uid| format!(" or the agent's uid {uid}")),
    ))
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
    let mut pods: Vec<_> = index
        .platform
        .pods_on_node(node)
        .into_iter()
        .filter(|pod| pod.is_running())
        .filter(|pod| namespace.is_empty() || pod.namespace == namespace)
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let wire = |mode: MtlsMode| proto::MtlsMode::try_from(mode).map(i32::from);
    let mut warnings: Vec<String> = policies
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut workloads = Vec::with_capacity(pods.len());
    for pod in pods {
        let resolution = policies.resolve(&pod.namespace, &pod.labels);
        warnings.extend(
            resolution
                .warnings
                .iter()
                .map(|w| format!("pod {}/{}: {w}", pod.namespace, pod.name)),
        );
        let effective = resolution.effective;
        workloads.push(proto::WorkloadPolicy {
            mode: wire(effective.mode)?,
            port_modes: effective
                .ports
                .iter()
                .map(|(port, mode)| Ok((*port, wire(*mode)?)))
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

    #[test]
    fn root_and_the_agents_own_uid_may_list() {
        assert_eq!(may_list(Some(&peer(0)), Some(1000)), Ok(()));
        assert_eq!(may_list(Some(&peer(1000)), Some(1000)), Ok(()));
        assert_eq!(may_list(Some(&peer(0)), None), Ok(()));
    }

    #[test]
    fn a_workloads_uid_or_no_credentials_may_not_list() {
        let refused = may_list(Some(&peer(1001)), Some(1000)).unwrap_err();
        assert!(refused.contains("uid 1001"), "{refused}");
        assert!(refused.contains("agent's uid 1000"), "{refused}");
        // /proc unreadable: only root.
        assert!(may_list(Some(&peer(1000)), None).is_err());
        let anonymous = may_list(None, Some(1000)).unwrap_err();
        assert!(anonymous.contains("no peer credentials"), "{anonymous}");
    }

    #[test]
    fn own_uid_is_this_process_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let uid = own_uid().unwrap();
        // A file we create is owned by our effective uid.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), uid);
    }
}
