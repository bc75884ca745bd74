//! The rotation schedule with `--platform kube`: two CA replicas on short
//! authority lifetimes (`--authority-ttl 40s`: prepare at half the life
//! left, activate at a sixth left). Only the Lease holder runs the schedule;
//! the other replica follows it through Secret `istio-ca-secret`, and takes
//! the schedule over when the holder is terminated.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshid::test_helpers::kube_api::{FakeApi, LEASES};
use meshid::test_helpers::{CaProcess, TestEnv};

use super::{eventually, seed_cluster};
use crate::support::{bin, http_get};

const LEASE: &str = "meshid-ca-root-cert";

/// `meshid ca authority list -o json --data-dir DATA_DIR` (one replica's
/// admin socket), as (id, state).
async fn authorities(data_dir: &Path) -> Vec<(String, String)> {
    let mut cmd = Command::new(bin());
    cmd.args(["ca", "authority", "list", "-o", "json", "--data-dir"])
        .arg(data_dir);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "authority list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn id_in(list: &[(String, String)], state: &str) -> Option<String> {
    list.iter()
        .find(|(_, s)| s == state)
        .map(|(id, _)| id.clone())
}

/// Polls `attempt` every 300 ms until it yields a value; panics after
/// `timeout` naming `what`. Logs how long it took.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            eprintln!("{what}: after {:?}", started.elapsed());
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the replica of `data_dir` lists `id` as `state`.
async fn lists(what: &str, timeout: Duration, data_dir: &Path, id: &str, state: &str) {
    poll(what, timeout, || async {
        authorities(data_dir)
            .await
            .iter()
            .any(|(i, s)| i == id && s == state)
            .then_some(())
    })
    .await;
}

fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get(&LEASES, "meshid-system", LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// The schedule steps (`Prepare`, `Activate`) a replica logged having run.
fn steps_run(ca: &CaProcess, step: &str) -> usize {
    ca.log_text()
        .lines()
        .filter(|l| l.contains(&format!("step={step}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_runs_the_schedule_and_the_other_takes_over() {
    let test_started = Instant::now();
    let api = FakeApi::start();
    seed_cluster(&api);
    let env_a = TestEnv::new();
    let env_b = TestEnv::new();
    let (dir_a, dir_b) = (env_a.data_dir.as_path(), env_b.data_dir.as_path());
    let kubeconfig = api.kubeconfig(env_a.dir.path());
    let flags = [
        "--trusted-node-accounts",
        "meshid-system/meshid-agent",
        "--authority-ttl",
        "40s",
    ];
    let mut ca_a = CaProcess::spawn_kube(bin(), &env_a, &kubeconfig, "ca-0", &flags).unwrap();
    eventually("ca-0 holds the Lease", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("ca-0")
    })
    .await;
    let mut ca_b = CaProcess::spawn_kube(bin(), &env_b, &kubeconfig, "ca-1", &flags).unwrap();
    for ca in [&ca_a, &ca_b] {
        eventually("the replica ready", Duration::from_secs(30), || {
            http_get(ca.metrics_addr, "/readyz").0 == 200
        })
        .await;
    }
    let list = authorities(dir_a).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(authorities(dir_b).await, list);
    // The first root, made in Secret `istio-ca-secret`, lives
    // `--authority-ttl` too: the schedule rotates it.
    let first = id_in(&list, "active").unwrap();
    lists(
        "ca-1 lists the first authority active",
        Duration::from_secs(6),
        dir_b,
        &first,
        "active",
    )
    .await;

    // First rotation, both replicas up: ca-0 (the holder) prepares and
    // activates; ca-1 follows and runs no step itself.
    let second = poll(
        "ca-0 lists a prepared authority",
        Duration::from_secs(40),
        || async { id_in(&authorities(dir_a).await, "prepared") },
    )
    .await;
    lists(
        "ca-1 lists the same prepared authority",
        Duration::from_secs(6),
        dir_b,
        &second,
        "prepared",
    )
    .await;
    for dir in [dir_a, dir_b] {
        lists(
            "the prepared authority active",
            Duration::from_secs(25),
            dir,
            &second,
            "active",
        )
        .await;
    }
    let list = authorities(dir_b).await;
    assert!(list.contains(&(first.clone(), "old".into())), "{list:?}");
    assert_eq!(lease_holder(&api).as_deref(), Some("ca-0"));
    assert_eq!(steps_run(&ca_a, "Prepare"), 1, "{}", ca_a.log_text());
    assert_eq!(steps_run(&ca_a, "Activate"), 1, "{}", ca_a.log_text());
    assert_eq!(steps_run(&ca_b, "Prepare"), 0, "{}", ca_b.log_text());
    assert_eq!(steps_run(&ca_b, "Activate"), 0, "{}", ca_b.log_text());

    // Second rotation: ca-0 prepares, then is terminated; ca-1 takes the
    // Lease over and activates on schedule.
    let third = poll(
        "ca-0 lists the next prepared authority",
        Duration::from_secs(25),
        || async { id_in(&authorities(dir_a).await, "prepared") },
    )
    .await;
    lists(
        "ca-1 lists the next prepared authority",
        Duration::from_secs(6),
        dir_b,
        &third,
        "prepared",
    )
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("ca-0"));
    let status = tokio::task::spawn_blocking(move || {
        let status = ca_a.terminate().unwrap();
        (status, ca_a)
    })
    .await
    .unwrap();
    let (status, ca_a) = status;
    assert!(status.success(), "ca-0 exited with {status}");
    let started = Instant::now();
    eventually("ca-1 takes the Lease over", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("ca-1")
    })
    .await;
    eprintln!("ca-1 took the Lease over after {:?}", started.elapsed());
    lists(
        "ca-1 activates the next authority",
        Duration::from_secs(25),
        dir_b,
        &third,
        "active",
    )
    .await;
    assert!(
        authorities(dir_b)
            .await
            .contains(&(second.clone(), "old".into())),
        "the previous active authority is old"
    );
    assert_eq!(steps_run(&ca_a, "Activate"), 1, "{}", ca_a.log_text());
    assert_eq!(steps_run(&ca_b, "Prepare"), 0, "{}", ca_b.log_text());
    assert_eq!(steps_run(&ca_b, "Activate"), 1, "{}", ca_b.log_text());
    ca_b.terminate().unwrap();
    api.assert_all_served();
    eprintln!("whole test: {:?}", test_started.elapsed());
}
