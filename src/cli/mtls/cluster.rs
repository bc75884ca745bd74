//! `meshid mtls set-mode|status --platform kube`: the same two commands
//! against the Kubernetes API server. `set-mode` server-side applies the
//! namespace's PeerAuthentication (field manager `meshid`), `status` lists
//! pods and policies once and resolves them as the agents do.

use anyhow::{bail, Context};

use super::status::{print_rows, print_warnings, rows};
use super::{check_namespace, SetModeArgs, StatusArgs};
use crate::platform::kube::connect::ApiServer;
use crate::platform::kube::policy_write::{
    apply_namespace_mode, list_peer_authentications, list_pods, FIELD_MANAGER,
};
use crate::policy::Policies;

pub(super) async fn set_mode(args: SetModeArgs) -> anyhow::Result<()> {
    let namespace = args.namespace.as_str();
    check_namespace(namespace)?;
    let ApiServer { client, url } = ApiServer::infer().await?;
    let applied = apply_namespace_mode(&client, namespace, args.mode)
        .await
        .with_context(|| format!("setting the mTLS mode of namespace {namespace} on {url}"))?;
    let all = list_peer_authentications(&client)
        .await
        .context("reading the PeerAuthentications back")?;
    let policies = Policies::new(&args.dir.root_namespace, all);
    print_warnings(&policies, Some(namespace));
    let scope = if namespace == policies.root_namespace() {
        "mesh-wide (root namespace)"
    } else {
        "namespace-wide"
    };
    match policies.namespace_policy(namespace) {
        Some(p) if p.metadata.name == applied.metadata.name => println!(
            "namespace {namespace}: {} {scope}, PeerAuthentication {namespace}/{} (server-side apply, field manager {FIELD_MANAGER})",
            p.mode(),
            p.metadata.name
        ),
        Some(p) => bail!(
            "applied PeerAuthentication {namespace}/{}, but {namespace}/{} is older and stays in effect ({})",
            applied.metadata.name,
            p.metadata.name,
            p.mode()
        ),
        None => bail!(
            "applied PeerAuthentication {namespace}/{}, but no namespace-wide policy for {namespace} is in effect",
            applied.metadata.name
        ),
    }
    Ok(())
}

pub(super) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let ApiServer { client, url } = ApiServer::infer().await?;
    let policies = list_peer_authentications(&client)
        .await
        .with_context(|| format!("reading PeerAuthentications from {url}"))?;
    let policies = Policies::new(&args.dir.root_namespace, policies);
    print_warnings(&policies, args.namespace.as_deref());
    let pods: Vec<_> = list_pods(&client)
        .await
        .with_context(|| format!("reading pods from {url}"))?
        .into_iter()
        .filter(|p| args.namespace.as_deref().is_none_or(|ns| ns == p.namespace))
        .collect();
    let rows = rows(&policies, pods);
    if rows.is_empty() {
        match &args.namespace {
            Some(ns) => eprintln!("no pods in namespace {ns} on {url}"),
            None => eprintln!("no pods on {url}"),
        }
    }
    print_rows(args.output, &rows)
}
