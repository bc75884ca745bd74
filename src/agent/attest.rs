//! Workload attestation: who is on the other end of the agent's Unix socket.
//!
//! Owns the turn from a caller's kernel credentials (`SO_PEERCRED`) or its own
//! service-account token into a [`Workload`] — a pod of this node and its
//! SPIFFE ID — through the platform's facts. One mechanism, two fact sources:
//! the caller's pid → `/proc/<pid>/cgroup` → pod UID ([`pod_uid_from_cgroup`],
//! what the `kube` platform relies on), and its uid → the pod annotated
//! `meshid.io/unix-uid` (how local processes say which pod they are). It does
//! not serve the socket, fetch certificates or map errors to gRPC statuses,
//! and it does not choose between a caller's credentials: which one wins (a
//! token over peer credentials for SDS and the policy stream, peer
//! credentials only for the Workload API) is decided once, in
//! [`crate::agent::socket::caller`].
//!
//! Rules enforced here, each commented where it is enforced:
//! - attestation, not file permissions, decides what a caller gets: the
//!   socket is open to every local user, and only a pod of this node that
//!   attests gives an identity;
//! - a pod on another node never attests, and neither does a pod that is not
//!   running (`Succeeded`, `Failed`, `Unknown`);
//! - a uid annotation matching several running pods on the node is refused as
//!   ambiguous, never resolved by picking one; the annotation must be a `u32`
//!   written exactly (no sign, spaces or leading zeros);
//! - a missing or non-positive pid falls back to the uid alone;
//! - PID reuse: the pid's start time is read before and after the lookup; a
//!   process that vanished or changed is refused;
//! - a token attests only if it verifies, is bound to a pod (name and UID),
//!   and that pod still exists with the same UID and service account, runs,
//!   and is on this node.

mod cgroup;
mod error;
mod procfs;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use self::cgroup::pod_uid_from_cgroup;
pub(crate) use self::cgroup::pod_uids;
pub use self::error::AttestError;
pub use self::procfs::process_start_time;
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::{Platform, Pod, PodRefusal};
use crate::token::BearerToken;

/// The annotation naming the Unix uid a pod's processes run as (local platform).
pub const UNIX_UID_ANNOTATION: &str = "meshid.io/unix-uid";

/// What the kernel says about the process on the other end of the Unix
/// socket (`SO_PEERCRED`, taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's pid in the agent's pid namespace; `None` or `0` when the
    /// kernel cannot tell (e.g. the peer is in a pid namespace the agent does
    /// not see).
    pub pid: Option<i32>,
    /// The peer's effective uid.
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
}

impl PeerCredentials {
    /// From the result of tokio's `UnixStream::peer_cred` (the safe `SO_PEERCRED`).
    pub fn from_tokio(cred: tokio::net::unix::UCred) -> Self {
        Self {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        }
    }
}

/// An attested workload: its pod and identity.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` of the pod.
    pub identity: SpiffeId,
    /// The pod, as the platform knew it at attestation.
    pub pod: Pod,
}

/// Turns callers of the agent's socket into workloads of this node.
pub struct Attestor {
    platform: Arc<dyn Platform>,
    /// This agent's node: only its pods attest.
    node: String,
    trust_domain: TrustDomain,
    /// `/proc` of the agent's pid namespace, which must be the host's (so
    /// that the pids `SO_PEERCRED` reports are the ones found here).
    proc_root: PathBuf,
    /// The platform's change counter, to know when `by_uid` is stale.
    generation: tokio::sync::watch::Receiver<u64>,
    /// This node's pods by their `meshid.io/unix-uid` annotation, rebuilt
    /// when the platform changes (not on every call: a node may hold
    /// thousands of pods and every unattested caller would scan them all).
    by_uid: std::sync::Mutex<Option<(u64, Arc<UidIndex>)>>,
}

type UidIndex = std::collections::HashMap<u32, Vec<Pod>>;

impl fmt::Debug for Attestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestor")
            .field("node", &self.node)
            .field("trust_domain", &self.trust_domain)
            .field("proc_root", &self.proc_root)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    /// An attestor for the pods of `node`, reading `/proc`.
    pub fn new(platform: Arc<dyn Platform>, node: String, trust_domain: TrustDomain) -> Self {
        Self {
            generation: platform.changes(),
            platform,
            node,
            trust_domain,
            proc_root: PathBuf::from("/proc"),
            by_uid: std::sync::Mutex::new(None),
        }
    }

    /// Reads process facts under `proc_root` instead of `/proc` (tests point
    /// this at a fake tree of `<pid>/cgroup` and `<pid>/stat` files).
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.proc_root = proc_root;
        self
    }

    /// This agent's node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Peer credentials → workload: first the pid's cgroup → pod UID → Pod
    /// (which must be on this node and running); if the process is in no
    /// pod's cgroup, the uid → the single running pod on this node annotated
    /// `meshid.io/unix-uid: "<uid>"`.
    ///
    /// Reads a few small `/proc` files and the platform's in-memory cache;
    /// it does not block on the network. The start-time check proves that
    /// everything read belongs to one process that held the pid throughout;
    /// it cannot tell whether that process is the one that connected if the
    /// caller had already exited and its pid been reused before the first
    /// read, so the socket server should also drop a workload whose
    /// connection has closed.
    pub fn attest_peer(&self, creds: &PeerCredentials) -> Result<Workload, AttestError> {
        // Rule: the socket is open to every local user (like SPIRE's agent
        // socket); what a caller gets is decided here, from kernel facts and
        // the platform, never from who could open the socket file.
        // Rule: no pid (or 0, a peer outside our pid namespace) → uid only.
        let Some(pid) = creds.pid.filter(|&pid| pid > 0) else {
            return self.by_unix_uid(creds);
        };
        let before = process_start_time(&self.proc_root, pid)?;
        let cgroup = procfs::read_cgroup(&self.proc_root, pid)?;
        let outcome = match cgroup::pod_uids(&cgroup).as_slice() {
            [] => self.by_unix_uid(creds),
            // A process in a pod's cgroup is that pod or nothing: no uid
            // fallback, which could name another pod.
            [pod_uid] => self.by_pod_uid(pid, pod_uid),
            many => Err(AttestError::ConflictingCgroups {
                pid,
                pod_uids: many.to_vec(),
            }),
        };
        // Rule (PID reuse): what was read is the caller's only if the same
        // process still holds the pid; checked even after a refusal, so the
        // error names the real cause.
        let after = process_start_time(&self.proc_root, pid)?;
        if after != before {
            return Err(AttestError::PidReused { pid, before, after });
        }
        let workload = outcome?;
        tracing::debug!(
            pid,
            uid = creds.uid,
            pod = %pod_ref(&workload.pod),
            identity = %workload.identity,
            "attested peer"
        );
        Ok(workload)
    }

    /// The pods whose cgroups the process behind `creds` runs in (empty for a
    /// process outside Kubernetes), read under the same start-time check as
    /// [`Self::attest_peer`]: a pid reused during the read is an error, as
    /// is a peer whose pid the kernel did not give.
    pub fn peer_pod_uids(&self, creds: &PeerCredentials) -> Result<Vec<String>, AttestError> {
        let Some(pid) = creds.pid.filter(|&pid| pid > 0) else {
            return Err(AttestError::NoPid);
        };
        let before = process_start_time(&self.proc_root, pid)?;
        let cgroup = procfs::read_cgroup(&self.proc_root, pid)?;
        let after = process_start_time(&self.proc_root, pid)?;
        if after != before {
            return Err(AttestError::PidReused { pid, before, after });
        }
        Ok(cgroup::pod_uids(&cgroup))
    }

    /// For SDS callers that send their own service-account token
    /// (`authorization: Bearer`, the Istio 1.1 node-agent way): the token
    /// must verify (`platform.verify_token` with `audiences`), must be bound to
    /// a pod (pod name and uid claims), and that pod must exist with the same
    /// UID and service account, be running, and be on this node.
    pub async fn attest_token(
        &self,
        token: &BearerToken,
        audiences: &[String],
    ) -> Result<Workload, AttestError> {
        let claims = self
            .platform
            .verify_token(token.secret_str(), audiences)
            .await
            .map_err(AttestError::from_platform)?;
        // Rule: an unbound token says nothing about where its bearer runs.
        let (Some(pod_name), Some(pod_uid)) = (&claims.pod_name, &claims.pod_uid) else {
            return Err(AttestError::TokenNotBound {
                service_account: format!("{}/{}", claims.namespace, claims.service_account),
            });
        };
        let pod_name_ref = format!("{}/{pod_name}", claims.namespace);
        let Some(pod) = self.platform.pod(&claims.namespace, pod_name) else {
            return Err(AttestError::PodGone { pod: pod_name_ref });
        };
        // Rule: the live pod must be the one the token was issued for.
        let mismatch = |claim, token: &str, actual: &str| AttestError::TokenPodMismatch {
            pod: pod_name_ref.clone(),
            claim,
            token: token.to_owned(),
            actual: actual.to_owned(),
        };
        if &pod.uid != pod_uid {
            return Err(mismatch("uid", pod_uid, &pod.uid));
        }
        // Rule (shared with the CA): the pod may hold the token's identity.
        if let Err(PodRefusal::OtherAccount {
            runs_as, wanted, ..
        }) = pod.may_hold(&claims.namespace, &claims.service_account)
        {
            return Err(mismatch("service account", &wanted, &runs_as));
        }
        if let Some(token_node) = &claims.node_name {
            let pod_node = pod.node_name.as_deref().unwrap_or("(none)");
            if token_node != pod_node {
                return Err(mismatch("node", token_node, pod_node));
            }
        }
        let workload = self.admit(pod)?;
        tracing::debug!(
            pod = %pod_ref(&workload.pod),
            identity = %workload.identity,
            "attested token"
        );
        Ok(workload)
    }

    /// The pod whose cgroup the caller runs in.
    fn by_pod_uid(&self, pid: i32, pod_uid: &str) -> Result<Workload, AttestError> {
        let pod = self
            .platform
            .pod_by_uid(pod_uid)
            .ok_or_else(|| AttestError::UnknownPod {
                pid,
                pod_uid: pod_uid.to_owned(),
            })?;
        self.admit(pod)
    }

    /// The single running pod of this node annotated with the caller's uid.
    fn by_unix_uid(&self, creds: &PeerCredentials) -> Result<Workload, AttestError> {
        let index = self.uid_index();
        let (running, stopped): (Vec<Pod>, Vec<Pod>) = index
            .get(&creds.uid)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .cloned()
            .partition(Pod::is_running);
        let mut running = running.into_iter();
        match (running.next(), running.next()) {
            (Some(pod), None) => self.admit(pod),
            // Rule: several running pods claim the uid → refuse, never pick one.
            (Some(first), Some(second)) => Err(AttestError::AmbiguousUid {
                uid: creds.uid,
                pods: [first, second]
                    .iter()
                    .chain(running.as_slice())
                    .map(pod_ref)
                    .collect(),
            }),
            (None, _) => match stopped.first() {
                Some(pod) => self.admit(pod.clone()),
                None => Err(AttestError::NoPod {
                    pid: creds.pid,
                    uid: creds.uid,
                    node: self.node.clone(),
                }),
            },
        }
    }

    /// The uid index for the platform's current generation.
    fn uid_index(&self) -> Arc<UidIndex> {
        let generation = *self.generation.borrow();
        let mut cached = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_at, index)) = cached.as_ref() {
            if *built_at == generation {
                return Arc::clone(index);
            }
        }
        let mut index = UidIndex::new();
        for pod in self.platform.pods_on_node(&self.node) {
            if let Some(uid) = annotated_uid(&pod) {
                index.entry(uid).or_default().push(pod);
            }
        }
        let index = Arc::new(index);
        *cached = Some((generation, Arc::clone(&index)));
        index
    }

    /// The last word on any candidate pod, however it was found.
    fn admit(&self, pod: Pod) -> Result<Workload, AttestError> {
        // Rule: a pod on another node (or none) never attests here.
        if pod.node_name.as_deref() != Some(self.node.as_str()) {
            return Err(AttestError::NotOnNode {
                pod: pod_ref(&pod),
                node: pod.node_name,
                this_node: self.node.clone(),
            });
        }
        // Rule (shared with the CA, `Pod::may_hold`): a finished pod (or one
        // whose node stopped reporting) never attests.
        if let Err(PodRefusal::NotRunning { phase, .. }) =
            pod.may_hold(&pod.namespace, &pod.service_account)
        {
            return Err(AttestError::PodNotRunning {
                pod: pod_ref(&pod),
                phase,
            });
        }
        let identity =
            pod.identity(&self.trust_domain)
                .map_err(|source| AttestError::Identity {
                    pod: pod_ref(&pod),
                    source,
                })?;
        Ok(Workload { identity, pod })
    }
}

/// The pod's `meshid.io/unix-uid`, if present and an exact `u32`.
fn annotated_uid(pod: &Pod) -> Option<u32> {
    let value = pod.annotations.get(UNIX_UID_ANNOTATION)?;
    // Rule: exactly a u32 as it prints ("1000"; not "+1000", " 1000", "01000").
    let uid = value
        .parse::<u32>()
        .ok()
        .filter(|n| n.to_string() == *value);
    if uid.is_none() {
        tracing::warn!(
            pod = %pod_ref(pod),
            value = %value,
            "ignoring {UNIX_UID_ANNOTATION}: not a uid (a decimal u32)"
        );
    }
    uid
}

fn pod_ref(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

#[cfg(test)]
mod tests;
