//! The mTLS mode decision for an inbound connection: pure, no sockets.
//!
//! An inbound connection is decided twice. First when its first bytes are
//! known ([`ConnKind::Plaintext`] or [`ConnKind::TlsClientHello`]): refuse it,
//! pass its bytes through untouched, or terminate TLS (with the client
//! certificate required or optional). Then, if TLS was terminated, once the
//! handshake finished ([`ConnKind::TlsWithoutClientCert`] or
//! [`ConnKind::Mtls`]). [`decide`] answers both; [`on_mode_change`] answers
//! what happens to a live connection when its port's mode changes.
//!
//! Rules enforced (the modes of `PeerAuthentication`, plus AUDIT):
//!
//! | mode | plaintext | TLS |
//! |---|---|---|
//! | STRICT | refused | terminated, client certificate required: only verified mTLS passes |
//! | PERMISSIVE | passed through | terminated, client certificate optional (verified when sent) |
//! | AUDIT | as PERMISSIVE, flagged "STRICT would refuse" | as PERMISSIVE; without a client certificate, flagged |
//! | DISABLE | passed through | passed through untouched, never terminated |
//!
//! UNSET never reaches the proxy (resolution turns it into a mode); should it,
//! it is treated as PERMISSIVE, the mesh default.

use std::fmt;
use std::time::Duration;

use crate::identity::SpiffeId;
use crate::policy::MtlsMode;

use super::tls::ClientAuth;

/// Default for how long a live connection that a mode change no longer
/// allows (plaintext after a switch to STRICT) may go on before it is closed:
/// zero, as ztunnel does: the new mode applies to it at once.
pub const DEFAULT_MODE_CHANGE_DRAIN: Duration = Duration::ZERO;

/// What an inbound connection is, as far as the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnKind {
    /// The first bytes are not a TLS ClientHello (or none came in time).
    Plaintext,
    /// The first bytes are a TLS ClientHello; no handshake has run. Also
    /// what a TLS connection stays when it was passed through untouched.
    TlsClientHello,
    /// We terminated TLS and the client sent no certificate (possible only
    /// when the client certificate was optional).
    TlsWithoutClientCert,
    /// We terminated TLS and the client's certificate was verified: chained
    /// to our trust bundle, exactly one URI SAN, a SPIFFE ID in our trust domain.
    Mtls {
        /// The client's verified identity.
        peer: SpiffeId,
    },
}

impl ConnKind {
    /// A short, stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::TlsClientHello => "tls",
            Self::TlsWithoutClientCert => "tls_without_client_cert",
            Self::Mtls { .. } => "mtls",
        }
    }
}

/// What the proxy does with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Close the connection without forwarding anything.
    Refuse,
    /// Forward the bytes to the application exactly as they come (plaintext,
    /// or TLS not terminated in DISABLE).
    PassThrough,
    /// Run the TLS handshake with our server configuration, then call
    /// [`decide`] again with its outcome.
    TerminateTls {
        /// Whether the client must present a certificate.
        client_auth: ClientAuth,
    },
    /// TLS was terminated: forward the decrypted bytes.
    Forward,
}

/// Why: a stable label for logs and metrics, and a sentence for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// STRICT refuses plaintext.
    PlaintextInStrict,
    /// STRICT refuses a TLS client that sent no certificate.
    NoClientCertInStrict,
    /// STRICT refuses TLS that the proxy did not terminate (passed through
    /// under DISABLE): nobody verified the client's identity.
    UnverifiedTlsInStrict,
    /// PERMISSIVE or AUDIT accept plaintext.
    PlaintextAllowed,
    /// DISABLE passes everything through untouched.
    Disabled,
    /// A ClientHello: terminate TLS before deciding further.
    TlsToTerminate,
    /// PERMISSIVE or AUDIT accept TLS without a client certificate.
    TlsWithoutClientCertAllowed,
    /// The client's SPIFFE ID was verified.
    MtlsVerified,
}

impl Reason {
    /// A short, stable label (snake_case) for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlaintextInStrict => "plaintext_in_strict",
            Self::NoClientCertInStrict => "no_client_cert_in_strict",
            Self::UnverifiedTlsInStrict => "unverified_tls_in_strict",
            Self::PlaintextAllowed => "plaintext_allowed",
            Self::Disabled => "disabled",
            Self::TlsToTerminate => "tls_to_terminate",
            Self::TlsWithoutClientCertAllowed => "tls_without_client_cert_allowed",
            Self::MtlsVerified => "mtls_verified",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PlaintextInStrict => "plaintext refused: the port is in STRICT mTLS mode",
            Self::NoClientCertInStrict => {
                "TLS without a client certificate refused: the port is in STRICT mTLS mode"
            }
            Self::UnverifiedTlsInStrict => {
                "TLS passed through without verifying the client refused: the port is in STRICT mTLS mode"
            }
            Self::PlaintextAllowed => "plaintext allowed by PERMISSIVE/AUDIT mode",
            Self::Disabled => "mTLS is DISABLEd on this port: passed through untouched",
            Self::TlsToTerminate => "TLS ClientHello: terminating TLS",
            Self::TlsWithoutClientCertAllowed => {
                "TLS without a client certificate allowed by PERMISSIVE/AUDIT mode"
            }
            Self::MtlsVerified => "mTLS with a verified SPIFFE ID",
        })
    }
}

/// The decision for one connection at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Set in AUDIT mode when STRICT would have refused this connection:
    /// the proxy logs it (with the peer address) and counts it.
    pub would_refuse_in_strict: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the connection may go on (anything but [`Action::Refuse`]).
    pub fn allow(&self) -> bool {
        self.action != Action::Refuse
    }

    /// The client-certificate policy for the handshake, if TLS is to be terminated.
    pub fn terminate_tls(&self) -> Option<ClientAuth> {
        match self.action {
            Action::TerminateTls { client_auth } => Some(client_auth),
            _ => None,
        }
    }
}

/// The mode the proxy acts on: UNSET (which should never get here) is PERMISSIVE.
pub fn effective_mode(mode: MtlsMode) -> MtlsMode {
    match mode {
        MtlsMode::Unset => MtlsMode::Permissive,
        other => other,
    }
}

/// Decides what to do with a connection of `kind` on a port in `mode`; see
/// the module documentation for the table. STRICT lets nothing through but
/// [`ConnKind::Mtls`].
pub fn decide(mode: MtlsMode, kind: &ConnKind) -> Decision {
    let mode = effective_mode(mode);
    let audit = mode == MtlsMode::Audit;
    let decision = |action, reason, would_refuse_in_strict| Decision {
        action,
        would_refuse_in_strict,
        reason,
    };
    match (mode, kind) {
        (MtlsMode::Disable, ConnKind::Plaintext | ConnKind::TlsClientHello) => {
            decision(Action::PassThrough, Reason::Disabled, false)
        }
        // Reached only if the mode changed between the handshake and this
        // call: the handshake already ran, DISABLE forbids nothing.
        (MtlsMode::Disable, ConnKind::TlsWithoutClientCert) => {
            decision(Action::Forward, Reason::Disabled, false)
        }
        (MtlsMode::Strict, ConnKind::Plaintext) => {
            decision(Action::Refuse, Reason::PlaintextInStrict, false)
        }
        (MtlsMode::Strict, ConnKind::TlsWithoutClientCert) => {
            decision(Action::Refuse, Reason::NoClientCertInStrict, false)
        }
        (_, ConnKind::Plaintext) => decision(Action::PassThrough, Reason::PlaintextAllowed, audit),
        (_, ConnKind::TlsClientHello) => {
            let client_auth = if mode == MtlsMode::Strict {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            };
            decision(
                Action::TerminateTls { client_auth },
                Reason::TlsToTerminate,
                false,
            )
        }
        (_, ConnKind::TlsWithoutClientCert) => {
            decision(Action::Forward, Reason::TlsWithoutClientCertAllowed, audit)
        }
        (_, ConnKind::Mtls { .. }) => decision(Action::Forward, Reason::MtlsVerified, false),
    }
}

/// What happens to a live connection when its port's mode changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnModeChange {
    /// It goes on.
    Continue,
    /// It goes on, but the new mode is AUDIT and STRICT would refuse it: log
    /// and count it once now (it was not counted when it was accepted).
    ContinueAudited,
    /// The new mode no longer allows it: close it once the drain period
    /// (default [`DEFAULT_MODE_CHANGE_DRAIN`]) has passed.
    CloseAfterDrain {
        /// Why it may not go on.
        reason: Reason,
    },
}

/// Decides whether a live connection survives a mode change. `kind` is what
/// the connection was when it was accepted ([`ConnKind::TlsClientHello`] for
/// TLS passed through untouched under DISABLE); `accepted_under` the mode
/// then, `new_mode` the mode now.
///
/// Rule: only a connection the proxy verified as mTLS survives a switch to
/// STRICT; plaintext, TLS passed through, and TLS without a client
/// certificate are closed after the drain. Every other switch lets
/// established connections go on: PERMISSIVE, AUDIT and DISABLE allow
/// whatever was already allowed.
pub fn on_mode_change(
    kind: &ConnKind,
    accepted_under: MtlsMode,
    new_mode: MtlsMode,
) -> OnModeChange {
    let (before, after) = (effective_mode(accepted_under), effective_mode(new_mode));
    let verified = matches!(kind, ConnKind::Mtls { .. });
    match after {
        MtlsMode::Strict if verified => OnModeChange::Continue,
        MtlsMode::Strict => OnModeChange::CloseAfterDrain {
            reason: match kind {
                ConnKind::Plaintext => Reason::PlaintextInStrict,
                ConnKind::TlsClientHello => Reason::UnverifiedTlsInStrict,
                _ => Reason::NoClientCertInStrict,
            },
        },
        MtlsMode::Audit if !verified && before != MtlsMode::Audit => OnModeChange::ContinueAudited,
        _ => OnModeChange::Continue,
    }
}

#[cfg(test)]
mod tests;
