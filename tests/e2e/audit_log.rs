//! The audit store's transparency log, end to end: certificates issued by
//! the CA, each record proved in a signed checkpoint by `meshid audit prove`
//! and the proof checked by a verifier written here in Python from RFC 9162
//! alone; `meshid audit verify` passing, then naming a record changed behind
//! the CA's back.

use std::process::Command;
use std::time::Duration;

use meshid::test_helpers::key_and_csr;
use meshid::test_helpers::request;

use crate::support::*;

/// RFC 9162 section 2.1.3.2 and the C2SP checkpoint body, in Python: reads
/// `meshid audit prove -o json` on stdin, prints "ok" or why not.
const RFC9162_VERIFIER: &str = r#"
import base64, hashlib, json, sys
p = json.load(sys.stdin)
leaf = base64.b64decode(p["leaf"])
proof = [base64.b64decode(h) for h in p["proof"]]
text = p["checkpoint"].split("\n\n")[0].split("\n")
size, root = int(text[1]), base64.b64decode(text[2])
assert size == p["tree_size"], "the checkpoint is not the proof's tree"
h = lambda b: hashlib.sha256(b).digest()
fn, sn, r = p["leaf_index"], size - 1, h(b"\x00" + leaf)
assert fn < size
for x in proof:
    assert sn != 0, "proof too long"
    if fn & 1 or fn == sn:
        r = h(b"\x01" + x + r)
        while not fn & 1 and fn != 0:
            fn >>= 1; sn >>= 1
    else:
        r = h(b"\x01" + r + x)
    fn >>= 1; sn >>= 1
assert sn == 0 and r == root, "the proof does not lead to the checkpoint's root"
record = json.loads(leaf)
print("ok", record["serial"])
"#;

/// Checks `meshid audit prove -o json` output with [`RFC9162_VERIFIER`]:
/// the proof leads to the checkpoint's root and its leaf names `serial`.
pub(crate) fn assert_rfc9162_proof(proof_json: &[u8], serial: &str) {
    use std::io::Write as _;
    let mut python = Command::new("python3")
        .args(["-c", RFC9162_VERIFIER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    python.stdin.take().unwrap().write_all(proof_json).unwrap();
    let checked = python.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout).trim(),
        format!("ok {serial}"),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// `n` certificates for the web pod, each with a fresh key.
async fn issue(
    env: &meshid::test_helpers::TestEnv,
    ca: &meshid::test_helpers::InProcessCa,
    n: usize,
) {
    let token = web_token(env);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    for _ in 0..n {
        let (_key, csr) = key_and_csr(&env.id("default", "web"));
        client
            .create_certificate(request(&csr, 600, Some(&token), None))
            .await
            .unwrap();
    }
}

fn meshid(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn every_certificate_is_proved_in_a_signed_checkpoint_and_an_edit_is_named() {
    let (env, ca) = ca_with_web_pod(&["--audit-checkpoint-every", "200ms"]);
    issue(&env, &ca, 5).await;
    let rows = audit_rows(&env);
    // Ours, and any the CA issued for itself (its serving certificate).
    let serials: Vec<String> = rows.iter().filter_map(|r| r.serial.clone()).collect();
    assert!(serials.len() >= 5, "{rows:?}");

    // The verifier key, as a witness or an auditor would get it.
    let key = meshid(&["audit", "checkpoint-key"], &env.data_dir);
    let key = String::from_utf8(key.stdout).unwrap();
    assert!(key.starts_with("cluster.local/meshid-audit+"), "{key}");

    let last = serials.last().unwrap().clone();
    poll_until(
        "the last record is in a checkpoint",
        Duration::from_secs(10),
        || {
            meshid(&["audit", "prove", "--serial", &last], &env.data_dir)
                .status
                .success()
        },
    );
    for serial in &serials {
        let proof = meshid(
            &["audit", "prove", "--serial", serial, "-o", "json"],
            &env.data_dir,
        );
        assert!(
            proof.status.success(),
            "{}",
            String::from_utf8_lossy(&proof.stderr)
        );
        assert_rfc9162_proof(&proof.stdout, serial);
    }

    // The same, read-only over HTTP on the CA's metrics port.
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", ca.metrics_addr))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let checkpoint = curl("/audit/checkpoint");
    assert!(
        checkpoint.starts_with("cluster.local/meshid-audit\n") && checkpoint.ends_with("200"),
        "{checkpoint}"
    );
    let proof = curl(&format!("/audit/proof/{}", serials[0].to_uppercase()));
    assert!(
        proof.contains("\"leaf_index\": 0") && proof.ends_with("200"),
        "{proof}"
    );
    let missing = curl("/audit/proof/00ff");
    assert!(
        missing.contains("no record of serial 00ff") && missing.ends_with("404"),
        "{missing}"
    );

    let verify = meshid(&["audit", "verify"], &env.data_dir);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains(&format!("{} records", rows.len())), "{said}");

    // Exported for a SIEM: every record, one JSON object per line.
    let export = meshid(
        &["audit", "export", "--since", "1h", "-o", "jsonl"],
        &env.data_dir,
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), rows.len());
    assert_eq!(lines[0]["serial"].as_str(), rows[0].serial.as_deref());
    let bad = meshid(&["audit", "export", "--since", "yesterday"], &env.data_dir);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));

    // An edit behind the CA's back: verify fails and names the record.
    let edited = &serials[2];
    let db = rusqlite::Connection::open(env.data_dir.join("audit.db")).unwrap();
    db.execute(
        "UPDATE audit_records SET not_after_unix_nanos = not_after_unix_nanos + 86400000000000 \
         WHERE serial = ?1",
        [edited],
    )
    .unwrap();
    drop(db);
    let verify = meshid(&["audit", "verify"], &env.data_dir);
    assert!(!verify.status.success());
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        said.contains(&format!("serial {edited}")) && said.contains("changed"),
        "{said}"
    );

    // A serial with no record is named.
    let unknown = meshid(&["audit", "prove", "--serial", "00ff"], &env.data_dir);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no record of serial 00ff"));
    drop(ca);
}

#[tokio::test]
async fn retention_removes_old_bodies_and_the_log_still_verifies() {
    let (env, ca) = ca_with_web_pod(&[
        "--audit-checkpoint-every",
        "200ms",
        "--audit-retention",
        "1s",
    ]);
    issue(&env, &ca, 3).await;
    let rows = audit_rows(&env);
    let serial = rows.iter().rev().find_map(|r| r.serial.clone()).unwrap();
    let everything = format!("{} records ({} of them pruned", rows.len(), rows.len());
    poll_until("every record is pruned", Duration::from_secs(10), || {
        let verify = meshid(&["audit", "verify"], &env.data_dir);
        verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains(&everything)
    });
    let gone = meshid(&["audit", "prove", "--serial", &serial], &env.data_dir);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("retention"));
    drop(ca);
}
