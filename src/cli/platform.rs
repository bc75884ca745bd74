//! `--platform local|kube` and `--token-verification`: which backend the CA,
//! the agent and `meshid mtls` take their facts from, and how the `kube`
//! backend is reached.
//!
//! Owns flag parsing only; the client and the token verifier are built by
//! [`crate::platform::kube::connect`].

use clap::{Args, ValueEnum};

use crate::platform::kube::TokenVerification;

/// Where facts (pods, namespaces, policies, token keys) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PlatformKind {
    /// A directory of Kubernetes-style YAML and the local token issuer.
    #[default]
    Local,
    /// The Kubernetes API server (in-cluster service account, or KUBECONFIG).
    Kube,
}

/// The platform flags of `meshid ca` and `meshid agent`.
#[derive(Debug, Clone, Default, Args)]
pub struct PlatformArgs {
    /// Where facts come from: `local` (a manifest directory) or `kube` (the Kubernetes API server).
    #[arg(long, env = "MESHID_PLATFORM", value_enum, default_value_t = PlatformKind::Local)]
    pub platform: PlatformKind,
    /// With `--platform kube`: verify service-account tokens by `tokenreview` (ask the API server) or `jwks` (the issuer's keys, locally; bound pods checked against the pod cache).
    #[arg(long, env = "MESHID_TOKEN_VERIFICATION", value_enum, default_value_t = TokenVerification::TokenReview)]
    pub token_verification: TokenVerification,
}
