//! What the injector adds to a pod: plain settings with the defaults a
//! cluster running deploy/ needs.

/// Settings of the injected containers and volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// The image holding `meshid-proxy` and `iptables` (deploy/Dockerfile's `proxy` target).
    pub proxy_image: String,
    /// `imagePullPolicy` of the injected containers (None: the cluster's default).
    pub image_pull_policy: Option<String>,
    /// The uid (and gid) the sidecar runs as; its traffic is never captured.
    pub proxy_uid: u32,
    /// The node agent's socket directory on the host (and in the pod).
    pub agent_socket_dir: String,
    /// The socket's file name in that directory.
    pub agent_socket_name: String,
    /// The sidecar's outbound capture port.
    pub outbound_capture_port: u16,
    /// The sidecar's inbound capture port.
    pub inbound_capture_port: u16,
    /// The sidecar's `/metrics`, `/healthz`, `/readyz` port (never captured).
    pub health_port: u16,
    /// The proxy's HBONE port (never captured inbound).
    pub hbone_port: u16,
    /// Audience of the sidecar's projected service-account token.
    pub token_audience: String,
    /// Lifetime of that token, seconds (the kubelet refreshes it).
    pub token_expiration_seconds: u32,
    /// The sidecar's CPU request.
    pub proxy_cpu_request: String,
    /// The sidecar's memory request.
    pub proxy_memory_request: String,
    /// The sidecar's memory limit.
    pub proxy_memory_limit: String,
    /// The namespace meshid itself runs in; its pods are never injected.
    pub system_namespace: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: "ghcr.io/meshid/meshid-proxy:latest".to_owned(),
            image_pull_policy: None,
            proxy_uid: 1337,
            agent_socket_dir: "/var/run/meshid".to_owned(),
            agent_socket_name: "agent.sock".to_owned(),
            outbound_capture_port: 15001,
            inbound_capture_port: 15006,
            health_port: 15020,
            hbone_port: 15008,
            token_audience: "istio-ca".to_owned(),
            token_expiration_seconds: 3600,
            proxy_cpu_request: "50m".to_owned(),
            proxy_memory_request: "32Mi".to_owned(),
            proxy_memory_limit: "256Mi".to_owned(),
            system_namespace: "meshid-system".to_owned(),
        }
    }
}

impl InjectConfig {
    /// The socket's path inside the pod.
    pub fn agent_socket_path(&self) -> String {
        format!(
            "{}/{}",
            self.agent_socket_dir.trim_end_matches('/'),
            self.agent_socket_name
        )
    }
}
