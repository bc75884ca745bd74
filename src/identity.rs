//! SPIFFE identities: the only place that parses and formats `spiffe://` IDs.
//!
//! Enforces every rule of the SPIFFE ID specification (scheme `spiffe`; trust
//! domain of lowercase `[a-z0-9._-]`, at most 255 bytes, no port or userinfo;
//! path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment, no
//! trailing `/`; no query or fragment; at most 2048 bytes) and knows the
//! Kubernetes form `ns/<namespace>/sa/<service-account>`. Uses nothing else in
//! the crate.

use std::fmt;
use std::str::FromStr;

const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length of a trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain. Each variant names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The ID is the empty string.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The ID does not start with `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\" (scheme is case-sensitive)")]
    WrongScheme,
    /// No trust domain between `spiffe://` and the path.
    #[error("SPIFFE ID has an empty trust domain")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "trust domain contains {0:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// A `:` (port) in the trust domain.
    #[error("trust domain must not contain a port")]
    TrustDomainPort,
    /// An `@` (userinfo) in the trust domain.
    #[error("trust domain must not contain userinfo ('@')")]
    TrustDomainUserinfo,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes long, the maximum is 255")]
    TrustDomainTooLong(usize),
    /// A `?` (query) in the ID.
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    /// A `#` (fragment) in the ID.
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    /// Two slashes in a row, or a path of only `/`.
    #[error("SPIFFE ID path has an empty segment ('//' or a lone '/')")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    /// A character outside `[A-Za-z0-9._-]` in the path.
    #[error("SPIFFE ID path contains {0:?}: only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    /// The path ends with `/`.
    #[error("SPIFFE ID path must not end with '/'")]
    TrailingSlash,
    /// The ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long, the maximum is 2048")]
    TooLong(usize),
    /// The ID is valid but not of the form `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "SPIFFE ID path {0:?} is not of the Kubernetes form /ns/<namespace>/sa/<service-account>"
    )]
    NotKubernetes(String),
    /// A namespace or service-account name Kubernetes would refuse.
    #[error("{what} {value:?} is not a valid Kubernetes name (a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain: lower-case letters, digits, '-' and, for accounts, '.')")]
    BadKubernetesName {
        /// "namespace" or "service account".
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust-domain name (`cluster.local`) or the ID form
    /// (`spiffe://cluster.local`).
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        let name = name.strip_prefix(SCHEME_PREFIX).unwrap_or(name);
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>`, as used for bundle keys.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain>/<path>`. Always valid once constructed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starting with `/`.
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(id: &str) -> Result<Self, IdentityError> {
        if id.is_empty() {
            return Err(IdentityError::Empty);
        }
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong(id.len()));
        }
        let rest = id
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(IdentityError::WrongScheme)?;
        if rest.contains('?') {
            return Err(IdentityError::Query);
        }
        if rest.contains('#') {
            return Err(IdentityError::Fragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a list of path segments, each checked.
    pub fn from_segments(
        trust_domain: &TrustDomain,
        segments: &[&str],
    ) -> Result<Self, IdentityError> {
        let mut path = String::new();
        for segment in segments {
            path.push('/');
            path.push_str(segment);
        }
        validate_path(&path)?;
        let id = Self {
            trust_domain: trust_domain.clone(),
            path,
        };
        let len = id.to_string().len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong(len));
        }
        Ok(id)
    }

    /// The Kubernetes identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_kube_name("namespace", namespace)?;
        check_kube_name("service account", service_account)?;
        Self::from_segments(trust_domain, &["ns", namespace, "sa", service_account])
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        &self.trust_domain == td
    }

    /// The `(namespace, service account)` of a Kubernetes-form ID.
    pub fn kubernetes(&self) -> Result<KubernetesIdentity<'_>, IdentityError> {
        let mut parts = self.path.strip_prefix('/').unwrap_or("").split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
                Ok(KubernetesIdentity {
                    namespace,
                    service_account,
                })
            }
            _ => Err(IdentityError::NotKubernetes(self.path.clone())),
        }
    }
}

/// The Kubernetes parts of a `/ns/<namespace>/sa/<service-account>` ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubernetesIdentity<'a> {
    /// The namespace.
    pub namespace: &'a str,
    /// The service account.
    pub service_account: &'a str,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain.0, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    if td.is_empty() {
        return Err(IdentityError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TrustDomainTooLong(td.len()));
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(IdentityError::TrustDomainPort),
            '@' => return Err(IdentityError::TrustDomainUserinfo),
            other => return Err(IdentityError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), IdentityError> {
    if path.is_empty() {
        return Ok(());
    }
    if path == "/" {
        return Err(IdentityError::TrailingSlash);
    }
    if path.ends_with('/') {
        return Err(IdentityError::TrailingSlash);
    }
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(IdentityError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(IdentityError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(IdentityError::BadPathChar(c));
        }
    }
    Ok(())
}

/// Kubernetes names (RFC 1123 labels / subdomains) are a subset of valid
/// segments; we only insist on what makes the ID valid and unambiguous.
/// Kubernetes' own rules for the names in an identity: a namespace is a
/// DNS-1123 label (at most 63 of `a-z 0-9 -`, alphanumeric at both ends); a
/// service account is a DNS-1123 subdomain (at most 253, dot-separated
/// labels of that kind). Rule enforced: no identity is formed from a name
/// Kubernetes would refuse (`Default`, `a_b`), so one account never has two
/// spellings.
fn check_kube_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    fn label(l: &str) -> bool {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    }
    let ok = if what == "namespace" {
        label(value)
    } else {
        value.len() <= 253 && value.split('.').all(label)
    };
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadKubernetesName {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    #[test]
    fn names_kubernetes_would_refuse_form_no_identity() {
        for (ns, sa) in [
            ("Default", "web"),
            ("default", "Web"),
            ("a_b", "web"),
            ("default", "we_b"),
            ("-x", "web"),
            ("x-", "web"),
            ("default", "a..b"),
            ("default", ".web"),
            (&"n".repeat(64) as &str, "web"),
        ] {
            let err = SpiffeId::for_service_account(&td(), ns, sa).unwrap_err();
            assert!(
                matches!(err, IdentityError::BadKubernetesName { .. }),
                "{ns}/{sa}"
            );
        }
        for (ns, sa) in [("default", "web"), ("kube-system", "a.b-c"), ("x1", "9")] {
            assert!(
                SpiffeId::for_service_account(&td(), ns, sa).is_ok(),
                "{ns}/{sa}"
            );
        }
    }

    #[test]
    fn kubernetes_identity_round_trips() {
        let id = SpiffeId::for_service_account(&td(), "default", "frontend").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/frontend"
        );
        let parsed: SpiffeId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let k = parsed.kubernetes().unwrap();
        assert_eq!((k.namespace, k.service_account), ("default", "frontend"));
    }

    #[test]
    fn trust_domain_only_id_is_valid() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
        assert!(id.kubernetes().is_err());
    }

    #[test]
    fn each_broken_rule_is_named() {
        use IdentityError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Empty),
            ("http://cluster.local/ns/a/sa/b", E::WrongScheme),
            ("SPIFFE://cluster.local/ns/a", E::WrongScheme),
            ("spiffe:///ns/a/sa/b", E::MissingTrustDomain),
            ("spiffe://Cluster.local/x", E::BadTrustDomainChar('C')),
            ("spiffe://cluster.local:8080/x", E::TrustDomainPort),
            ("spiffe://user@cluster.local/x", E::TrustDomainUserinfo),
            ("spiffe://cluster.local/x?y=1", E::Query),
            ("spiffe://cluster.local/x#frag", E::Fragment),
            ("spiffe://cluster.local//x", E::EmptySegment),
            ("spiffe://cluster.local/", E::TrailingSlash),
            ("spiffe://cluster.local/x/", E::TrailingSlash),
            ("spiffe://cluster.local/x/./y", E::DotSegment),
            ("spiffe://cluster.local/x/../y", E::DotSegment),
            ("spiffe://cluster.local/x%20y", E::BadPathChar('%')),
            ("spiffe://cluster.local/ns/ä", E::BadPathChar('ä')),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn length_limits_are_enforced() {
        let long_td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{long_td}/x")),
            Err(IdentityError::TrustDomainTooLong(256))
        );
        assert!(SpiffeId::parse(&format!("spiffe://{}/x", "a".repeat(255))).is_ok());
        let long_path = "/a".repeat(1100);
        let id = format!("spiffe://cluster.local{long_path}");
        assert_eq!(SpiffeId::parse(&id), Err(IdentityError::TooLong(id.len())));
    }

    #[test]
    fn kubernetes_form_is_required_where_asked() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b/extra").unwrap();
        assert!(matches!(
            id.kubernetes(),
            Err(IdentityError::NotKubernetes(_))
        ));
        assert!(SpiffeId::for_service_account(&td(), "", "b").is_err());
        assert!(SpiffeId::for_service_account(&td(), "a", "b/c").is_err());
        assert!(SpiffeId::for_service_account(&td(), "..", "b").is_err());
    }

    #[test]
    fn trust_domain_accepts_id_form() {
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(td().id_string(), "spiffe://cluster.local");
        assert!(TrustDomain::new("").is_err());
    }

    proptest! {
        #[test]
        fn valid_ids_round_trip(
            td in "[a-z0-9._-]{1,40}",
            segs in proptest::collection::vec("[A-Za-z0-9._-]{1,20}", 0..6),
        ) {
            prop_assume!(segs.iter().all(|s| s != "." && s != ".."));
            let mut id = format!("spiffe://{td}");
            for s in &segs { id.push('/'); id.push_str(s); }
            let parsed = SpiffeId::parse(&id).unwrap();
            prop_assert_eq!(parsed.to_string(), id);
            prop_assert_eq!(parsed.trust_domain().as_str(), td.as_str());
        }

        #[test]
        fn parse_never_panics_and_accepted_ids_reformat_identically(s in "\\PC{0,80}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn spiffe_prefixed_noise_never_panics(s in "spiffe://[ -~]{0,60}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
