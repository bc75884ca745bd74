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
