//! The audit record: one CA decision (issued or refused) or one operator's
//! revocation, with everything an auditor needs to answer "who got which identity,
//! when, on whose behalf, and why (not)", and "which certificate was revoked, by
//! whom, and why".
//!
//! Times serialize as RFC 3339. Records read back from a store carry UTC times.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AuditError;
use crate::identity::SpiffeId;

/// What the CA decided, or that an operator revoked a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A certificate was signed and (once this record is durable) returned.
    Issued,
    /// The request was refused; [`AuditRecord::reason`] says why.
    Refused,
    /// A certificate was revoked by an operator (`meshid ca revoke`):
    /// [`AuditRecord::serial`] names it, [`AuditRecord::reason`] says why and
    /// [`AuditRecord::caller`] who. The certificate's issuance has a record of
    /// its own (`issued`, same serial).
    Revoked,
}

impl Outcome {
    /// Every outcome, in the order they were introduced.
    pub const ALL: [Outcome; 3] = [Outcome::Issued, Outcome::Refused, Outcome::Revoked];

    /// The stable lowercase name: `"issued"`, `"refused"` or `"revoked"` (also the
    /// stored form, and the record's JSON, hence its log leaf).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Refused => "refused",
            Outcome::Revoked => "revoked",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "issued" => Ok(Outcome::Issued),
            "refused" => Ok(Outcome::Refused),
            "revoked" => Ok(Outcome::Revoked),
            other => Err(AuditError::UnknownOutcome {
                value: other.to_owned(),
            }),
        }
    }
}

/// One CA decision. Built by the CA with [`AuditRecord::new`], filled in as the
/// request goes through authentication, authorization and signing, and recorded
/// before the answer leaves.
///
/// Every field but `time` and `outcome` is optional because a refusal can happen
/// before the field is known (an unauthenticated caller has no identity; a refused
/// CSR has no serial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the CA decided (from its injected clock). Orders the audit log.
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    /// Who asked: the authenticated SPIFFE ID of the caller, or `"unauthenticated"`
    /// when authentication failed (the reason is in [`reason`](Self::reason)).
    pub caller: Option<String>,
    /// The identity the request asked for: the caller's own, or the one named in
    /// `ImpersonatedIdentity` by a node agent. Kept verbatim even when invalid, since
    /// a refused request is exactly what an auditor wants to see.
    pub requested_identity: Option<String>,
    /// The identity in the issued certificate's URI SAN. `None` when refused.
    pub granted_identity: Option<String>,
    /// Namespace of the granted identity (or of the requested one when refused), so
    /// records can be filtered by namespace without parsing SPIFFE IDs.
    pub namespace: Option<String>,
    /// Service account of the granted identity (or of the requested one when
    /// refused), for the same reason.
    pub service_account: Option<String>,
    /// The Kubernetes node the caller runs on (from its token), which bounds whose
    /// identities a node agent may obtain.
    pub node: Option<String>,
    /// The pod the certificate is for, by name: the caller's own pod, or, when a
    /// node agent impersonates, the requested service account's pod on the
    /// agent's node (none when several run there; [`reason`](Self::reason)
    /// then lists them).
    pub pod_name: Option<String>,
    /// The pod's UID: names are reused across pod restarts, UIDs are not.
    pub pod_uid: Option<String>,
    /// Serial number of the issued certificate, lowercase hex; lets an auditor find
    /// the record for a certificate seen on the wire.
    pub serial: Option<String>,
    /// SHA-256 of the certified public key (SubjectPublicKeyInfo DER), lowercase hex;
    /// shows key reuse across certificates.
    pub public_key_sha256: Option<String>,
    /// The issued certificate's notBefore (backdated by the clock-skew allowance).
    #[serde(default, with = "rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// The issued certificate's notAfter.
    #[serde(default, with = "rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// The TTL the client asked for (`validity_duration`), in seconds, as sent.
    pub requested_ttl_secs: Option<i64>,
    /// The TTL granted after defaulting and clamping, in seconds.
    pub granted_ttl_secs: Option<i64>,
    /// Issued, refused or revoked.
    pub outcome: Outcome,
    /// Why the request was refused (the full reason, including what the caller was
    /// only told opaquely), or a note on an issuance (for example a clamped TTL).
    pub reason: Option<String>,
    /// The caller's remote address, as the CA saw it.
    pub peer: Option<String>,
}

impl AuditRecord {
    /// The record's leaf in the transparency log: its JSON (as `meshid audit
    /// list -o json` prints it, fields in declaration order, times in UTC),
    /// so that anyone can recompute a leaf hash from a record shown to them.
    pub fn leaf_bytes(&self) -> Result<Vec<u8>, AuditError> {
        let utc = |t: OffsetDateTime| t.to_offset(time::UtcOffset::UTC);
        let mut canonical = self.clone();
        canonical.time = utc(canonical.time);
        canonical.not_before = canonical.not_before.map(utc);
        canonical.not_after = canonical.not_after.map(utc);
        serde_json::to_vec(&canonical).map_err(|e| AuditError::Encode {
            detail: e.to_string(),
        })
    }

    /// A record of `outcome` at `time` with every other field empty.
    pub fn new(time: OffsetDateTime, outcome: Outcome) -> Self {
        Self {
            time,
            caller: None,
            requested_identity: None,
            granted_identity: None,
            namespace: None,
            service_account: None,
            node: None,
            pod_name: None,
            pod_uid: None,
            serial: None,
            public_key_sha256: None,
            not_before: None,
            not_after: None,
            requested_ttl_secs: None,
            granted_ttl_secs: None,
            outcome,
            reason: None,
            peer: None,
        }
    }

    /// Sets [`requested_identity`](Self::requested_identity) and, unless a granted
    /// identity already set them, `namespace` and `service_account` from it.
    pub fn set_requested_identity(&mut self, id: &SpiffeId) {
        self.requested_identity = Some(id.to_string());
        if self.granted_identity.is_none() {
            self.set_kubernetes_parts(id);
        }
    }

    /// Sets [`granted_identity`](Self::granted_identity), and `namespace` and
    /// `service_account` from it (the granted identity wins over the requested one).
    pub fn set_granted_identity(&mut self, id: &SpiffeId) {
        self.granted_identity = Some(id.to_string());
        self.set_kubernetes_parts(id);
    }

    /// The identity this record is about: the granted one, else the requested one.
    pub fn identity(&self) -> Option<&str> {
        self.granted_identity
            .as_deref()
            .or(self.requested_identity.as_deref())
    }

    fn set_kubernetes_parts(&mut self, id: &SpiffeId) {
        if let Ok(kube) = id.kubernetes() {
            self.namespace = Some(kube.namespace.to_owned());
            self.service_account = Some(kube.service_account.to_owned());
        }
    }
}

/// RFC 3339 (de)serialization for `OffsetDateTime`, without needing the `time`
/// crate's `serde` feature.
mod rfc3339 {
    use serde::{de, ser, Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(de::Error::custom)
    }

    pub(super) mod option {
        use super::*;

        pub(in crate::audit::record) fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub(in crate::audit::record) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => OffsetDateTime::parse(&text, &Rfc3339)
                    .map(Some)
                    .map_err(de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// A record with every field set, for tests across the audit module.
#[cfg(test)]
pub(crate) fn full_record(
    time: OffsetDateTime,
    namespace: &str,
    service_account: &str,
    outcome: Outcome,
) -> AuditRecord {
    let id = format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}");
    AuditRecord {
        time,
        caller: Some("spiffe://cluster.local/ns/meshid-system/sa/agent".to_owned()),
        requested_identity: Some(id.clone()),
        granted_identity: (outcome != Outcome::Refused).then(|| id.clone()),
        namespace: Some(namespace.to_owned()),
        service_account: Some(service_account.to_owned()),
        node: Some("node-1".to_owned()),
        pod_name: Some(format!("{service_account}-7d9f")),
        pod_uid: Some("0b6c1b8e-6a43-4f5e-9d3c-2a1f0e9d8c7b".to_owned()),
        serial: Some("5f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned()),
        public_key_sha256: Some("ab".repeat(32)),
        not_before: Some(time - time::Duration::seconds(60)),
        not_after: Some(time + time::Duration::hours(24)),
        requested_ttl_secs: Some(86_400),
        granted_ttl_secs: Some(86_400),
        outcome,
        reason: match outcome {
            Outcome::Issued => None,
            Outcome::Refused => Some("token is for ns/a/sa/x".to_owned()),
            Outcome::Revoked => Some("revoked: keyCompromise".to_owned()),
        },
        peer: Some("10.0.0.7:51234".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustDomain;
    use time::macros::datetime;

    #[test]
    fn outcome_round_trips_through_its_name() {
        for outcome in Outcome::ALL {
            assert_eq!(outcome.to_string().parse::<Outcome>().ok(), Some(outcome));
        }
        assert_eq!("revoked".parse::<Outcome>().ok(), Some(Outcome::Revoked));
        let err = "granted".parse::<Outcome>().unwrap_err();
        assert!(err.to_string().contains("\"granted\""), "{err}");
    }

    #[test]
    fn json_round_trip_keeps_every_field_and_uses_rfc3339() {
        let rec = full_record(
            datetime!(2025-03-01 12:34:56.123456789 UTC),
            "shop",
            "cart",
            Outcome::Issued,
        );
        let json = serde_json::to_string(&rec).unwrap();
        assert!(
            json.contains("\"time\":\"2025-03-01T12:34:56.123456789Z\""),
            "{json}"
        );
        assert!(json.contains("\"outcome\":\"issued\""), "{json}");
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn a_revoked_record_is_a_leaf_like_any_other_naming_its_outcome() {
        let rec = full_record(
            datetime!(2025-03-01 12:00 UTC),
            "shop",
            "cart",
            Outcome::Revoked,
        );
        let leaf = rec.leaf_bytes().unwrap();
        let text = String::from_utf8(leaf.clone()).unwrap();
        assert!(text.contains("\"outcome\":\"revoked\""), "{text}");
        let back: AuditRecord = serde_json::from_slice(&leaf).unwrap();
        assert_eq!(back, rec);
        // The outcome is part of the leaf: the same record issued hashes otherwise.
        let issued = AuditRecord {
            outcome: Outcome::Issued,
            ..rec
        };
        assert_ne!(issued.leaf_bytes().unwrap(), leaf);
    }

    #[test]
    fn missing_optional_fields_deserialize_as_none() {
        let back: AuditRecord =
            serde_json::from_str(r#"{"time":"2025-03-01T00:00:00Z","outcome":"refused"}"#).unwrap();
        assert_eq!(
            back,
            AuditRecord::new(datetime!(2025-03-01 00:00 UTC), Outcome::Refused)
        );
    }

    #[test]
    fn granted_identity_sets_namespace_over_requested() {
        let td = TrustDomain::default();
        let asked = SpiffeId::for_service_account(&td, "a", "x").unwrap();
        let got = SpiffeId::for_service_account(&td, "b", "y").unwrap();
        let mut rec = AuditRecord::new(datetime!(2025-03-01 00:00 UTC), Outcome::Issued);
        rec.set_granted_identity(&got);
        rec.set_requested_identity(&asked);
        assert_eq!(rec.namespace.as_deref(), Some("b"));
        assert_eq!(rec.service_account.as_deref(), Some("y"));
        assert_eq!(rec.identity(), Some(got.to_string().as_str()));

        let mut refused = AuditRecord::new(datetime!(2025-03-01 00:00 UTC), Outcome::Refused);
        refused.set_requested_identity(&asked);
        assert_eq!(refused.namespace.as_deref(), Some("a"));
        assert_eq!(refused.identity(), Some(asked.to_string().as_str()));
    }
}
