//! `meshid proxy init`: install, show or remove the capture rules of the
//! network namespace this process runs in, for IPv4 and (when the namespace
//! has it) IPv6.
//!
//! Rules enforced: nothing is changed without the privilege to change it
//! (checked first, naming the capability); another mesh's rules are never
//! mixed with ours unless forced; every change is one `*-restore`
//! transaction per family, verified by reading the rules back; a second run
//! changes nothing; cleanup removes exactly our chains and our two jumps.

use super::netfilter::{Backend, NetfilterError, Tools};
use super::rules::{cleanup_input, jumps, CaptureRules, Family, CHAINS};
use super::saved::Saved;
use crate::proc_self::{has_capability, CAP_NET_ADMIN, CAP_NET_RAW};

/// Chain prefixes of other meshes' capture rules: Istio's `istio-iptables`
/// (`ISTIO_*`) and Linkerd's `proxy-init` (`PROXY_INIT_*`).
pub const FOREIGN_PREFIXES: [&str; 2] = ["ISTIO_", "PROXY_INIT_"];

/// How `init` is run.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// What to capture.
    pub rules: CaptureRules,
    /// The backend; `None`: detect it.
    pub backend: Option<Backend>,
    /// Install even beside another mesh's rules.
    pub force: bool,
}

/// Why `init` changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The process may not change netfilter rules.
    #[error(
        "changing netfilter rules needs the {missing} capabilit{} (this process lacks {missing}): \
         run `meshid proxy init` as root, or in an init container granted NET_ADMIN and NET_RAW",
        if missing.contains(' ') { "ies" } else { "y" }
    )]
    NoPrivilege {
        /// The capabilities missing, e.g. `NET_ADMIN`.
        missing: String,
    },
    /// Another mesh's capture rules are in this namespace.
    #[error(
        "another mesh's traffic-capture rules are already in this network namespace ({}): \
         two meshes would capture the same traffic; remove them, or pass --force to install \
         meshid's beside them",
        chains.join(", ")
    )]
    ForeignMesh {
        /// The chains found, as `table/chain`.
        chains: Vec<String>,
    },
    /// The tools failed.
    #[error("{family} capture rules")]
    Netfilter {
        /// The family.
        family: Family,
        /// What failed.
        #[source]
        source: NetfilterError,
    },
    /// The rules read back are not the ones written.
    #[error("{tool}: the rules read back differ from those written (another program changing them at the same time?): {detail}")]
    NotApplied {
        /// The tools.
        tool: String,
        /// What differs.
        detail: String,
    },
}

/// What happened in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The rules were written (or removed).
    Changed,
    /// They were already as asked: nothing was written.
    Unchanged,
    /// The family was left alone; the reason says why.
    Skipped(String),
}

/// What `init` did, per family (by tool name), and what it warns about.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// (tools, what happened), IPv4 first.
    pub families: Vec<(String, Done)>,
    /// Things the operator must know (IPv6 not captured, forced installs).
    pub warnings: Vec<String>,
}

/// Checks the capabilities `iptables` needs (`CAP_NET_ADMIN` to change
/// rules, `CAP_NET_RAW` for the legacy backend's socket).
fn check_privilege() -> Result<(), InitError> {
    let missing: Vec<&str> = [(CAP_NET_ADMIN, "NET_ADMIN"), (CAP_NET_RAW, "NET_RAW")]
        .into_iter()
        .filter(|(cap, _)| has_capability(*cap) == Some(false))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(InitError::NoPrivilege {
            missing: missing.join(" and "),
        })
    }
}

/// Whether this network namespace has IPv6 (the kernel has it and it is not
/// disabled for the namespace).
pub fn namespace_has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .is_ok_and(|v| v.trim() == "0")
}

/// The families to handle: IPv4 always, IPv6 when the namespace has it.
fn families() -> Vec<Family> {
    if namespace_has_ipv6() {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// The tools of `family`; for IPv6 a missing tool is a warning, not an error.
fn tools_for(
    family: Family,
    opts: &InitOptions,
    report: &mut Report,
) -> Result<Option<Tools>, InitError> {
    match Tools::detect(family, opts.backend) {
        Ok(tools) => Ok(Some(tools)),
        Err(source @ NetfilterError::NotInstalled { .. }) if family == Family::V6 => {
            report.warnings.push(format!(
                "this network namespace has IPv6, but its traffic is NOT captured: {source}"
            ));
            report
                .families
                .push(("ip6tables".to_owned(), Done::Skipped(source.to_string())));
            Ok(None)
        }
        Err(source) => Err(InitError::Netfilter { family, source }),
    }
}

/// Installs the capture rules (or finds them already in place).
pub fn apply(opts: &InitOptions) -> Result<Report, InitError> {
    check_privilege()?;
    let mut report = Report::default();
    for family in families() {
        let Some(tools) = tools_for(family, opts, &mut report)? else {
            continue;
        };
        let fail = |source| InitError::Netfilter { family, source };
        let saved = Saved::parse(&tools.save().map_err(fail)?);
        let foreign = saved.chains_starting_with(&FOREIGN_PREFIXES);
        if !foreign.is_empty() {
            if !opts.force {
                return Err(InitError::ForeignMesh { chains: foreign });
            }
            report.warnings.push(format!(
                "--force: installed beside another mesh's rules ({})",
                foreign.join(", ")
            ));
        }
        let nat = saved.nat();
        let want = opts.rules.chain_rules(family);
        let missing: Vec<String> = jumps()
            .into_iter()
            .map(|(_, jump)| jump)
            .filter(|jump| !nat.rules.contains(jump))
            .collect();
        if missing.is_empty() && ours(&nat) == want {
            report.families.push((tools.name(), Done::Unchanged));
            continue;
        }
        let input = opts.rules.restore_input(family, &missing);
        if let Err(source) = tools.restore(&input) {
            if family == Family::V6 {
                report.warnings.push(format!(
                    "this network namespace has IPv6, but its traffic is NOT captured: {source}"
                ));
                report
                    .families
                    .push((tools.name(), Done::Skipped(source.to_string())));
                continue;
            }
            return Err(fail(source));
        }
        let after = Saved::parse(&tools.save().map_err(fail)?).nat();
        let jumps_in = jumps()
            .iter()
            .filter(|(_, jump)| after.rules.contains(jump))
            .count();
        if ours(&after) != want || jumps_in != 2 {
            return Err(InitError::NotApplied {
                tool: tools.name(),
                detail: format!("{jumps_in} of 2 jumps, our chains hold {:?}", ours(&after)),
            });
        }
        report.families.push((tools.name(), Done::Changed));
    }
    Ok(report)
}

/// The rules in our chains, in the order [`CaptureRules::chain_rules`] writes them.
fn ours(nat: &super::saved::SavedTable) -> Vec<String> {
    CHAINS
        .iter()
        .flat_map(|chain| nat.rules_of(chain).cloned().collect::<Vec<_>>())
        .collect()
}

/// Removes our chains and jumps, and nothing else.
pub fn cleanup(opts: &InitOptions) -> Result<Report, InitError> {
    check_privilege()?;
    let mut report = Report::default();
    for family in families() {
        let Some(tools) = tools_for(family, opts, &mut report)? else {
            continue;
        };
        let fail = |source| InitError::Netfilter { family, source };
        let nat = Saved::parse(&tools.save().map_err(fail)?).nat();
        let present_jumps: Vec<String> = jumps()
            .into_iter()
            .map(|(_, jump)| jump)
            .filter(|jump| nat.rules.contains(jump))
            .collect();
        let present_chains: Vec<String> = CHAINS
            .iter()
            .filter(|c| nat.has_chain(c))
            .map(|c| (*c).to_owned())
            .collect();
        if present_jumps.is_empty() && present_chains.is_empty() {
            report.families.push((tools.name(), Done::Unchanged));
            continue;
        }
        tools
            .restore(&cleanup_input(&present_jumps, &present_chains))
            .map_err(fail)?;
        report.families.push((tools.name(), Done::Changed));
    }
    Ok(report)
}

/// The rules `apply` would write into a namespace without them, per family,
/// as `*-restore` input with a heading comment. Needs no privilege.
pub fn dry_run(rules: &CaptureRules) -> String {
    let all_jumps: Vec<String> = jumps().into_iter().map(|(_, jump)| jump).collect();
    let mut text = String::new();
    for (family, tool) in [(Family::V4, "iptables"), (Family::V6, "ip6tables")] {
        text.push_str(&format!("# {tool}-restore --noflush\n"));
        text.push_str(&rules.restore_input(family, &all_jumps));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let one = InitError::NoPrivilege {
            missing: "NET_ADMIN".into(),
        };
        assert!(one.to_string().starts_with(
            "changing netfilter rules needs the NET_ADMIN capability (this process lacks NET_ADMIN)"
        ));
        let two = InitError::NoPrivilege {
            missing: "NET_ADMIN and NET_RAW".into(),
        };
        assert!(two
            .to_string()
            .contains("NET_ADMIN and NET_RAW capabilities"));
    }

    #[test]
    fn the_dry_run_shows_both_families_with_their_jumps() {
        let text = dry_run(&CaptureRules::default());
        assert!(text.starts_with("# iptables-restore --noflush\n*nat\n"));
        assert!(text.contains("# ip6tables-restore --noflush\n*nat\n"));
        assert_eq!(
            text.matches("-A PREROUTING -p tcp -j MESHID_INBOUND")
                .count(),
            2
        );
        assert!(text.contains("-d ::1/128 -j RETURN"));
    }

    #[test]
    fn another_meshs_chains_are_named_in_the_refusal() {
        let saved = Saved::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n:PROXY_INIT_REDIRECT - [0:0]\nCOMMIT\n",
        );
        let e = InitError::ForeignMesh {
            chains: saved.chains_starting_with(&FOREIGN_PREFIXES),
        };
        let text = e.to_string();
        assert!(
            text.contains("nat/ISTIO_OUTPUT, nat/PROXY_INIT_REDIRECT"),
            "{text}"
        );
        assert!(text.contains("--force"), "{text}");
    }
}
