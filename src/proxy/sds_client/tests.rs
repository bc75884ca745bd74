use prost::Message;
use prost_types::Any;

use super::*;
use crate::proto::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext;

fn response(secrets: Vec<Secret>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "v1".to_owned(),
        resources: secrets
            .into_iter()
            .map(|s| Any {
                type_url: SECRET_TYPE_URL.to_owned(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce: "n1".to_owned(),
        ..Default::default()
    }
}

fn rootca(pem: &str) -> Secret {
    Secret {
        name: ROOT_CA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
                }),
                crl: None,
            },
        )),
    }
}

#[test]
fn a_response_without_the_certificate_is_refused_naming_it() {
    let err = material_from_response(&response(vec![rootca("x")])).unwrap_err();
    assert!(
        matches!(err, SdsClientError::Missing { name: "default" }),
        "{err}"
    );
}

#[test]
fn a_default_resource_of_the_wrong_type_is_malformed() {
    let mut wrong = rootca("x");
    wrong.name = WORKLOAD_CERT.to_owned();
    let err = material_from_response(&response(vec![wrong])).unwrap_err();
    assert!(matches!(err, SdsClientError::Malformed { .. }), "{err}");
}

#[test]
fn a_nack_carries_the_last_accepted_version_and_the_reason() {
    let nack = sds_request("v0", "n1", Some("bad".to_owned()));
    assert_eq!(nack.version_info, "v0");
    assert_eq!(nack.response_nonce, "n1");
    assert_eq!(nack.error_detail.unwrap().message, "bad");
    assert_eq!(nack.resource_names, ["default", "ROOTCA"]);
    assert!(sds_request("v1", "n2", None).error_detail.is_none());
}

/// `default` and `ROOTCA` of a self-signed certificate, ROOTCA with `crl` PEM.
fn with_crl(crl: Option<&str>) -> DiscoveryResponse {
    use crate::proto::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let inline = |text: String| DataSource {
        specifier: Some(Specifier::InlineString(text)),
    };
    let mut root = rootca(&cert.pem());
    if let Some(secret::Type::ValidationContext(vc)) = root.r#type.as_mut() {
        vc.crl = crl.map(|text| inline(text.to_owned()));
    }
    let default = Secret {
        name: WORKLOAD_CERT.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert.pem())),
            private_key: Some(inline(key.serialize_pem())),
        })),
    };
    response(vec![default, root])
}

#[test]
fn crls_are_optional_and_read_from_rootca() {
    assert!(material_from_response(&with_crl(None))
        .unwrap()
        .crls
        .is_empty());
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(params, ca);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::now_utc(),
        next_update: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let der = crl.der().to_vec();
    let pem = crate::pki::crl::crls_to_pem(std::slice::from_ref(&der));
    let material = material_from_response(&with_crl(Some(&pem))).unwrap();
    assert_eq!(material.crls, vec![der]);
}

#[test]
fn crls_other_than_crl_pem_refuse_the_response() {
    let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = material_from_response(&with_crl(Some(bad))).unwrap_err();
    assert!(
        matches!(err, SdsClientError::Tls(ProxyTlsError::CrlPem(_))),
        "{err}"
    );
    assert!(err.to_string().contains("only \"X509 CRL\""), "{err}");
}
