//! The gRPC surface: `istio.v1.auth.IstioCertificateService`. Thin: it lifts
//! the transport's facts (metadata, TLS peer) into an [`IssueRequest`], runs
//! the pipeline, and maps the one error type to a status in one place
//! ([`crate::ca::error`]).

use std::sync::Arc;

use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use crate::ca::error::CaError;
use crate::ca::issuer::{IssueRequest, Issuer};
use crate::ca::tls::CaConnInfo;
use crate::proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use crate::token::BearerToken;

/// Largest request message decoded. Larger than any CSR we accept, so that a
/// too-large CSR is refused (and audited) by CSR validation with a clear
/// message rather than by the transport.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// The metadata key a node agent uses to ask for a workload's identity.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The tonic service.
#[derive(Clone)]
pub struct CaService {
    issuer: Arc<Issuer>,
}

impl CaService {
    /// Wraps the pipeline.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self { issuer }
    }

    /// The tonic server for this service, with the message size bound set.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let conn = request.extensions().get::<CaConnInfo>().cloned();
        let bearer = BearerToken::from_metadata(request.metadata());
        let message = request.into_inner();
        // A bad value is refused by the issuer, after authentication, so that
        // the refusal is audited.
        let (impersonate, metadata_error) = match impersonated_identity(message.metadata.as_ref()) {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let issue = IssueRequest {
            bearer,
            client_chain: conn.as_ref().and_then(|c| c.client_chain.clone()),
            peer: conn.map(|c| c.remote),
            csr: message.csr,
            validity_secs: message.validity_duration,
            impersonate,
            metadata_error,
        };
        let issued = self.issuer.issue(issue).await?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.cert_chain,
        }))
    }
}

/// Reads `ImpersonatedIdentity` from the request metadata; other keys (such
/// as Istio's `CertSigner`, often "") are tolerated and ignored.
fn impersonated_identity(
    metadata: Option<&prost_types::Struct>,
) -> Result<Option<String>, CaError> {
    let Some(value) = metadata.and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(_) => Err(CaError::InvalidRequest(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Struct, Value};

    fn meta(pairs: &[(&str, Kind)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(v.clone()),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn impersonation_metadata_is_read_and_cert_signer_tolerated() {
        let m = meta(&[
            (
                IMPERSONATED_IDENTITY,
                Kind::StringValue("spiffe://cluster.local/ns/a/sa/b".into()),
            ),
            ("CertSigner", Kind::StringValue(String::new())),
        ]);
        assert_eq!(
            impersonated_identity(Some(&m)).unwrap().as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(impersonated_identity(None).unwrap(), None);
        let bad = meta(&[(IMPERSONATED_IDENTITY, Kind::NumberValue(1.0))]);
        assert!(impersonated_identity(Some(&bad)).is_err());
    }
}
