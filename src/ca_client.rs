//! The client of the CA: Istio's `CreateCertificate` over TLS, with the
//! caller's own service-account token (re-read from its file on every call,
//! like a projected token). The node agent asks for its workloads with
//! `ImpersonatedIdentity`, exactly as ztunnel asks; the injector asks for
//! itself, without it.
//!
//! The same client opens the CA's `WatchTrust` stream ([`CaClient::watch_trust`])
//! and follows the trust bundle it delivers: its TLS roots are the `--ca-root`
//! roots plus the bundle's ([`CaClient::trust_roots`]), so that an agent keeps
//! reaching a CA whose serving certificate a newly activated authority issued.
//!
//! Rule enforced: an answer is used only if its leaf names the identity that
//! was asked for, carries our public key, and is signed by the next
//! certificate of the chain (or a root of the bundle). Anything else is
//! refused and the previous certificate stays in use.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::SpiffeId;
use crate::pki::bundle::parse_pem_certs;
use crate::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::proto::istio::v1::auth::IstioCertificateRequest;
use crate::proto::meshid::ca::v1::trust_service_client::TrustServiceClient;
use crate::proto::meshid::ca::v1::{TrustUpdate, WatchTrustRequest};
use crate::token::{BearerToken, TokenError};

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaClientError {
    /// A setting is unusable (address, root file).
    #[error("CA client configuration: {0}")]
    Config(String),
    /// The agent's token file could not be used.
    #[error("the agent token: {0}")]
    Token(#[from] TokenError),
    /// The CA answered with an error status.
    #[error("CA refused: {code:?}: {message}")]
    Refused {
        /// gRPC code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA's answer does not check out.
    #[error("CA answer rejected: {0}")]
    BadAnswer(String),
}

/// Something that turns a CSR into a certificate chain (the CA, over the wire).
pub trait CertSigner: Send + Sync + 'static {
    /// Asks for a certificate for `identity`; returns the CA's `cert_chain`.
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        identity: &'a SpiffeId,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, CaClientError>> + Send + 'a>>;
}

/// Where the CA is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `https://host:port`.
    pub address: String,
    /// PEM roots that the CA's serving certificate must chain to.
    pub root_pem: String,
    /// The caller's service-account token file.
    pub token_file: PathBuf,
    /// Whether requests name the identity asked for in `ImpersonatedIdentity`
    /// (a node agent asking for its workloads); otherwise the caller asks for
    /// its own identity.
    pub impersonate: bool,
}

/// The gRPC client of the CA. Connects lazily, so the agent starts (and keeps
/// retrying) while the CA is unreachable. Clones share one channel (and see
/// [`CaClient::trust_roots`] of each other).
#[derive(Debug, Clone)]
pub struct CaClient {
    /// Rebuilt when the roots it trusts change; read (cloned) per request.
    channel: Arc<RwLock<Channel>>,
    target: Arc<Target>,
    token_file: PathBuf,
    impersonate: bool,
}

/// Where the channel goes and what it trusts from the start.
#[derive(Debug)]
struct Target {
    uri: tonic::transport::Uri,
    /// The name the CA's serving certificate must carry.
    host: String,
    /// `--ca-root`: always trusted, whatever the bundle says.
    root_pem: String,
    /// The bundle roots trusted besides `root_pem` (DER), to skip no-op rebuilds.
    extra: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl Target {
    /// A lazily connecting channel trusting `roots_pem`.
    fn channel(&self, roots_pem: &str) -> Result<Channel, CaClientError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .domain_name(self.host.clone());
        Ok(Endpoint::from(self.uri.clone())
            .tls_config(tls)
            .map_err(|e| CaClientError::Config(format!("TLS: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_lazy())
    }
}

impl CaClient {
    /// Builds the client; no connection is made yet.
    pub fn new(cfg: &CaClientConfig) -> Result<Self, CaClientError> {
        let uri: tonic::transport::Uri = cfg
            .address
            .parse()
            .map_err(|e| CaClientError::Config(format!("--ca-address {:?}: {e}", cfg.address)))?;
        let host = uri
            .host()
            .ok_or_else(|| {
                CaClientError::Config(format!("--ca-address {:?} has no host", cfg.address))
            })?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if parse_pem_certs(&cfg.root_pem)
            .map(|c| c.is_empty())
            .unwrap_or(true)
        {
            return Err(CaClientError::Config(
                "--ca-root holds no PEM certificate".to_owned(),
            ));
        }
        let target = Target {
            uri,
            host,
            root_pem: cfg.root_pem.clone(),
            extra: std::sync::Mutex::new(Vec::new()),
        };
        let channel = target.channel(&cfg.root_pem)?;
        Ok(Self {
            channel: Arc::new(RwLock::new(channel)),
            target: Arc::new(target),
            token_file: cfg.token_file.clone(),
            impersonate: cfg.impersonate,
        })
    }

    /// The current channel (cheap: a handle).
    fn channel(&self) -> Channel {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Trusts `bundle_roots` (DER) besides the `--ca-root` roots for the
    /// connections made from now on: the channel is rebuilt (lazily
    /// connecting) when they differ from the last ones given. Streams and
    /// requests already under way keep their connection.
    pub fn trust_roots(
        &self,
        bundle_roots: &[CertificateDer<'static>],
    ) -> Result<(), CaClientError> {
        let mut extra = self.target.extra.lock().unwrap_or_else(|e| e.into_inner());
        if extra.as_slice() == bundle_roots {
            return Ok(());
        }
        let mut pem = self.target.root_pem.clone();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        for root in bundle_roots {
            pem.push_str(&crate::pki::bundle::cert_pem(root));
        }
        let channel = self.target.channel(&pem)?;
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
        *extra = bundle_roots.to_vec();
        tracing::info!(
            bundle_roots = bundle_roots.len(),
            "CA client now trusts --ca-root and the trust bundle's roots"
        );
        Ok(())
    }

    /// Opens the CA's `WatchTrust` stream: the whole trust state at once, then
    /// again on every change. No token: the trust state is public.
    pub async fn watch_trust(&self) -> Result<tonic::Streaming<TrustUpdate>, CaClientError> {
        let mut client = TrustServiceClient::new(self.channel());
        let response = client
            .watch_trust(WatchTrustRequest {})
            .await
            .map_err(|s| CaClientError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })?;
        Ok(response.into_inner())
    }

    async fn create(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, CaClientError> {
        // Re-read on every request: the kubelet rotates it in place.
        let token = BearerToken::read_file_async(&self.token_file).await?;
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_owned(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        token.authorize(&mut request);
        let mut client = IstioCertificateServiceClient::new(self.channel());
        let response =
            client
                .create_certificate(request)
                .await
                .map_err(|s| CaClientError::Refused {
                    code: s.code(),
                    message: s.message().to_owned(),
                })?;
        Ok(response.into_inner().cert_chain)
    }
}

impl CertSigner for CaClient {
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        identity: &'a SpiffeId,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, CaClientError>> + Send + 'a>> {
        Box::pin(self.create(csr_pem, identity, ttl))
    }
}

/// A CA answer that checked out.
#[derive(Debug, Clone)]
pub struct CheckedAnswer {
    /// Leaf first, then intermediates (no roots).
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The same, PEM.
    pub chain_pem: String,
    /// The roots (the answer's last element).
    pub roots_der: Vec<CertificateDer<'static>>,
    /// The roots, PEM.
    pub roots_pem: String,
    /// The leaf's validity.
    pub not_before: OffsetDateTime,
    /// The leaf's validity.
    pub not_after: OffsetDateTime,
    /// The leaf's serial, lowercase hex without leading zero bytes
    /// ([`crate::pki::crl::serial_hex`]).
    pub serial_hex: String,
}

/// Checks a `cert_chain` answer for `identity` and our public key (SPKI DER).
pub fn check_answer(
    chain: &[String],
    identity: &SpiffeId,
    our_spki: &[u8],
) -> Result<CheckedAnswer, CaClientError> {
    let bad = |m: String| CaClientError::BadAnswer(m);
    let [leaf_and_intermediates @ .., roots_pem] = chain else {
        return Err(bad("empty cert_chain".to_owned()));
    };
    if leaf_and_intermediates.is_empty() {
        return Err(bad(format!(
            "cert_chain has {} element(s), at least 2 are needed",
            chain.len()
        )));
    }
    let mut chain_der = Vec::new();
    for pem in leaf_and_intermediates {
        chain_der.extend(parse_pem_certs(pem).map_err(|e| bad(format!("chain element: {e}")))?);
    }
    let roots_der = parse_pem_certs(roots_pem).map_err(|e| bad(format!("root bundle: {e}")))?;
    if roots_der.is_empty() {
        return Err(bad("the root bundle is empty".to_owned()));
    }
    let leaf = parse(&chain_der[0]).map_err(|e| bad(format!("leaf: {e}")))?;
    let uris = crate::pki::validate::uri_sans(&leaf).unwrap_or_default();
    if uris != [identity.to_string().as_str()] {
        return Err(bad(format!("leaf names {uris:?}, not {identity}")));
    }
    if leaf.public_key().raw != our_spki {
        return Err(bad(format!(
            "leaf for {identity} does not carry the key we generated"
        )));
    }
    // The leaf must be signed by the next certificate, or by one of the roots.
    let issuers: Vec<&CertificateDer<'static>> = match chain_der.get(1) {
        Some(next) => vec![next],
        None => roots_der.iter().collect(),
    };
    let signed = issuers.iter().any(|issuer| {
        parse(issuer)
            .ok()
            .is_some_and(|i| leaf.verify_signature(Some(i.public_key())).is_ok())
    });
    if !signed {
        return Err(bad(
            "leaf signature does not verify with its issuer".to_owned()
        ));
    }
    let serial_hex = crate::pki::crl::serial_hex(leaf.raw_serial());
    Ok(CheckedAnswer {
        not_before: leaf.validity().not_before.to_datetime(),
        not_after: leaf.validity().not_after.to_datetime(),
        serial_hex,
        chain_pem: leaf_and_intermediates.concat(),
        chain_der,
        roots_pem: roots_pem.clone(),
        roots_der,
    })
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
