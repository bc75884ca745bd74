//! The CA's jobs against the Kubernetes API server: its key material in
//! Secrets ([`secret`]), the authorities' rotation state in its Secret,
//! followed by every replica ([`authority_secret`]), leader election over a
//! Lease ([`lease`]) and the root-certificate ConfigMap in every namespace
//! ([`root_configmap`]), written by the leader only; [`root_distribution`]
//! starts the last two and hands the leadership on to the rotation schedule.
//! The audit log's checkpoint key is shared through a Secret too
//! ([`checkpoint_secret`]); [`replicas`] reads the CA's own replica count
//! for a start-up warning.
//!
//! Owns what one CA deployment writes to Kubernetes. Does not own facts about
//! pods, namespaces, tokens or policies (that is [`crate::platform::kube`],
//! read-only apart from `meshid mtls`'s policy writes) and does not sign
//! anything ([`crate::pki`]). Rule enforced by every job here: no home-made
//! consensus — each write is a create, or a replace carrying the
//! `resourceVersion` just read, so the API server arbitrates between replicas.

pub mod authority_secret;
pub mod checkpoint_secret;
pub mod lease;
pub mod replicas;
pub mod root_configmap;
pub mod root_distribution;
pub mod secret;
