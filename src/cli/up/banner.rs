//! The banner `meshid up` prints once the mesh runs: where everything lives
//! (data directory, manifests, agent socket, CA, proxies, metrics) and the
//! commands to try, with the real ports and paths.

use super::Mesh;

/// Where everything lives, and the things to try, with the real ports.
pub(crate) fn print_banner(mesh: &Mesh, default_dir: bool) {
    let (manifests_flag, data_flag) = if default_dir {
        (String::new(), String::new())
    } else {
        (
            format!(" --manifests {}", mesh.manifests.display()),
            format!(" --data-dir {}", mesh.data_dir.display()),
        )
    };
    let backend = mesh.inbound_of("backend").map_or(0, |a| a.port());
    let via = mesh.via_frontend().map_or(0, |a| a.port());
    println!("meshid up: the mesh is running on 127.0.0.1 (Ctrl-C to stop)\n");
    println!("  data dir       {}", mesh.data_dir.display());
    println!(
        "  manifests      {}  (real Kubernetes YAML: edit it, changes apply live)",
        mesh.manifests.display()
    );
    println!(
        "  agent socket   SPIFFE_ENDPOINT_SOCKET=unix://{}",
        mesh.socket.display()
    );
    println!(
        "  CA             https://{} (TLS; root in {}/root-cert.pem)",
        mesh.ca_addr,
        mesh.data_dir.display()
    );
    for p in &mesh.proxies {
        let inbound = p
            .running
            .inbound
            .first()
            .map_or_else(String::new, ToString::to_string);
        println!(
            "  {:<14} inbound {inbound} ({})",
            p.workload.name, p.running.identity
        );
    }
    if mesh.namespaces.is_some() {
        for (i, w) in super::demo::WORKLOADS.iter().enumerate() {
            println!(
                "  {:<14} network namespace {}, pod IP {}, app on :{} behind a capture proxy",
                w.name,
                super::netns::namespace_of(w),
                super::netns::pod_ip(i),
                super::netns::APP_PORT
            );
        }
        println!(
            "  frontend → backend by pod IP: http://{}:{}/ (called every second, captured, mTLS)",
            super::netns::pod_ip(1),
            super::netns::APP_PORT
        );
    } else {
        println!("  frontend → backend through the mesh: 127.0.0.1:{via} (called every second)");
    }
    for (name, addr) in &mesh.metrics {
        println!("  metrics        http://{addr}/metrics  ({name})");
    }
    println!(
        "  logs           warnings on stderr (everything: RUST_LOG=info meshid up 2>meshid-up.log)"
    );
    println!("\nThings to try (in another terminal, from this directory):");
    println!("  meshid mtls set-mode -n default STRICT{manifests_flag}");
    if mesh.namespaces.is_some() {
        let cart = super::netns::namespace_of(&super::demo::WORKLOADS[2]);
        let backend_ns = super::netns::namespace_of(&super::demo::WORKLOADS[1]);
        let backend_url = format!(
            "http://{}:{}/",
            super::netns::pod_ip(1),
            super::netns::APP_PORT
        );
        println!(
            "  sudo ip netns exec {cart} setpriv --reuid 65534 --regid 65534 --clear-groups curl {backend_url}   # as the app's uid: captured, mTLS as shop/cart"
        );
        println!(
            "  sudo ip netns exec {cart} curl {backend_url}   # as root, the proxies' uid: not captured, plaintext: refused once STRICT"
        );
        println!(
            "  sudo ip netns exec {backend_ns} curl -s http://127.0.0.1:15020/metrics | grep connections_total   # who the backend saw"
        );
        println!("  meshid mtls status{manifests_flag}");
        println!("  meshid audit list{data_flag}\n");
        return;
    }
    println!(
        "  curl http://127.0.0.1:{backend}/     # plaintext to the backend: refused once STRICT"
    );
    println!(
        "  curl http://127.0.0.1:{via}/     # through the frontend's proxy: mTLS, still works"
    );
    println!("  meshid mtls status{manifests_flag}");
    println!(
        "  meshid mtls status --agent-socket {}   # the same, as the node agent resolved it",
        mesh.socket.display()
    );
    println!("  meshid audit list{data_flag}");
    println!(
        "  SPIFFE_ENDPOINT_SOCKET=unix://{} python3 -c 'from spiffe import WorkloadApiClient; print(WorkloadApiClient().fetch_x509_context().default_svid.spiffe_id)'   # py-spiffe (pip install spiffe); you are the pod default/client",
        mesh.socket.display()
    );
    if let Some((_, addr)) = mesh.metrics.first() {
        println!("  curl http://{addr}/metrics");
    }
    println!("  openssl s_client -connect 127.0.0.1:{backend}   # STRICT asks for a client certificate\n");
}
