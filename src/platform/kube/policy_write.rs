//! `meshid mtls set-mode` / `status` against an API server: one-shot reads
//! of pods, namespaces and policies, and the server-side apply of a
//! namespace's mode.
//!
//! Owns the write of a namespace-wide PeerAuthentication. Rules enforced (the
//! same as the local `set-mode`): one namespace-wide policy per namespace —
//! the one in effect (oldest, then by name, as Istio picks it) is updated in
//! place, never shadowed by a second; a new one is named `default`, Istio's
//! convention ([`NAMESPACE_POLICY_NAME`]). The write is a server-side apply (`fieldManager=meshid`,
//! forced), so it takes over `spec.mtls.mode` only and leaves every other
//! field to its owner. Policies that do not decode are skipped with a warning
//! naming them, as the informers do.

use ::kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use k8s_openapi::api::core::v1 as k8s;

use std::sync::Arc;

use super::informers::{convert, policies, policy_resource, POLICY_GROUP};
use crate::platform::{Namespace, PlatformError, Pod, NAMESPACE_POLICY_NAME};
use crate::policy::{ApiVersion, MtlsMode, PeerAuthentication, PolicyRef};

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "meshid";

/// The versions we read and write, preferred first for writing: v1beta1 is
/// what most existing policies use, v1 what newer clusters may serve alone.
const VERSIONS: [(&str, ApiVersion); 2] =
    [("v1beta1", ApiVersion::V1Beta1), ("v1", ApiVersion::V1)];

fn unavailable(what: &str, error: ::kube::Error) -> PlatformError {
    PlatformError::Unavailable(format!("{what}: {error}"))
}

fn is_not_found(error: &::kube::Error) -> bool {
    matches!(error, ::kube::Error::Api(s) if s.code == 404)
}

/// Sets the mTLS mode of `namespace` (for the root namespace: of the mesh) by
/// server-side applying its namespace-wide PeerAuthentication; returns the
/// policy as the API server stored it.
pub async fn apply_namespace_mode(
    client: &::kube::Client,
    namespace: &str,
    mode: MtlsMode,
) -> Result<PeerAuthentication, PlatformError> {
    let in_effect = list_policies(client, Some(namespace))
        .await?
        .into_iter()
        .filter(PeerAuthentication::is_namespace_wide)
        .min_by(|a, b| PolicyRef::of(a).precedence(&PolicyRef::of(b)));
    let (name, preferred) = match &in_effect {
        Some(p) => (p.metadata.name.clone(), p.api_version),
        None => (NAMESPACE_POLICY_NAME.to_owned(), ApiVersion::V1Beta1),
    };
    let mut order: Vec<_> = VERSIONS.to_vec();
    order.sort_by_key(|(_, v)| *v != preferred);
    let mut last_error = None;
    for (version, api_version) in order {
        let resource = policy_resource(version);
        let mut policy = PeerAuthentication::namespace_wide(namespace, &name, mode);
        policy.api_version = api_version;
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&policy)).await {
            Ok(stored) => {
                tracing::info!(%namespace, %name, %mode, version, "PeerAuthentication applied");
                return convert::peer_authentication(&stored, &resource).map_err(|bad| {
                    PlatformError::Unavailable(format!(
                        "applied, but the API server's answer cannot be read back: {bad}"
                    ))
                });
            }
            // This version is not served: try the other.
            Err(e) if is_not_found(&e) => last_error = Some(e),
            Err(e) => {
                return Err(unavailable(
                    &format!("cannot apply PeerAuthentication {namespace}/{name}"),
                    e,
                ))
            }
        }
    }
    Err(PlatformError::Unavailable(format!(
        "cannot apply PeerAuthentication {namespace}/{name}: {POLICY_GROUP} is not served \
         (are Istio's CRDs installed?){}",
        last_error.map(|e| format!(": {e}")).unwrap_or_default()
    )))
}

/// Every PeerAuthentication of the cluster (both versions, each object once),
/// sorted by namespace and name; a version the API server does not serve is skipped.
pub async fn list_peer_authentications(
    client: &::kube::Client,
) -> Result<Vec<PeerAuthentication>, PlatformError> {
    list_policies(client, None).await
}

async fn list_policies(
    client: &::kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<PeerAuthentication>, PlatformError> {
    let mut lists: Vec<(ApiResource, Vec<Arc<DynamicObject>>)> = Vec::new();
    for (version, _) in [VERSIONS[1], VERSIONS[0]] {
        let resource = policy_resource(version);
        let api = match namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource),
            None => Api::<DynamicObject>::all_with(client.clone(), &resource),
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => lists.push((resource, list.items.into_iter().map(Arc::new).collect())),
            Err(e) if is_not_found(&e) => {
                tracing::debug!(version, "PeerAuthentication version not served");
            }
            Err(e) => {
                return Err(unavailable(
                    &format!("cannot list {POLICY_GROUP}/{version} PeerAuthentications"),
                    e,
                ))
            }
        }
    }
    let sources: Vec<policies::Source<'_>> = lists
        .iter()
        .map(|(resource, objects)| policies::Source {
            resource,
            objects: objects.clone(),
        })
        .collect();
    Ok(policies::merge(&sources, &mut policies::Reported::new()))
}

/// Every pod of the cluster (one list, no watch), sorted by namespace and name.
pub async fn list_pods(client: &::kube::Client) -> Result<Vec<Pod>, PlatformError> {
    let api = Api::<k8s::Pod>::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| unavailable("cannot list pods", e))?;
    let mut pods: Vec<Pod> = list.items.into_iter().map(convert::pod).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}

/// Every namespace (one list, no watch), sorted by name.
pub async fn list_namespaces(client: &::kube::Client) -> Result<Vec<Namespace>, PlatformError> {
    let api = Api::<k8s::Namespace>::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| unavailable("cannot list namespaces", e))?;
    let mut namespaces: Vec<Namespace> = list.items.into_iter().map(convert::namespace).collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(namespaces)
}
