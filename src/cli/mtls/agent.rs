//! `meshid mtls status --agent-socket PATH`: the effective mode of every pod
//! on one node, as that node's agent resolved it (`ListWorkloadPolicies` on
//! the agent's Unix socket). The agent answers only its node's operator (uid
//! 0 or its own uid); a refusal is printed with the agent's reason.

use std::path::Path;

use anyhow::{bail, Context};
use tonic::Code;

use super::status::{print_rows, StatusRow};
use super::StatusArgs;
use crate::proto::meshid::policy::v1 as proto;
use crate::proxy::agent_link::uds_channel;
use crate::proxy::policy_watch::mode_from_wire;
use proto::policy_discovery_client::PolicyDiscoveryClient;

/// How long the agent may take to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn status(args: StatusArgs, socket: &Path) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(TIMEOUT, list(socket, args.namespace.as_deref()))
        .await
        .with_context(|| {
            format!(
                "the agent at {} did not answer within {TIMEOUT:?}",
                socket.display()
            )
        })??;
    for warning in &answer.warnings {
        eprintln!("warning: {warning}");
    }
    let rows = rows(&answer)?;
    if rows.is_empty() {
        match &args.namespace {
            Some(ns) => eprintln!("no running pods in namespace {ns} on node {}", answer.node),
            None => eprintln!("no running pods on node {}", answer.node),
        }
    }
    print_rows(args.output, &rows)
}

async fn list(
    socket: &Path,
    namespace: Option<&str>,
) -> anyhow::Result<proto::ListWorkloadPoliciesResponse> {
    match std::fs::symlink_metadata(socket) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no agent socket at {}: is `meshid agent` running on this node (--socket)?",
            socket.display()
        ),
        Err(e) => bail!("cannot reach the agent socket at {}: {e}", socket.display()),
    }
    let channel = uds_channel(socket)?;
    let request = proto::ListWorkloadPoliciesRequest {
        namespace: namespace.unwrap_or_default().to_owned(),
    };
    match PolicyDiscoveryClient::new(channel)
        .list_workload_policies(request)
        .await
    {
        Ok(answer) => Ok(answer.into_inner()),
        Err(status) if status.code() == Code::PermissionDenied => bail!(
            "the agent at {} refused: {}",
            socket.display(),
            status.message()
        ),
        Err(status) => bail!(
            "asking the agent at {}: {} ({:?})",
            socket.display(),
            status.message(),
            status.code()
        ),
    }
}

/// The agent's answer as status rows; a mode the agent should never send
/// (UNSPECIFIED or unknown) is an error naming the pod and field.
fn rows(answer: &proto::ListWorkloadPoliciesResponse) -> anyhow::Result<Vec<StatusRow>> {
    answer
        .workloads
        .iter()
        .map(|w| {
            let pod = format!("{}/{}", w.namespace, w.pod);
            let mode = mode_from_wire("mode", w.mode)
                .with_context(|| format!("the agent's answer for pod {pod}"))?;
            let ports = w
                .port_modes
                .iter()
                .map(|(port, mode)| {
                    mode_from_wire(&format!("port_modes[{port}]"), *mode)
                        .map(|mode| (*port, mode))
                        .with_context(|| format!("the agent's answer for pod {pod}"))
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(StatusRow {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                service_account: w.service_account.clone(),
                node: Some(answer.node.clone()),
                mode,
                ports,
                source: w.source.clone(),
                ports_source: (!w.ports_source.is_empty()).then(|| w.ports_source.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MtlsMode;

    fn workload(mode: i32) -> proto::WorkloadPolicy {
        proto::WorkloadPolicy {
            namespace: "shop".into(),
            pod: "db-1".into(),
            service_account: "db".into(),
            mode,
            port_modes: [(5432, proto::MtlsMode::Strict as i32)].into(),
            source: "namespace shop/default".into(),
            ports_source: "workload shop/db".into(),
        }
    }

    #[test]
    fn an_answer_becomes_rows_with_the_agents_node() {
        let answer = proto::ListWorkloadPoliciesResponse {
            node: "node-a".into(),
            workloads: vec![workload(proto::MtlsMode::Audit as i32)],
            warnings: vec![],
        };
        let rows = rows(&answer).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].mode, MtlsMode::Audit);
        assert_eq!(rows[0].node.as_deref(), Some("node-a"));
        assert_eq!(rows[0].ports.get(&5432), Some(&MtlsMode::Strict));
        assert_eq!(rows[0].ports_source.as_deref(), Some("workload shop/db"));
    }

    #[test]
    fn an_unspecified_or_unknown_mode_from_the_agent_is_an_error_naming_the_pod() {
        for bad in [0, 99] {
            let answer = proto::ListWorkloadPoliciesResponse {
                node: "node-a".into(),
                workloads: vec![workload(bad)],
                warnings: vec![],
            };
            let error = format!("{:#}", rows(&answer).unwrap_err());
            assert!(error.contains("shop/db-1"), "{error}");
            assert!(error.contains("mode"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_named() {
        let error = list(Path::new("/nonexistent/agent.sock"), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/agent.sock"), "{error}");
        assert!(error.contains("meshid agent"), "{error}");
    }
}
