use super::*;
use crate::identity::TrustDomain;

fn peer() -> SpiffeId {
    SpiffeId::for_service_account(&TrustDomain::default(), "shop", "frontend").unwrap()
}

fn kinds() -> [ConnKind; 4] {
    [
        ConnKind::Plaintext,
        ConnKind::TlsClientHello,
        ConnKind::TlsWithoutClientCert,
        ConnKind::Mtls { peer: peer() },
    ]
}

const REQUIRED: Action = Action::TerminateTls {
    client_auth: ClientAuth::Required,
};
const OPTIONAL: Action = Action::TerminateTls {
    client_auth: ClientAuth::Optional,
};

/// The whole table: every mode (UNSET included) × every kind.
fn expected(mode: MtlsMode, kind: &ConnKind) -> (Action, bool, Reason) {
    use Action::{Forward, PassThrough, Refuse};
    use ConnKind as K;
    use MtlsMode as M;
    match (mode, kind) {
        (M::Strict, K::Plaintext) => (Refuse, false, Reason::PlaintextInStrict),
        (M::Strict, K::TlsClientHello) => (REQUIRED, false, Reason::TlsToTerminate),
        (M::Strict, K::TlsWithoutClientCert) => (Refuse, false, Reason::NoClientCertInStrict),
        (M::Strict, K::Mtls { .. }) => (Forward, false, Reason::MtlsVerified),

        (M::Permissive | M::Unset, K::Plaintext) => (PassThrough, false, Reason::PlaintextAllowed),
        (M::Permissive | M::Unset, K::TlsClientHello) => (OPTIONAL, false, Reason::TlsToTerminate),
        (M::Permissive | M::Unset, K::TlsWithoutClientCert) => {
            (Forward, false, Reason::TlsWithoutClientCertAllowed)
        }
        (M::Permissive | M::Unset, K::Mtls { .. }) => (Forward, false, Reason::MtlsVerified),

        (M::Audit, K::Plaintext) => (PassThrough, true, Reason::PlaintextAllowed),
        (M::Audit, K::TlsClientHello) => (OPTIONAL, false, Reason::TlsToTerminate),
        (M::Audit, K::TlsWithoutClientCert) => (Forward, true, Reason::TlsWithoutClientCertAllowed),
        (M::Audit, K::Mtls { .. }) => (Forward, false, Reason::MtlsVerified),

        (M::Disable, K::Plaintext | K::TlsClientHello) => (PassThrough, false, Reason::Disabled),
        (M::Disable, K::TlsWithoutClientCert) => (Forward, false, Reason::Disabled),
        (M::Disable, K::Mtls { .. }) => (Forward, false, Reason::MtlsVerified),
    }
}

#[test]
fn every_mode_and_kind_is_decided_as_the_table_says() {
    for mode in MtlsMode::ALL {
        for kind in kinds() {
            let (action, would_refuse_in_strict, reason) = expected(mode, &kind);
            let decision = decide(mode, &kind);
            let want = Decision {
                action,
                would_refuse_in_strict,
                reason,
            };
            assert_eq!(decision, want, "{mode} × {}", kind.as_str());
            assert_eq!(decision.allow(), action != Action::Refuse);
        }
    }
}

#[test]
fn strict_mode_refuses_plaintext_and_certificate_less_tls() {
    let plain = decide(MtlsMode::Strict, &ConnKind::Plaintext);
    assert!(!plain.allow());
    assert!(plain.reason.to_string().contains("plaintext refused"));
    assert!(plain.reason.to_string().contains("STRICT"));
    assert!(!decide(MtlsMode::Strict, &ConnKind::TlsWithoutClientCert).allow());
    let hello = decide(MtlsMode::Strict, &ConnKind::TlsClientHello);
    assert_eq!(hello.terminate_tls(), Some(ClientAuth::Required));
}

#[test]
fn only_audit_flags_would_be_refusals() {
    for mode in MtlsMode::ALL {
        for kind in kinds() {
            let flagged = decide(mode, &kind).would_refuse_in_strict;
            let strict_refuses = !decide(MtlsMode::Strict, &kind).allow();
            assert_eq!(
                flagged,
                mode == MtlsMode::Audit && strict_refuses,
                "{mode} × {kind:?}"
            );
        }
    }
}

#[test]
fn disable_never_terminates_tls() {
    for kind in kinds() {
        assert_eq!(decide(MtlsMode::Disable, &kind).terminate_tls(), None);
        assert!(decide(MtlsMode::Disable, &kind).allow());
    }
}

#[test]
fn unset_is_treated_as_permissive() {
    for kind in kinds() {
        assert_eq!(
            decide(MtlsMode::Unset, &kind),
            decide(MtlsMode::Permissive, &kind)
        );
    }
}

#[test]
fn reason_labels_are_distinct_snake_case() {
    let reasons = [
        Reason::PlaintextInStrict,
        Reason::NoClientCertInStrict,
        Reason::UnverifiedTlsInStrict,
        Reason::PlaintextAllowed,
        Reason::Disabled,
        Reason::TlsToTerminate,
        Reason::TlsWithoutClientCertAllowed,
        Reason::MtlsVerified,
    ];
    let labels: std::collections::BTreeSet<_> = reasons.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), reasons.len());
    for label in labels {
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
    }
}

/// The mode-change table: every kind × mode before × mode after.
fn expected_change(kind: &ConnKind, before: MtlsMode, after: MtlsMode) -> OnModeChange {
    let before = if before == MtlsMode::Unset {
        MtlsMode::Permissive
    } else {
        before
    };
    match (kind, after) {
        (ConnKind::Mtls { .. }, _) => OnModeChange::Continue,
        (ConnKind::Plaintext, MtlsMode::Strict) => OnModeChange::CloseAfterDrain {
            reason: Reason::PlaintextInStrict,
        },
        (ConnKind::TlsClientHello, MtlsMode::Strict) => OnModeChange::CloseAfterDrain {
            reason: Reason::UnverifiedTlsInStrict,
        },
        (ConnKind::TlsWithoutClientCert, MtlsMode::Strict) => OnModeChange::CloseAfterDrain {
            reason: Reason::NoClientCertInStrict,
        },
        (_, MtlsMode::Audit) if before != MtlsMode::Audit => OnModeChange::ContinueAudited,
        _ => OnModeChange::Continue,
    }
}

#[test]
fn every_mode_change_is_decided_as_the_table_says() {
    for kind in kinds() {
        for before in MtlsMode::ALL {
            for after in MtlsMode::ALL {
                assert_eq!(
                    on_mode_change(&kind, before, after),
                    expected_change(&kind, before, after),
                    "{} accepted under {before}, now {after}",
                    kind.as_str()
                );
            }
        }
    }
}

#[test]
fn plaintext_accepted_under_permissive_is_closed_after_a_switch_to_strict() {
    for before in [MtlsMode::Permissive, MtlsMode::Audit, MtlsMode::Disable] {
        assert!(matches!(
            on_mode_change(&ConnKind::Plaintext, before, MtlsMode::Strict),
            OnModeChange::CloseAfterDrain { .. }
        ));
    }
}

#[test]
fn mtls_connections_survive_every_mode_change() {
    let kind = ConnKind::Mtls { peer: peer() };
    for before in MtlsMode::ALL {
        for after in MtlsMode::ALL {
            assert_eq!(on_mode_change(&kind, before, after), OnModeChange::Continue);
        }
    }
}

#[test]
fn default_drain_is_zero() {
    assert_eq!(DEFAULT_MODE_CHANGE_DRAIN, Duration::ZERO);
}
