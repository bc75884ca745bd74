//! The running injector (`meshid injector`): the [`inject`](crate::inject)
//! server, its serving certificate, and its own Kubernetes jobs. Its
//! composition root, like `ca::build` and `agent::build`.
//!
//! - [`serving`]: the serving certificate: from files, or issued by meshid's
//!   CA for the injector's own identity with its Service's DNS name, and
//!   renewed at half its life;
//! - [`webhook`]: keeps the `caBundle` of the injector's own
//!   `MutatingWebhookConfiguration` equal to the trust bundle;
//! - [`namespaces`]: the `meshid.io/inject` labels, watched;
//! - [`mod@build`]: plain settings in, a running injector out.

pub mod build;
pub mod namespaces;
pub mod serving;
pub mod webhook;

pub use build::{build, BuildError, InjectorSetup, RunningInjector, ServingSource};
