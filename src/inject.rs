//! Sidecar injection: what a pod gains to join the mesh (a `meshid-proxy
//! init` init container, a native `meshid-proxy --capture` sidecar, the agent
//! socket, `SPIFFE_ENDPOINT_SOCKET`, a projected token, the `tlsMode` label),
//! decided and applied as pure functions (pod in, pod out), and the thin
//! admission server around them.
//!
//! - [`config`]: what is injected (image, uid, ports, resources);
//! - [`decide`]: whether a pod is injected, or why not;
//! - [`mutate`]: the mutation of a pod template (a Pod, or a workload's
//!   `spec.template`), on JSON so that fields this build does not know pass
//!   through untouched;
//! - [`review`]: `admission.k8s.io` AdmissionReview in, the answer (a
//!   JSONPatch, or a denial) out;
//! - [`patch`]: the JSONPatch from the pod before to the pod after;
//! - [`offline`]: `meshid inject -f`: the same mutation on YAML documents;
//! - [`server`]: the HTTPS endpoint (`/inject`), its readiness and metrics.

pub mod config;
pub mod decide;
pub mod mutate;
pub mod offline;
pub mod patch;
pub mod review;
pub mod server;

pub use config::InjectConfig;
pub use decide::{decide, Decision, NamespaceInjection};
pub use mutate::{inject_template, Denied, Outcome};

/// Namespace label that turns injection on (`enabled`) or off (`disabled`).
pub const NAMESPACE_LABEL: &str = "meshid.io/inject";
/// Pod annotation (or label) asking for injection (`"true"`) or refusing it (`"false"`).
pub const POD_INJECT: &str = "sidecar.meshid.io/inject";
/// Set on an injected pod: what was added (JSON), so a second pass knows.
pub const STATUS_ANNOTATION: &str = "sidecar.meshid.io/status";
/// Set on a pod that reached the injector and was left alone: why.
pub const SKIPPED_ANNOTATION: &str = "sidecar.meshid.io/skipped";
/// Istio's injection status; a pod carrying it already has Istio's proxy.
pub const ISTIO_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Pod annotation: inbound ports never captured (`proxy init --exclude-inbound-ports`).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.meshid.io/excludeInboundPorts";
/// Pod annotation: outbound ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.meshid.io/excludeOutboundPorts";
/// Pod annotation: outbound networks never captured.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.meshid.io/excludeOutboundIPRanges";
/// Pod annotation: inbound ports captured (`*` or a list).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.meshid.io/includeInboundPorts";
