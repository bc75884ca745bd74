use std::collections::BTreeMap;

use super::*;

fn parse(yaml: &str) -> Result<PeerAuthentication, serde_yaml::Error> {
    serde_yaml::from_str(yaml)
}

fn err(yaml: &str) -> String {
    parse(yaml).expect_err("should be refused").to_string()
}

const ISTIO_WORKLOAD_POLICY: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
  creationTimestamp: "2024-05-01T10:00:00Z"
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
    9090:
      mode: UNSET
"#;

#[test]
fn istio_workload_policy_decodes_field_for_field() {
    let pa = parse(ISTIO_WORKLOAD_POLICY).unwrap();
    assert_eq!(pa.api_version, ApiVersion::V1Beta1);
    assert_eq!(pa.metadata.name, "finance");
    assert_eq!(pa.namespace_or("default"), "foo");
    assert_eq!(
        pa.metadata.creation_timestamp,
        Some(time::macros::datetime!(2024-05-01 10:00:00 UTC))
    );
    assert_eq!(pa.mode(), MtlsMode::Strict);
    assert_eq!(pa.spec.port_level_mtls[&8080].mode, MtlsMode::Disable);
    assert_eq!(pa.spec.port_level_mtls[&9090].mode, MtlsMode::Unset);
    assert!(!pa.is_namespace_wide());
    let labels = BTreeMap::from([
        ("app".to_owned(), "finance".to_owned()),
        ("v".to_owned(), "1".to_owned()),
    ]);
    assert!(pa.selects(&labels));
    assert!(!pa.selects(&BTreeMap::new()));
    pa.validate().unwrap();
}

#[test]
fn v1_api_version_and_every_mode_decode() {
    for mode in MtlsMode::ALL {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls:\n    mode: {mode}\n"
        );
        let pa = parse(&yaml).unwrap();
        assert_eq!(pa.api_version, ApiVersion::V1);
        assert_eq!(pa.mode(), mode);
        assert!(pa.is_namespace_wide());
        assert_eq!(pa.namespace_or("default"), "default");
    }
}

#[test]
fn empty_or_null_spec_is_namespace_wide_unset() {
    for spec in [
        "",
        "spec:\n",
        "spec: {}\n",
        "spec:\n  mtls: {}\n",
        "spec:\n  selector:\n",
    ] {
        let yaml = format!("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\n{spec}");
        let pa = parse(&yaml).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert_eq!(pa.mode(), MtlsMode::Unset, "{spec:?}");
        assert!(pa.is_namespace_wide(), "{spec:?}");
    }
}

#[test]
fn invalid_mode_is_refused_naming_the_field() {
    let e = err("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  mtls:\n    mode: STRCT\n");
    assert!(e.contains("spec.mtls.mode"), "{e}");
    assert!(e.contains("STRCT"), "{e}");
    // Modes are case-sensitive in YAML, as in Istio.
    let e = err("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  mtls:\n    mode: strict\n");
    assert!(e.contains("spec.mtls.mode"), "{e}");
}

#[test]
fn invalid_port_level_mode_is_refused_naming_the_field() {
    let e = err("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  selector:\n    matchLabels: {app: a}\n  portLevelMtls:\n    8080:\n      mode: OFF\n");
    assert!(e.contains("spec.portLevelMtls"), "{e}");
}

#[test]
fn unknown_fields_in_spec_parts_are_refused() {
    let base = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n";
    let cases = [
        ("  mtl:\n    mode: STRICT\n", "mtl"),
        ("  mtls:\n    mode: STRICT\n    strict: true\n", "strict"),
        ("  selector:\n    matchLabel:\n      app: a\n", "matchLabel"),
        ("  selector:\n    matchLabels: {app: a}\n  portLevelMtls:\n    80:\n      mod: STRICT\n", "mod"),
    ];
    for (spec, field) in cases {
        let e = err(&format!("{base}{spec}"));
        assert!(
            e.contains("unknown field") && e.contains(field),
            "{spec:?}: {e}"
        );
    }
}

#[test]
fn metadata_bookkeeping_fields_are_tolerated() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
  uid: 6b1e0c3a-0000-4000-8000-000000000000
  resourceVersion: "12345"
  generation: 2
  creationTimestamp: null
  labels: {team: a}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
  managedFields:
  - manager: kubectl
    operation: Apply
spec:
  mtls:
    mode: PERMISSIVE
status: {}
"#;
    let pa = parse(yaml).unwrap();
    assert_eq!(
        pa.metadata.uid.as_deref(),
        Some("6b1e0c3a-0000-4000-8000-000000000000")
    );
    assert_eq!(pa.metadata.resource_version.as_deref(), Some("12345"));
    assert_eq!(pa.metadata.creation_timestamp, None);
    assert_eq!(pa.metadata.labels["team"], "a");
    assert_eq!(pa.mode(), MtlsMode::Permissive);
}

#[test]
fn wrong_api_version_or_kind_is_refused() {
    let e = err("apiVersion: authentication.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata:\n  name: x\n");
    assert!(e.contains("apiVersion"), "{e}");
    let e = err(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n",
    );
    assert!(e.contains("kind"), "{e}");
}

#[test]
fn bad_creation_timestamp_is_refused() {
    let e = err("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\n  creationTimestamp: yesterday\n");
    assert!(e.contains("RFC 3339"), "{e}");
}

#[test]
fn api_server_json_with_string_port_keys_decodes() {
    let json = r#"{"apiVersion":"security.istio.io/v1beta1","kind":"PeerAuthentication",
        "metadata":{"name":"p","namespace":"foo","creationTimestamp":"2024-01-02T03:04:05Z","uid":"u"},
        "spec":{"selector":{"matchLabels":{"app":"a"}},"mtls":{"mode":"AUDIT"},"portLevelMtls":{"8080":{"mode":"STRICT"}}}}"#;
    let pa: PeerAuthentication = serde_json::from_str(json).unwrap();
    assert_eq!(pa.mode(), MtlsMode::Audit);
    assert_eq!(pa.spec.port_level_mtls[&8080].mode, MtlsMode::Strict);
}

#[test]
fn yaml_and_json_round_trip() {
    let pa = parse(ISTIO_WORKLOAD_POLICY).unwrap();
    let yaml = serde_yaml::to_string(&pa).unwrap();
    assert_eq!(parse(&yaml).unwrap(), pa);
    assert!(
        yaml.contains("creationTimestamp: 2024-05-01T10:00:00Z"),
        "{yaml}"
    );
    let json = serde_json::to_string(&pa).unwrap();
    assert_eq!(
        serde_json::from_str::<PeerAuthentication>(&json).unwrap(),
        pa
    );
}

#[test]
fn namespace_wide_constructor_writes_what_set_mode_needs() {
    let pa = PeerAuthentication::namespace_wide("shop", "default", MtlsMode::Strict);
    let yaml = serde_yaml::to_string(&pa).unwrap();
    assert_eq!(
        yaml,
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n"
    );
    assert_eq!(parse(&yaml).unwrap(), pa);
}

#[test]
fn validation_refuses_what_istio_refuses() {
    let mut pa = parse(ISTIO_WORKLOAD_POLICY).unwrap();
    pa.spec.port_level_mtls.insert(
        0,
        MutualTls {
            mode: MtlsMode::Strict,
        },
    );
    let e = pa.validate().unwrap_err().to_string();
    assert!(
        e.contains("foo/finance") && e.contains("spec.portLevelMtls") && e.contains("port 0"),
        "{e}"
    );

    let mut pa = parse(ISTIO_WORKLOAD_POLICY).unwrap();
    pa.spec.selector = None;
    let e = pa.validate().unwrap_err().to_string();
    assert!(e.contains("only a workload policy"), "{e}");

    let mut pa = PeerAuthentication::namespace_wide("a", "b", MtlsMode::Strict);
    pa.metadata.name.clear();
    assert!(pa.validate().is_err());
}

#[test]
fn mode_parses_case_insensitively_from_the_command_line() {
    assert_eq!("audit".parse::<MtlsMode>(), Ok(MtlsMode::Audit));
    assert_eq!("STRICT".parse::<MtlsMode>(), Ok(MtlsMode::Strict));
    assert!("strictest"
        .parse::<MtlsMode>()
        .unwrap_err()
        .contains("AUDIT"));
    for mode in MtlsMode::ALL {
        assert_eq!(mode.to_string().parse::<MtlsMode>(), Ok(mode));
    }
}
