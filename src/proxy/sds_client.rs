//! The proxy's SDS client: keeps the workload's SVID and trust bundle current
//! from the node agent's Envoy SDS v3 stream (`StreamSecrets`, resources
//! `default` and `ROOTCA`, as Envoy asks istio-agent for them).
//!
//! Owns the wire → [`SvidMaterial`] conversion ([`material_from_response`]),
//! the ACK/NACK answers and the SDS stream's loop ([`watch_certificates`]).
//! Not the checks a certificate must pass (those are [`CertStore`]'s), nor
//! the channel, token and reconnect timing (the
//! [`agent_link`](super::agent_link), shared with the policy stream).
//!
//! Rules enforced:
//! - a response is ACKed (its `version_info` and `nonce` echoed) only once its
//!   material passed [`CertStore::new`]/[`CertStore::swap`] (our key, our
//!   identity, chains to the bundle, valid now, every CRL verifies against
//!   the bundle or our chain); otherwise it is NACKed with `error_detail`
//!   and the current certificate, bundle and CRLs stay in force;
//! - our identity is fixed by the first certificate that checks out; a later
//!   one for another identity is refused by the store;
//! - if the agent is away, the current certificate is kept (until it
//!   expires) and the stream is reopened ([`Reconnect`]).

#[cfg(test)]
mod tests;

use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Request;
use zeroize::Zeroizing;

use crate::pki::crl::parse_pem_crls;
use crate::proto::envoy::config::core::v3::{data_source::Specifier, DataSource};
use crate::proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use crate::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use crate::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use crate::proto::google::rpc::Status as RpcStatus;
use crate::proxy::agent_link::{status_text, AgentLink, Reconnect};
use crate::proxy::tls::{spiffe_id_of, CertStore, ProxyTlsError, SvidMaterial};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The SDS resource type, as Envoy and istio-agent name it.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The resource holding our certificate chain and key.
pub const WORKLOAD_CERT: &str = "default";

/// The resource holding the trust bundle.
pub const ROOT_CA: &str = "ROOTCA";

/// Why an SDS response could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdsClientError {
    /// A resource we asked for is missing from the response.
    #[error("SDS response lacks resource {name:?}")]
    Missing {
        /// The resource name.
        name: &'static str,
    },
    /// A resource could not be decoded or has the wrong shape.
    #[error("SDS resource {name:?} is malformed: {reason}")]
    Malformed {
        /// The resource name (or type URL when the name is unknown).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The material did not pass the certificate checks.
    #[error("certificate from SDS refused: {0}")]
    Tls(#[from] ProxyTlsError),
}

/// The request for our two resources: the first (empty version and nonce),
/// an ACK (`version` and `nonce` of the response), or a NACK (`nack` set,
/// `version` the last accepted one).
pub fn sds_request(version: &str, nonce: &str, nack: Option<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: vec![WORKLOAD_CERT.to_owned(), ROOT_CA.to_owned()],
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: nack.map(|message| RpcStatus {
            // google.rpc.Code INVALID_ARGUMENT, as Envoy sends for a bad secret.
            code: 3,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

fn malformed(name: &str, reason: impl Into<String>) -> SdsClientError {
    SdsClientError::Malformed {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Inline PEM text of a data source (bytes or string); secrets stay zeroized.
fn inline_text(
    name: &str,
    source: Option<&DataSource>,
) -> Result<Zeroizing<String>, SdsClientError> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => String::from_utf8(bytes.clone())
            .map(Zeroizing::new)
            .map_err(|_| malformed(name, "inline bytes are not UTF-8 PEM")),
        Some(Specifier::InlineString(text)) => Ok(Zeroizing::new(text.clone())),
        _ => Err(malformed(name, "not inline (files are not supported)")),
    }
}

/// Reads `default` (chain + key) and `ROOTCA` (bundle, and CRLs when its
/// `crl` is set) out of a response.
/// Pure: the checks are the store's.
pub fn material_from_response(
    response: &DiscoveryResponse,
) -> Result<SvidMaterial, SdsClientError> {
    let mut cert: Option<(Zeroizing<String>, Zeroizing<String>)> = None;
    let mut bundle: Option<Zeroizing<String>> = None;
    let mut crls: Option<Zeroizing<String>> = None;
    for any in &response.resources {
        if any.type_url != SECRET_TYPE_URL {
            return Err(malformed(&any.type_url, "unexpected resource type"));
        }
        let mut decoded =
            Secret::decode(any.value.as_slice()).map_err(|e| malformed("?", e.to_string()))?;
        let name = decoded.name.clone();
        match (name.as_str(), decoded.r#type.as_ref()) {
            (WORKLOAD_CERT, Some(secret::Type::TlsCertificate(tls))) => {
                let chain = inline_text(&name, tls.certificate_chain.as_ref())?;
                let key = inline_text(&name, tls.private_key.as_ref())?;
                cert = Some((chain, key));
            }
            (ROOT_CA, Some(secret::Type::ValidationContext(vc))) => {
                bundle = Some(inline_text(&name, vc.trusted_ca.as_ref())?);
                // Optional: absent (an agent without CRLs) is none.
                if vc.crl.is_some() {
                    crls = Some(inline_text(&name, vc.crl.as_ref())?);
                }
            }
            (WORKLOAD_CERT | ROOT_CA, _) => return Err(malformed(&name, "wrong secret type")),
            _ => {}
        }
        wipe_key(&mut decoded);
    }
    let (chain, key) = cert.ok_or(SdsClientError::Missing {
        name: WORKLOAD_CERT,
    })?;
    let bundle = bundle.ok_or(SdsClientError::Missing { name: ROOT_CA })?;
    let mut material = SvidMaterial::from_pem(&chain, &key, &bundle)?;
    if let Some(crls) = crls {
        material.crls = parse_pem_crls(&crls).map_err(ProxyTlsError::CrlPem)?;
    }
    Ok(material)
}

/// Zeroes the decoded copy of a private key.
fn wipe_key(decoded: &mut Secret) {
    use zeroize::Zeroize;
    if let Some(secret::Type::TlsCertificate(tls)) = decoded.r#type.as_mut() {
        match tls.private_key.as_mut().and_then(|k| k.specifier.as_mut()) {
            Some(Specifier::InlineBytes(bytes)) => bytes.zeroize(),
            Some(Specifier::InlineString(text)) => text.zeroize(),
            _ => {}
        }
    }
}

/// Checks `material` into the store: creates it (our identity taken from
/// the first certificate) or swaps it. Returns the new store when created.
fn install(
    store: &mut Option<Arc<CertStore>>,
    material: SvidMaterial,
    clock: &SharedClock,
) -> Result<Option<Arc<CertStore>>, SdsClientError> {
    match store {
        Some(current) => {
            current.swap(material)?;
            tracing::info!(identity = %current.identity(), not_after = %current.not_after(), "new certificate in force");
            Ok(None)
        }
        None => {
            let leaf = material
                .chain
                .first()
                .ok_or_else(|| malformed(WORKLOAD_CERT, "empty certificate chain"))?;
            let identity = spiffe_id_of(leaf)?;
            let created = CertStore::new(identity, material, clock.clone())?;
            tracing::info!(identity = %created.identity(), not_after = %created.not_after(), "first certificate in force");
            *store = Some(created.clone());
            Ok(Some(created))
        }
    }
}

/// Keeps our certificate current from the agent over `link` until
/// `shutdown`. The store is published on `tx` once the first certificate
/// checked out; later certificates are swapped into it. The stream is
/// reopened after it ends or fails ([`Reconnect`]).
pub async fn watch_certificates(
    link: AgentLink,
    clock: SharedClock,
    tx: watch::Sender<Option<Arc<CertStore>>>,
    shutdown: Shutdown,
) {
    let mut client = SecretDiscoveryServiceClient::new(link.channel());
    let mut store: Option<Arc<CertStore>> = None;
    let mut reconnect = Reconnect::new("SDS");
    loop {
        let ended = tokio::select! {
            () = shutdown.triggered() => return,
            ended = one_stream(&mut client, &link, &clock, &mut store, &tx, &mut reconnect) => ended,
        };
        let keeping = store.as_ref().map_or_else(
            || "no certificate yet".to_owned(),
            |s| format!("certificate valid until {}", s.not_after()),
        );
        if !reconnect.wait(&ended, &keeping, &shutdown).await {
            return;
        }
    }
}

/// One SDS stream, until it ends; returns why it ended.
async fn one_stream(
    client: &mut SecretDiscoveryServiceClient<Channel>,
    link: &AgentLink,
    clock: &SharedClock,
    store: &mut Option<Arc<CertStore>>,
    tx: &watch::Sender<Option<Arc<CertStore>>>,
    reconnect: &mut Reconnect,
) -> String {
    let (req_tx, req_rx) = mpsc::channel(4);
    if req_tx.send(sds_request("", "", None)).await.is_err() {
        return "request channel closed".to_owned();
    }
    let mut request = Request::new(ReceiverStream::new(req_rx));
    if let Err(e) = link.authorize(&mut request) {
        return e.to_string();
    }
    let mut stream = match client.stream_secrets(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status_text(&status),
    };
    let mut accepted = String::new();
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return "the agent ended the SDS stream".to_owned(),
            Err(status) => return status_text(&status),
        };
        let answer = match material_from_response(&response)
            .and_then(|material| install(store, material, clock))
        {
            Ok(created) => {
                reconnect.progressed();
                if let Some(created) = created {
                    tx.send_replace(Some(created));
                }
                accepted.clone_from(&response.version_info);
                sds_request(&response.version_info, &response.nonce, None)
            }
            Err(e) => {
                tracing::error!(version = %response.version_info, error = %e, "NACK: certificate from the agent refused; the current one stays in force");
                sds_request(&accepted, &response.nonce, Some(e.to_string()))
            }
        };
        if req_tx.send(answer).await.is_err() {
            return "request channel closed".to_owned();
        }
    }
}
