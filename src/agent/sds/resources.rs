//! The two SDS resources istio-agent serves, built from the cache's certificate
//! and trust bundle, and the content version that names them.
//!
//! Owns the resource names (`default`, `ROOTCA`), the Secret type URL and the
//! version rule: a version is a digest of exactly what the resources carry, so
//! it changes when, and only when, their content does. It does not decide when
//! to send (that is the stream state's job).

use prost::Message;
use prost_types::Any;
use ring::digest;
use zeroize::Zeroize;

use crate::agent::cache::{Svid, TrustBundle};
use crate::proto::envoy::config::core::v3::{data_source::Specifier, DataSource};
use crate::proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};

/// The Any type URL of every SDS resource (Envoy's `tls.v3.Secret`).
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Resource name of the workload's certificate chain and key (istio-agent's name).
pub const WORKLOAD_CERT_NAME: &str = "default";

/// Resource name of the trust anchors (istio-agent's name).
pub const ROOT_CA_NAME: &str = "ROOTCA";

/// A resource this server knows how to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SdsResource {
    /// `default`: `tls_certificate` with the chain (PEM) and the PKCS#8 key (PEM).
    WorkloadCert,
    /// `ROOTCA`: `validation_context.trusted_ca` with the roots (PEM), and
    /// `validation_context.crl` with the CRLs (PEM) when there are any.
    RootCa,
}

impl SdsResource {
    /// Every resource, in the order responses list them.
    pub const ALL: [SdsResource; 2] = [SdsResource::WorkloadCert, SdsResource::RootCa];

    /// The resource for a requested name; `None` for a name we do not serve.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            WORKLOAD_CERT_NAME => Some(Self::WorkloadCert),
            ROOT_CA_NAME => Some(Self::RootCa),
            _ => None,
        }
    }

    /// The resource name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkloadCert => WORKLOAD_CERT_NAME,
            Self::RootCa => ROOT_CA_NAME,
        }
    }
}

/// Splits requested names into the resources we serve (sorted, no duplicates)
/// and the names we do not. An empty request is a wildcard: every resource.
pub fn split_names(names: &[String]) -> (Vec<SdsResource>, Vec<String>) {
    if names.is_empty() {
        return (SdsResource::ALL.to_vec(), Vec::new());
    }
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for name in names {
        match SdsResource::from_name(name) {
            Some(resource) => known.push(resource),
            None => unknown.push(name.clone()),
        }
    }
    known.sort_unstable();
    known.dedup();
    unknown.sort_unstable();
    unknown.dedup();
    (known, unknown)
}

/// `Secret{name: "default", tls_certificate{certificate_chain, private_key}}`,
/// both inline PEM bytes. The caller must have attested as `svid.identity`.
pub fn workload_cert_secret(svid: &Svid) -> Secret {
    let key_pem = svid.key.secret_pkcs8_pem();
    Secret {
        name: WORKLOAD_CERT_NAME.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline_bytes(svid.chain_pem.as_bytes().to_vec())),
            private_key: Some(inline_bytes(key_pem.as_bytes().to_vec())),
        })),
    }
}

/// `Secret{name: "ROOTCA", validation_context{trusted_ca, crl}}`, inline PEM
/// bytes; `crl` (the authorities' CRLs, `X509 CRL` blocks) only when the
/// bundle has CRLs, so that a peer whose serial they list is refused.
pub fn root_ca_secret(bundle: &TrustBundle) -> Secret {
    Secret {
        name: ROOT_CA_NAME.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline_bytes(bundle.pem.as_bytes().to_vec())),
                crl: bundle.crl_pem().map(|pem| inline_bytes(pem.into_bytes())),
            },
        )),
    }
}

/// Packs a Secret into an `Any` of [`SECRET_TYPE_URL`], then wipes the copy of
/// any private key the Secret held (the encoded bytes are what leaves).
pub fn secret_any(mut secret: Secret) -> Any {
    let value = secret.encode_to_vec();
    if let Some(secret::Type::TlsCertificate(cert)) = secret.r#type.as_mut() {
        if let Some(DataSource {
            specifier: Some(Specifier::InlineBytes(key)),
        }) = cert.private_key.as_mut()
        {
            key.zeroize();
        }
    }
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value,
    }
}

/// The encoded resources, in `resources` order; `None` while one of them has
/// no content yet (no certificate, or no bundle).
pub fn build(
    resources: &[SdsResource],
    svid: Option<&Svid>,
    bundle: Option<&TrustBundle>,
) -> Option<Vec<Any>> {
    resources
        .iter()
        .map(|resource| match resource {
            SdsResource::WorkloadCert => svid.map(|s| secret_any(workload_cert_secret(s))),
            SdsResource::RootCa => bundle.map(|b| secret_any(root_ca_secret(b))),
        })
        .collect()
}

/// The content version of `resources`: a digest over each resource's name and
/// content (the chain for `default`, which changes with every new key; the
/// roots and the CRLs for `ROOTCA`). Equal content gives an equal version and
/// any change a new one. `None` while a resource has no content yet. Key
/// bytes are not hashed.
pub fn version(
    resources: &[SdsResource],
    svid: Option<&Svid>,
    bundle: Option<&TrustBundle>,
) -> Option<String> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for resource in resources {
        let mut parts: Vec<&[u8]> = Vec::new();
        match resource {
            SdsResource::WorkloadCert => parts.push(svid?.chain_pem.as_bytes()),
            SdsResource::RootCa => {
                let bundle = bundle?;
                parts.push(bundle.pem.as_bytes());
                // Each CRL length-prefixed too: a CRL change is a new version.
                parts.extend(bundle.crls_der.iter().map(Vec::as_slice));
            }
        }
        let name = resource.name().as_bytes();
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name);
        ctx.update(&(parts.len() as u64).to_be_bytes());
        for content in parts {
            ctx.update(&(content.len() as u64).to_be_bytes());
            ctx.update(content);
        }
    }
    let digest = ctx.finish();
    Some(
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn inline_bytes(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
    }
}
