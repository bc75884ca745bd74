//! Destination discovery at cluster scale: the node agent's index of every
//! pod's addresses ([`meshid::platform::kube::addresses`]) fed N pods as the
//! watch delivers them (a list, then events), and the agent's answer to a
//! proxy's question about one address.
//!
//! Reports the index's cost (RSS growth, bytes per pod, time to apply the
//! list) and the latency of an answer (p50/p99 over `--lookups` random
//! addresses, the agent's `resolve`, which is what a proxy's first question
//! costs at the agent besides the socket round trip). The API server is not
//! in the measure: pods are generated here as the watch would decode them.
//!
//! Then the whole first question as a proxy asks it: a real agent (and CA)
//! in this process on the local platform with `--socket-pods` pods, and
//! the proxy's [`Destinations`] client asking about each once over the
//! agent's Unix socket (p50/p99 of a first lookup, round trip included).
//!
//! `cargo bench --bench destinations -- --pods 100000 --lookups 100000 --socket-pods 1000`

// A benchmark measures the real clock.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use k8s_openapi::api::core::v1 as k8s;
use kube::runtime::watcher::Event;
use meshid::agent::destinations::resolve;
use meshid::identity::TrustDomain;
use meshid::platform::kube::addresses::AddressIndex;
use meshid::platform::{Platform, TLS_MODE_LABEL, TLS_MODE_MESHID};
use meshid::proxy::agent_link::AgentLink;
use meshid::proxy::destinations::Destinations;
use meshid::shutdown::Shutdown;
use meshid::test_helpers::{cli_arg, InProcessAgent, InProcessCa, TestEnv};

/// VmRSS of this process, in KiB.
fn rss_kib() -> u64 {
    meshid::test_helpers::rss_kib(std::process::id())
}

fn ip_of(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// A pod as a real cluster's are: namespace, generated name, labels,
/// service account, node, phase, addresses, timestamps.
fn pod(i: usize) -> k8s::Pod {
    let ns = format!("team-{}", i % 200);
    let mut labels = serde_json::json!({
        "app": format!("svc-{}", i % 2000),
        "pod-template-hash": "7d9f8c6b5",
    });
    if i % 2 == 0 {
        labels[TLS_MODE_LABEL] = serde_json::json!(TLS_MODE_MESHID);
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("svc-{}-7d9f8c6b5-{i:05x}", i % 2000),
            "namespace": ns,
            "uid": format!("6f1c2a9e-0000-4000-8000-{i:012x}"),
            "labels": labels,
            "creationTimestamp": "2026-11-01T10:00:00Z",
        },
        "spec": {"serviceAccountName": format!("svc-{}", i % 2000), "nodeName": format!("node-{}", i % 500), "containers": []},
        "status": {"phase": "Running", "podIP": ip_of(i).to_string(), "podIPs": [{"ip": ip_of(i).to_string()}]}
    }))
    .unwrap()
}

/// A platform that is only the address index (what the agent's destination
/// service reads on Kubernetes).
struct Addresses(AddressIndex);

impl Platform for Addresses {
    fn verify_token<'a>(
        &'a self,
        _token: &'a str,
        _audiences: &'a [String],
    ) -> meshid::platform::VerifyFuture<'a> {
        Box::pin(async { Err(meshid::platform::PlatformError::Unavailable("bench".into())) })
    }
    fn pod_by_uid(&self, _uid: &str) -> Option<meshid::platform::Pod> {
        None
    }
    fn pod(&self, _namespace: &str, _name: &str) -> Option<meshid::platform::Pod> {
        None
    }
    fn pods_on_node(&self, _node: &str) -> Vec<meshid::platform::Pod> {
        Vec::new()
    }
    fn pods_with_ip(&self, ip: IpAddr) -> Vec<meshid::platform::Pod> {
        self.0.pods_with_ip(ip)
    }
    fn pods_for_service_account(&self, _ns: &str, _sa: &str) -> Vec<meshid::platform::Pod> {
        Vec::new()
    }
    fn namespaces(&self) -> Vec<meshid::platform::Namespace> {
        Vec::new()
    }
    fn peer_authentications(&self) -> Vec<meshid::policy::PeerAuthentication> {
        Vec::new()
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changes()
    }
    fn is_ready(&self) -> bool {
        self.0.synced()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let pods: usize = cli_arg("--pods", 100_000);
    let lookups: usize = cli_arg("--lookups", 100_000);
    let index = AddressIndex::default();
    let before = rss_kib();
    let started = Instant::now();
    index.apply(Event::Init);
    for i in 0..pods {
        index.apply(Event::InitApply(pod(i)));
    }
    index.apply(Event::InitDone);
    let listed = started.elapsed();
    // Churn as a live cluster has it: a tenth of the pods updated once.
    for i in (0..pods).step_by(10) {
        index.apply(Event::Apply(pod(i)));
    }
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    println!(
        "index: {pods} pods applied in {:.2} s ({:.1} us/pod, generating the objects included); \
         RSS {before} KiB -> {after} KiB (+{grown} KiB, {} B/pod)",
        listed.as_secs_f64(),
        listed.as_secs_f64() * 1e6 / pods as f64,
        grown * 1024 / pods.max(1) as u64
    );

    let platform = Addresses(index);
    let td = TrustDomain::default();
    let mut times = Vec::with_capacity(lookups);
    let mut meshed = 0usize;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..lookups {
        // xorshift: addresses spread over the cluster, 1 in 20 not a pod.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let i = (state % (pods as u64 + pods as u64 / 20)) as usize;
        let ip = ip_of(i);
        let text = ip.to_string();
        let t = Instant::now();
        let answer = resolve(&platform, &td, &text, ip);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if answer.ownership == 2 {
            meshed += 1;
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "answers: {lookups} lookups, {meshed} meshed; p50 {:.2} us, p99 {:.2} us, max {:.1} us",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or(0.0)
    );

    socket_lookups(cli_arg("--socket-pods", 1000));
}

/// First lookups over the agent's socket, as a capture proxy makes them.
fn socket_lookups(pods: usize) {
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    env.add_pod("default", "asker", "uid-asker", "asker", "node-a");
    let mut yaml = String::new();
    for i in 0..pods {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: shop\n  uid: uid-p{i}\n  \
             labels:\n    security.meshid.io/tlsMode: meshid\nspec:\n  serviceAccountName: sa{}\n\
             status:\n  phase: Running\n  podIP: {}\n",
            i % 50,
            ip_of(i)
        ));
    }
    std::fs::write(env.manifests.join("pods.yaml"), yaml).unwrap();
    let ca = InProcessCa::with_flags(
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let agent_token = env.node_agent_token_file("node-a");
    let agent = InProcessAgent::with_flags(&env, ca.addr, "node-a", &agent_token, &[]).unwrap();
    let token = env.token_file(
        "asker.token",
        "default",
        "asker",
        Some(("asker", "uid-asker")),
        Some("node-a"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let times = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let link = AgentLink::new(&agent.socket, Some(token)).unwrap();
        let destinations = Destinations::start(link, &shutdown);
        // The stream opens on the first question; it is not what is measured.
        destinations.lookup(ip_of(pods + 1)).await.unwrap();
        let mut times = Vec::with_capacity(pods);
        for i in 0..pods {
            let t = Instant::now();
            destinations.lookup(ip_of(i)).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let t = Instant::now();
        for i in 0..pods {
            destinations.lookup(ip_of(i)).await.unwrap();
        }
        let cached = t.elapsed().as_secs_f64() * 1e6 / pods.max(1) as f64;
        shutdown.trigger();
        (times, cached)
    });
    let (mut first, cached) = times;
    first.sort_by(f64::total_cmp);
    println!(
        "over the agent socket: {pods} first lookups, p50 {:.0} us, p99 {:.0} us, max {:.0} us; \
         the same again from the proxy's cache: {cached:.2} us each",
        percentile(&first, 0.5),
        percentile(&first, 0.99),
        first.last().copied().unwrap_or(0.0)
    );
}
