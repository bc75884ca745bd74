//! The per-stream xDS bookkeeping of a state-of-the-world SDS stream: what the
//! client subscribed to, which response (nonce, version) it last got, and
//! whether an ACK, a NACK or a stale request just arrived.
//!
//! Pure: no I/O, no clock, no logging. The rules (Envoy's xDS protocol):
//! - a request whose `response_nonce` is set but is not our last nonce is stale
//!   and ignored entirely;
//! - a request carrying our last nonce is an ACK, or a NACK when `error_detail`
//!   is set; a NACKed version is never sent again, only the next change is;
//! - a first request, a request with an empty nonce, or one that changes the
//!   resource names must be answered (with the current content);
//! - a new response is due when the content version of the subscribed
//!   resources differs from the last one sent.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::agent::cache::{Svid, TrustBundle};
use crate::agent::sds::resources::{self, SdsResource, SECRET_TYPE_URL};
use crate::agent::sds::SdsError;
use crate::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// Nonces are unique across every stream of this process, so a nonce from an
/// earlier stream can never pass for the current one.
static NONCE: AtomicU64 = AtomicU64::new(1);

fn fresh_nonce() -> String {
    NONCE.fetch_add(1, Ordering::Relaxed).to_string()
}

/// What a request turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// A first request, a re-request, or a change of resource names: it gets an
    /// answer as soon as the content is there.
    Subscribe,
    /// The client applied `version`.
    Ack {
        /// The version acknowledged.
        version: String,
    },
    /// The client rejected `version`; it is not sent again.
    Nack {
        /// The version rejected.
        version: String,
        /// The client's reason (`error_detail.message`).
        message: String,
    },
    /// A request for a superseded response: ignored.
    Stale {
        /// The nonce it carried.
        nonce: String,
    },
}

/// A request, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestOutcome {
    /// What kind of request it was.
    pub(crate) kind: RequestKind,
    /// Requested names we do not serve; only reported the first time in a
    /// stream, so that the caller warns once.
    pub(crate) newly_unknown: Vec<String>,
}

/// The state of one StreamSecrets stream.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    /// The subscribed resources we serve (sorted, no duplicates).
    resources: Vec<SdsResource>,
    /// Whether any request was accepted yet.
    subscribed: bool,
    /// Whether unknown names were already reported on this stream.
    warned_unknown: bool,
    /// Nonce of the last response sent.
    last_nonce: Option<String>,
    /// Version of the last response sent (whether ACKed, NACKed or pending).
    sent_version: Option<String>,
    /// Version the client last ACKed.
    acked_version: Option<String>,
    /// Version the client last NACKed.
    nacked_version: Option<String>,
    /// The client asked and must get an answer even if the version is unchanged.
    must_answer: bool,
}

impl StreamState {
    /// Classifies `req` and updates the subscription. Errors on a type URL that
    /// is not the Secret type.
    pub(crate) fn on_request(
        &mut self,
        req: &DiscoveryRequest,
    ) -> Result<RequestOutcome, SdsError> {
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
            return Err(SdsError::WrongTypeUrl {
                got: req.type_url.clone(),
            });
        }
        let answers_last = !req.response_nonce.is_empty()
            && self.last_nonce.as_deref() == Some(req.response_nonce.as_str());
        if !req.response_nonce.is_empty() && self.last_nonce.is_some() && !answers_last {
            return Ok(RequestOutcome {
                kind: RequestKind::Stale {
                    nonce: req.response_nonce.clone(),
                },
                newly_unknown: Vec::new(),
            });
        }

        let (known, unknown) = resources::split_names(&req.resource_names);
        let names_changed = !self.subscribed || known != self.resources;
        self.resources = known;
        self.subscribed = true;
        let newly_unknown = if unknown.is_empty() || self.warned_unknown {
            Vec::new()
        } else {
            self.warned_unknown = true;
            unknown
        };

        let kind = if answers_last {
            let version = self.sent_version.clone().unwrap_or_default();
            if names_changed {
                self.must_answer = true;
            }
            match &req.error_detail {
                Some(status) => {
                    self.nacked_version = Some(version.clone());
                    RequestKind::Nack {
                        version,
                        message: status.message.clone(),
                    }
                }
                None if names_changed => RequestKind::Subscribe,
                None => {
                    self.acked_version = Some(version.clone());
                    RequestKind::Ack { version }
                }
            }
        } else {
            // First request on this stream, or an explicit re-request (empty nonce).
            self.must_answer = true;
            RequestKind::Subscribe
        };
        Ok(RequestOutcome {
            kind,
            newly_unknown,
        })
    }

    /// The response due now, if any: when every subscribed resource has
    /// content and either the client asked or the content version differs from
    /// the last one sent. Records the response's nonce and version.
    pub(crate) fn next_response(
        &mut self,
        svid: Option<&Svid>,
        bundle: Option<&TrustBundle>,
    ) -> Option<DiscoveryResponse> {
        if self.resources.is_empty() {
            return None;
        }
        let version = resources::version(&self.resources, svid, bundle)?;
        if !self.must_answer && self.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let built = resources::build(&self.resources, svid, bundle)?;
        let nonce = fresh_nonce();
        self.last_nonce = Some(nonce.clone());
        self.sent_version = Some(version.clone());
        self.must_answer = false;
        Some(DiscoveryResponse {
            version_info: version,
            resources: built,
            canary: false,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce,
        })
    }

    /// The subscribed resources we serve.
    pub(crate) fn resources(&self) -> &[SdsResource] {
        &self.resources
    }

    /// The version the client last ACKed.
    pub(crate) fn acked_version(&self) -> Option<&str> {
        self.acked_version.as_deref()
    }

    /// The version the client last NACKed.
    #[cfg(test)]
    pub(crate) fn nacked_version(&self) -> Option<&str> {
        self.nacked_version.as_deref()
    }
}
