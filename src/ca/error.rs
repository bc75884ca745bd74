//! The CA's error type and its one mapping to gRPC status codes.
//!
//! Rule enforced: authentication failures are opaque to the caller (the full
//! reason goes to the log and the audit record); authorization refusals name
//! both identities; CSR and TTL errors name the rule broken.

use crate::audit::AuditError;
use crate::ca::authn::AuthnError;
use crate::ca::authz::Unauthorized;
use crate::pki::authority::AuthorityError;
use crate::pki::csr::CsrError;

/// Why a `CreateCertificate` did not yield a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The caller could not be authenticated.
    #[error("authentication failed: {0}")]
    Unauthenticated(#[from] AuthnError),
    /// The caller may not have the identity.
    #[error(transparent)]
    PermissionDenied(Box<Unauthorized>),
    /// The CSR asks for an identity other than the one being granted.
    #[error("{0}")]
    IdentityMismatch(String),
    /// The CSR is unusable.
    #[error("invalid CSR: {0}")]
    InvalidCsr(#[source] CsrError),
    /// A request field other than the CSR is unusable.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many requests in flight.
    #[error("the CA is overloaded ({0} requests in flight); retry with backoff")]
    Overloaded(usize),
    /// The decision could not be audited, so no certificate is returned.
    #[error("audit store unavailable, no certificate issued: {0}")]
    AuditUnavailable(#[source] AuditError),
    /// Signing or the post-signing check failed.
    #[error("signing failed: {0}")]
    Signing(#[source] AuthorityError),
}

impl From<Unauthorized> for CaError {
    fn from(e: Unauthorized) -> Self {
        CaError::PermissionDenied(Box::new(e))
    }
}

impl CaError {
    /// The `error` label of `citadel_server_csr_sign_err_count`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CaError::Unauthenticated(AuthnError::Unavailable(_)) => "platform_unavailable",
            CaError::Unauthenticated(_) => "unauthenticated",
            CaError::PermissionDenied(_) => "permission_denied",
            CaError::IdentityMismatch(_) => "identity_mismatch",
            CaError::InvalidCsr(_) => "csr_invalid",
            CaError::InvalidRequest(_) => "request_invalid",
            CaError::Overloaded(_) => "overloaded",
            CaError::AuditUnavailable(_) => "audit_unavailable",
            CaError::Signing(_) => "sign_failed",
        }
    }
}

impl From<CaError> for tonic::Status {
    fn from(e: CaError) -> Self {
        use tonic::Status;
        match &e {
            // Retryable, and as opaque as a refusal: the reason is in the log.
            CaError::Unauthenticated(AuthnError::Unavailable(_)) => Status::unavailable(
                "cannot verify credentials now (the platform is unavailable); retry with backoff",
            ),
            // Opaque on purpose: the reason is in the log and the audit record.
            CaError::Unauthenticated(_) => Status::unauthenticated("authentication failed"),
            CaError::PermissionDenied(_) | CaError::IdentityMismatch(_) => {
                Status::permission_denied(e.to_string())
            }
            CaError::InvalidCsr(_) | CaError::InvalidRequest(_) => {
                Status::invalid_argument(e.to_string())
            }
            CaError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
            CaError::AuditUnavailable(_) => {
                Status::unavailable("audit store unavailable, no certificate issued")
            }
            CaError::Signing(_) => Status::internal("the CA failed to sign; see its log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_unavailable_is_retryable_and_refusals_stay_opaque() {
        let down = tonic::Status::from(CaError::Unauthenticated(AuthnError::Unavailable(
            "TokenReview: connection refused".into(),
        )));
        assert_eq!(down.code(), tonic::Code::Unavailable);
        assert!(!down.message().contains("connection refused"), "{down:?}");
        let refused = tonic::Status::from(CaError::Unauthenticated(AuthnError::Token(
            "expired".into(),
        )));
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "authentication failed");
    }
}
