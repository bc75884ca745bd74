//! `meshid mtls set-mode` and `meshid mtls status`, as the real binary, on a
//! temporary manifest directory.

use std::path::Path;
use std::process::{Command, Output};

use meshid::test_helpers::TestEnv;

use crate::support::BIN;

fn mtls(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("mtls")
        .args(args)
        .arg("--manifests")
        .arg(&env.manifests)
        .env_remove("MESHID_ROOT_NAMESPACE")
        .output()
        .unwrap()
}

fn ok(env: &TestEnv, args: &[&str]) -> (String, String) {
    let out = mtls(env, args);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "mtls {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn fails(env: &TestEnv, args: &[&str]) -> String {
    let out = mtls(env, args);
    let (stdout, stderr) = texts(&out);
    assert!(!out.status.success(), "mtls {args:?} succeeded: {stdout}");
    stderr
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status table's row for `ns/pod`, split into columns (SOURCE may hold spaces).
fn row(table: &str, ns: &str, pod: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([ns, pod]))
        .unwrap_or_else(|| panic!("no row for {ns}/{pod} in:\n{table}"));
    let mut cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let source = cells.split_off(6).join(" ");
    cells.push(source);
    cells
}

fn write(dir: &Path, file: &str, yaml: &str) {
    std::fs::write(dir.join(file), yaml).unwrap();
}

fn labeled_pod(env: &TestEnv, ns: &str, name: &str, app: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: uid-{name}\n  \
         labels:\n    app: {app}\nspec:\n  nodeName: node-a\n  serviceAccountName: {app}\n"
    );
    write(&env.manifests, &format!("pod-{ns}-{name}.yaml"), &yaml);
}

fn namespace_policy(ns: &str, name: &str, mode: &str, created: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\n  creationTimestamp: \"{created}\"\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

#[test]
fn set_mode_then_status_shows_the_mode_and_its_source() {
    let env = TestEnv::new();
    env.add_pod("shop", "web-1", "uid-web-1", "web", "node-a");
    env.add_pod("bank", "teller-1", "uid-teller-1", "teller", "node-b");
    let (table, _) = ok(&env, &["status"]);
    assert_eq!(
        row(&table, "shop", "web-1")[4..],
        ["PERMISSIVE", "-", "default"]
    );

    let (said, _) = ok(&env, &["set-mode", "-n", "shop", "strict"]);
    assert!(said.contains("namespace shop: STRICT"), "{said}");
    let file = env.manifests.join("peerauthentication-shop.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    assert!(
        yaml.contains("name: default") && yaml.contains("creationTimestamp"),
        "{yaml}"
    );

    let (table, _) = ok(&env, &["status"]);
    assert_eq!(
        row(&table, "shop", "web-1"),
        [
            "shop",
            "web-1",
            "web",
            "node-a",
            "STRICT",
            "-",
            "namespace shop/default"
        ]
    );
    assert_eq!(row(&table, "bank", "teller-1")[4], "PERMISSIVE");

    // The root namespace's policy is mesh-wide.
    ok(&env, &["set-mode", "-n", "meshid-system", "DISABLE"]);
    let (table, _) = ok(&env, &["status", "-n", "bank"]);
    assert_eq!(
        row(&table, "bank", "teller-1")[4..],
        ["DISABLE", "-", "mesh meshid-system/default"]
    );
    assert!(!table.contains("web-1"), "-n filters:\n{table}");

    // Setting again replaces the policy in place, keeping its creation time.
    let created = yaml
        .lines()
        .find(|l| l.contains("creationTimestamp"))
        .unwrap()
        .to_owned();
    ok(&env, &["set-mode", "-n", "shop", "PERMISSIVE"]);
    let again = std::fs::read_to_string(&file).unwrap();
    assert!(
        again.contains(&created) && again.contains("mode: PERMISSIVE"),
        "{again}"
    );
}

#[test]
fn audit_is_accepted() {
    let env = TestEnv::new();
    env.add_pod("shop", "web-1", "uid-web-1", "web", "node-a");
    ok(&env, &["set-mode", "-n", "shop", "Audit"]);
    let (json, _) = ok(&env, &["status", "-o", "json"]);
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["pod"], "web-1");
    assert_eq!(row["mode"], "AUDIT");
    assert_eq!(row["source"], "namespace shop/default");
}

#[test]
fn an_invalid_mode_is_refused_with_the_accepted_values() {
    let env = TestEnv::new();
    for bad in ["STRICTEST", "unset"] {
        let err = fails(&env, &["set-mode", "-n", "shop", bad]);
        assert!(
            err.contains("STRICT, PERMISSIVE, DISABLE or AUDIT"),
            "{err}"
        );
    }
    let err = fails(&env, &["set-mode", "-n", "../etc", "STRICT"]);
    assert!(err.contains("namespace"), "{err}");
    assert_eq!(std::fs::read_dir(&env.manifests).unwrap().count(), 0);
}

#[test]
fn a_manifest_with_an_invalid_mode_or_field_fails_status_naming_file_and_field() {
    let env = TestEnv::new();
    env.add_pod("shop", "web-1", "uid-web-1", "web", "node-a");
    let yaml = namespace_policy("shop", "default", "STRICTEST", "2024-01-01T00:00:00Z");
    write(&env.manifests, "broken.yaml", &yaml);
    let err = fails(&env, &["status"]);
    assert!(err.contains("broken.yaml:9"), "{err}");
    assert!(
        err.contains("spec.mtls.mode") && err.contains("STRICTEST"),
        "{err}"
    );

    let yaml = namespace_policy("shop", "default", "STRICT", "2024-01-01T00:00:00Z")
        .replace("  mtls:", "  mtlss:");
    write(&env.manifests, "broken.yaml", &yaml);
    let err = fails(&env, &["status"]);
    assert!(
        err.contains("broken.yaml") && err.contains("mtlss"),
        "{err}"
    );

    // set-mode checks the whole directory and leaves nothing behind when it does not load.
    let err = fails(&env, &["set-mode", "-n", "bank", "STRICT"]);
    assert!(
        err.contains("do not load") && err.contains("broken.yaml"),
        "{err}"
    );
    assert!(!env.manifests.join("peerauthentication-bank.yaml").exists());
}

#[test]
fn set_mode_repairs_its_own_policy_when_it_holds_an_invalid_mode() {
    let env = TestEnv::new();
    ok(&env, &["set-mode", "-n", "shop", "STRICT"]);
    let file = env.manifests.join("peerauthentication-shop.yaml");
    let yaml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("STRICT", "STRICTEST");
    std::fs::write(&file, yaml).unwrap();
    fails(&env, &["status"]);
    ok(&env, &["set-mode", "-n", "shop", "disable"]);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("mode: DISABLE"));
    ok(&env, &["status"]);
}

#[test]
fn two_namespace_wide_policies_the_oldest_wins_and_a_warning_names_the_other() {
    let env = TestEnv::new();
    env.add_pod("shop", "web-1", "uid-web-1", "web", "node-a");
    let old = namespace_policy("shop", "zz-old", "STRICT", "2020-01-01T00:00:00Z");
    let new = namespace_policy("shop", "aa-new", "DISABLE", "2024-01-01T00:00:00Z");
    write(&env.manifests, "old.yaml", &old);
    write(&env.manifests, "new.yaml", &new);
    let (table, warnings) = ok(&env, &["status"]);
    assert_eq!(
        row(&table, "shop", "web-1")[4..],
        ["STRICT", "-", "namespace shop/zz-old"]
    );
    assert!(
        warnings.contains("warning:") && warnings.contains("shop/aa-new"),
        "{warnings}"
    );

    // set-mode updates the policy in effect where it is: no third policy.
    let (_, warnings) = ok(&env, &["set-mode", "-n", "shop", "AUDIT"]);
    assert!(warnings.contains("shop/aa-new"), "{warnings}");
    assert!(!env.manifests.join("peerauthentication-shop.yaml").exists());
    let updated = std::fs::read_to_string(env.manifests.join("old.yaml")).unwrap();
    assert!(
        updated.contains("mode: AUDIT") && updated.contains("2020-01-01T00:00:00Z"),
        "{updated}"
    );
    let (table, _) = ok(&env, &["status"]);
    assert_eq!(row(&table, "shop", "web-1")[4], "AUDIT");
}

#[test]
fn set_mode_refuses_to_rewrite_a_file_holding_other_objects() {
    let env = TestEnv::new();
    let policy = namespace_policy("shop", "default", "STRICT", "2024-01-01T00:00:00Z");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  uid: u1\n";
    write(&env.manifests, "shop.yaml", &format!("{policy}---\n{pod}"));
    let err = fails(&env, &["set-mode", "-n", "shop", "DISABLE"]);
    assert!(
        err.contains("shop.yaml") && err.contains("shop/default"),
        "{err}"
    );
    let kept = std::fs::read_to_string(env.manifests.join("shop.yaml")).unwrap();
    assert!(kept.contains("mode: STRICT"));
    assert!(!env.manifests.join("peerauthentication-shop.yaml").exists());
}

#[test]
fn a_workload_policy_overrides_the_namespace_with_port_level_modes() {
    let env = TestEnv::new();
    labeled_pod(&env, "shop", "db-0", "db");
    labeled_pod(&env, "shop", "web-0", "web");
    ok(&env, &["set-mode", "-n", "shop", "PERMISSIVE"]);
    let workload = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  \
                    name: strict-db\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      app: db\n  \
                    mtls:\n    mode: STRICT\n  portLevelMtls:\n    5432:\n      mode: DISABLE\n    9090:\n      mode: UNSET\n";
    write(&env.manifests, "strict-db.yaml", workload);
    let (table, _) = ok(&env, &["status", "-n", "shop"]);
    assert_eq!(
        row(&table, "shop", "db-0"),
        [
            "shop",
            "db-0",
            "db",
            "node-a",
            "STRICT",
            "5432=DISABLE,9090=STRICT",
            "workload shop/strict-db"
        ]
    );
    assert_eq!(
        row(&table, "shop", "web-0")[4..],
        ["PERMISSIVE", "-", "namespace shop/default"]
    );
    let (json, _) = ok(&env, &["status", "-n", "shop", "-o", "json"]);
    let db: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        db["ports"],
        serde_json::json!({"5432": "DISABLE", "9090": "STRICT"})
    );
    assert_eq!(db["ports_source"], "workload shop/strict-db");
}
