//! meshid: a certificate authority and identity service for service meshes.
//!
//! The CA issues short-lived SPIFFE X.509-SVIDs keyed to Kubernetes service
//! accounts over Istio's CA API; every decision is audited before the answer
//! leaves. Module map (arrows point one way, see `DESIGN.md`):
//!
//! - [`identity`], [`time`]: SPIFFE IDs; the injectable clock and the one retry (`Backoff`) and renewal (`refresh_at`) rule; use nothing else.
//! - [`inject`]: sidecar injection: the pod mutation (pure), AdmissionReview answers, `inject -f`, the thin HTTPS server.
//! - [`injector`]: the running injector: serving certificate (files or meshid's CA), the webhook's caBundle, namespace labels; its composition root.
//! - [`netlist`]: port and CIDR lists (`proxy init`'s flags, the injector's annotations).
//! - [`token`]: `BearerToken`, the one type service-account tokens live in (redacted, zeroized, sensitive header).
//! - [`secret_file`]: 0600 write-then-rename for key material, owner-only directories.
//! - [`proc_self`]: this process's effective uid.
//! - [`h2_authority`]: serves the HTTP/2 `:authority` values real gRPC clients send (under every gRPC server).
//! - [`pki`]: keys, CSR validation, leaf templates, signing authority, trust bundles.
//! - [`audit`]: the audit record and its stores (SQLite, group commit).
//! - [`policy`]: PeerAuthentication types, their resolution and the per-pod mode report (pure).
//! - [`platform`]: facts in (tokens, pods, namespaces, policies), policy writes out: `local` manifests, `kube`.
//! - [`ca`]: the Istio-compatible CA server, its composition root (`ca::build`), and its own Kubernetes jobs (Secrets, Lease, root ConfigMaps).
//! - [`ca_client`]: the CA's client over Istio's API (the agent's for its workloads, the injector's for itself), and the check of every answer.
//! - [`agent`]: the node agent (attestation, certificate cache, SDS, Workload API) and its composition root (`agent::build`).
//! - [`proxy`]: the per-workload proxy's parts (sniffing, mode decisions, SPIFFE TLS).
//! - [`telemetry`], [`shutdown`]: logs, metrics endpoints, cancellation.
//! - [`cli`]: the `meshid` subcommands: flags into the plain setups the library builds from.
//! - [`proto`]: generated code only.

#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod ca;
pub mod ca_client;
pub mod cli;
pub mod h2_authority;
pub mod identity;
pub mod inject;
pub mod injector;
mod io_delegate;
pub mod netlist;
pub mod pki;
pub mod platform;
pub mod policy;
pub mod proc_self;
pub mod proto;
pub mod proxy;
pub mod secret_file;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod token;

#[cfg(any(test, feature = "testing"))]
pub mod test_helpers;
