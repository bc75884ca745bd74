//! When the CA prepares and activates its next authority, as SPIRE does:
//! prepare once the active authority has `min(life/2, 30 d)` left, activate
//! once it has `min(life/6, 7 d)` left (both can be set), drop an old
//! authority once it expired, and re-sign the CRLs before they go stale.
//! Pure: the same state and time always give the same step, so a restarted
//! CA resumes the schedule where it was.

use time::{Duration, OffsetDateTime};

use super::{AuthorityState, Snapshot};

/// Longest a prepared authority waits by default.
const MAX_PREPARE_BEFORE: Duration = Duration::days(30);
/// Longest an activated authority waits by default.
const MAX_ACTIVATE_BEFORE: Duration = Duration::days(7);

/// The schedule's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Prepare when the active authority has this much left (default: min(life/2, 30 d)).
    pub prepare_before: Option<Duration>,
    /// Activate when the active authority has this much left (default: min(life/6, 7 d)).
    pub activate_before: Option<Duration>,
    /// Whether the CA can make its next authority (a self-signed root); a
    /// plug-in CA's next authority comes from the operator.
    pub can_prepare: bool,
}

impl Policy {
    /// When to prepare, for an active authority living from `not_before` to `not_after`.
    pub fn prepare_at(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> OffsetDateTime {
        let life = not_after - not_before;
        not_after
            - self
                .prepare_before
                .unwrap_or((life / 2_i32).min(MAX_PREPARE_BEFORE))
    }

    /// When to activate, for an active authority living from `not_before` to `not_after`.
    pub fn activate_at(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> OffsetDateTime {
        let life = not_after - not_before;
        not_after
            - self
                .activate_before
                .unwrap_or((life / 6_i32).min(MAX_ACTIVATE_BEFORE))
    }
}

/// What the schedule wants done now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Old authorities past their expiry leave the state.
    DropExpired(Vec<String>),
    /// Make the next authority.
    Prepare,
    /// Switch signing to the prepared authority.
    Activate,
    /// The CRLs are past half their life.
    ResignCrls,
}

/// The step due at `now`, if any, and otherwise when to look again.
pub fn due(
    snapshot: &Snapshot,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Step, OffsetDateTime> {
    let expired: Vec<String> = snapshot
        .entries()
        .iter()
        .filter(|e| e.state == AuthorityState::Old && e.authority.signer_not_after() <= now)
        .map(|e| e.id.clone())
        .collect();
    if !expired.is_empty() {
        return Ok(Step::DropExpired(expired));
    }
    let active = snapshot.active();
    let (from, to) = (active.signer_not_before(), active.signer_not_after());
    let prepared = snapshot.prepared().is_some();
    let mut next = snapshot.crl_resign_at();
    if prepared {
        let at = policy.activate_at(from, to);
        if at <= now {
            return Ok(Step::Activate);
        }
        next = next.min(at);
    } else if policy.can_prepare {
        let at = policy.prepare_at(from, to);
        if at <= now {
            return Ok(Step::Prepare);
        }
        next = next.min(at);
    }
    for e in snapshot
        .entries()
        .iter()
        .filter(|e| e.state == AuthorityState::Old)
    {
        next = next.min(e.authority.signer_not_after());
    }
    if snapshot.crl_resign_at() <= now {
        return Ok(Step::ResignCrls);
    }
    Err(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn defaults_follow_spire_for_long_and_short_lives() {
        let p = Policy {
            prepare_before: None,
            activate_before: None,
            can_prepare: true,
        };
        let from = datetime!(2026-01-01 0:00 UTC);
        // Ten years: capped at 30 and 7 days.
        let to = from + Duration::days(3650);
        assert_eq!(p.prepare_at(from, to), to - Duration::days(30));
        assert_eq!(p.activate_at(from, to), to - Duration::days(7));
        // One minute: half and a sixth.
        let to = from + Duration::seconds(60);
        assert_eq!(p.prepare_at(from, to), to - Duration::seconds(30));
        assert_eq!(p.activate_at(from, to), to - Duration::seconds(10));
    }

    #[test]
    fn set_durations_override_the_defaults() {
        let p = Policy {
            prepare_before: Some(Duration::hours(5)),
            activate_before: Some(Duration::hours(1)),
            can_prepare: true,
        };
        let from = datetime!(2026-01-01 0:00 UTC);
        let to = from + Duration::days(3650);
        assert_eq!(p.prepare_at(from, to), to - Duration::hours(5));
        assert_eq!(p.activate_at(from, to), to - Duration::hours(1));
    }
}
