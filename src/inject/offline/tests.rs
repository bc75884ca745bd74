use super::*;

const FILE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
  namespace: shop
spec:
  selector:
    matchLabels: {app: cart}
  template:
    metadata:
      labels: {app: cart}
    spec:
      containers:
        - name: cart
          image: cart:1
---
apiVersion: v1
kind: Service
metadata:
  name: cart
spec:
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: report:1}]
---
apiVersion: v1
kind: Pod
metadata:
  name: tool
  annotations: {sidecar.meshid.io/inject: "false"}
spec:
  containers: [{name: tool, image: tool:1}]
"#;

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn every_workload_kind_in_a_file_is_injected_and_the_rest_passed_through() {
    let (out, reports) = inject_yaml(FILE, &InjectConfig::default()).unwrap();
    let out = docs(&out);
    assert_eq!(out.len(), 4);
    let init_names = |template: &Value| -> Vec<String> {
        template["spec"]["initContainers"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        init_names(&out[0]["spec"]["template"]),
        ["meshid-init", "meshid-proxy"]
    );
    assert_eq!(
        out[1],
        docs(FILE)[1],
        "a Service is passed through unchanged"
    );
    assert_eq!(
        init_names(&out[2]["spec"]["jobTemplate"]["spec"]["template"]),
        ["meshid-init", "meshid-proxy"]
    );
    assert!(init_names(&out[3]).is_empty());
    assert_eq!(
        reports
            .iter()
            .map(|r| r.object.as_str())
            .collect::<Vec<_>>(),
        [
            "Deployment cart",
            "Service cart",
            "CronJob report",
            "Pod tool"
        ]
    );
    assert_eq!(reports[0].outcome, Some(Outcome::Injected));
    assert_eq!(reports[1].outcome, None);
    assert!(matches!(reports[3].outcome, Some(Outcome::Skipped(_))));
    // Its own output again: nothing changes.
    let (again, _) = inject_yaml(
        &serde_yaml::to_string(&out[0]).unwrap(),
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(docs(&again)[0], out[0]);
}

#[test]
fn a_bad_document_is_named_and_nothing_is_printed() {
    let err = inject_yaml(
        "kind: ConfigMap\n---\nkind: [unclosed\n",
        &InjectConfig::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OfflineError::BadDocument { index: 2, .. }),
        "{err}"
    );
    let err = inject_yaml("- a\n- b\n", &InjectConfig::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("document 1: not a Kubernetes object"),
        "{err}"
    );
    let denied = "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations: {traffic.meshid.io/excludeOutboundPorts: \"5432,x\"}\n    spec: {containers: [{name: web, image: w}]}\n";
    let err = inject_yaml(denied, &InjectConfig::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "document 1 (Deployment web): annotation traffic.meshid.io/excludeOutboundPorts"
        ),
        "{message}"
    );
    let no_template = "kind: Deployment\nmetadata: {name: web}\nspec: {}\n";
    let err = inject_yaml(no_template, &InjectConfig::default()).unwrap_err();
    assert!(err.to_string().contains("has no /spec/template"), "{err}");
}
