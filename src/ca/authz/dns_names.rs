//! Which identities may hold DNS SANs, and which ones (`--workload-dns-names`).
//!
//! Rule enforced: a workload certificate carries DNS names only when the
//! operator listed them for exactly that service account, such as the
//! injector's Service name, which the API server checks when it calls the
//! webhook. Everyone else gets a SPIFFE ID alone (see
//! [`validate_csr_with_dns`](crate::pki::csr::validate_csr_with_dns)).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::identity::SpiffeId;

/// `namespace/service-account` → the DNS names its certificates may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadDnsNames(BTreeMap<(String, String), Vec<String>>);

impl WorkloadDnsNames {
    /// The names `id` may hold; empty for almost everyone.
    pub fn for_identity(&self, id: &SpiffeId) -> &[String] {
        let Ok(k) = id.kubernetes() else {
            return &[];
        };
        self.0
            .get(&(k.namespace.to_owned(), k.service_account.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether no identity may hold DNS names.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for WorkloadDnsNames {
    type Err = String;

    /// Parses `ns/sa=name,name;ns/sa=name`; empty entries are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let shape = || {
                format!("{entry:?} is not of the form <namespace>/<service-account>=<dns-name>[,<dns-name>…]")
            };
            let (account, listed) = entry.split_once('=').ok_or_else(shape)?;
            let (ns, sa) = account.trim().split_once('/').ok_or_else(shape)?;
            if ns.is_empty() || sa.is_empty() || sa.contains('/') {
                return Err(shape());
            }
            let names = map.entry((ns.to_owned(), sa.to_owned())).or_default();
            for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                check_dns_name(name).map_err(|why| format!("{name:?} in {entry:?}: {why}"))?;
                let name = name.to_ascii_lowercase();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            if names.is_empty() {
                return Err(format!("{entry:?} names no DNS name"));
            }
        }
        Ok(Self(map))
    }
}

/// A host name as a certificate may carry it: no wildcard (a wildcard would
/// grant a whole namespace's Services), letters, digits, `-` and `.`.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    if name.contains('*') {
        return Err("wildcards are not granted");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("only letters, digits and inner hyphens are allowed");
        }
    }
    Ok(())
}

impl fmt::Display for WorkloadDnsNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|((ns, sa), names)| format!("{ns}/{sa}={}", names.join(",")))
            .collect();
        f.write_str(&entries.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn names_belong_to_exactly_the_listed_account() {
        let names: WorkloadDnsNames =
            "meshid-system/meshid-injector=Meshid-Injector.meshid-system.svc, meshid-injector.meshid-system.svc.cluster.local; other/sa=a.b"
                .parse()
                .unwrap();
        assert_eq!(
            names.for_identity(&id(
                "spiffe://cluster.local/ns/meshid-system/sa/meshid-injector"
            )),
            [
                "meshid-injector.meshid-system.svc",
                "meshid-injector.meshid-system.svc.cluster.local"
            ]
        );
        for other in [
            "spiffe://cluster.local/ns/meshid-system/sa/meshid-agent",
            "spiffe://cluster.local/ns/default/sa/meshid-injector",
            "spiffe://cluster.local/ns/other/sa/meshid-injector",
        ] {
            assert!(names.for_identity(&id(other)).is_empty(), "{other}");
        }
        assert_eq!(
            names.to_string(),
            "meshid-system/meshid-injector=meshid-injector.meshid-system.svc,meshid-injector.meshid-system.svc.cluster.local;other/sa=a.b"
        );
        assert!(WorkloadDnsNames::from_str("").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_named() {
        for (input, says) in [
            ("meshid-injector=a.svc", "<namespace>/<service-account>"),
            ("ns/sa", "<namespace>/<service-account>"),
            ("ns/sa/x=a.svc", "<namespace>/<service-account>"),
            ("ns/sa=", "names no DNS name"),
            ("ns/sa=*.ns.svc", "wildcards are not granted"),
            ("ns/sa=a..svc", "1 to 63"),
            ("ns/sa=a_b.svc", "letters, digits"),
            ("ns/sa=-a.svc", "letters, digits"),
        ] {
            let err = WorkloadDnsNames::from_str(input).unwrap_err();
            assert!(err.contains(says), "{input}: {err}");
        }
    }
}
