//! The netfilter rules that send a pod's TCP traffic through its proxy,
//! written as `iptables-restore` input for the `nat` table (pure: settings in,
//! text out).
//!
//! Rules enforced (each has a test that tries to break it):
//! - everything lives in chains of our own (`MESHID_*`); the built-in chains
//!   get exactly one jump each (`PREROUTING` → [`INBOUND`], `OUTPUT` →
//!   [`OUTPUT`]), so removing ours touches nothing else;
//! - the proxy's own traffic (its uid) is never captured, or its outbound
//!   connections would loop back into it;
//! - loopback destinations are never captured (the pod talking to itself);
//! - traffic to the capture ports and the proxy's own ports is never
//!   redirected inbound (its health and metrics stay reachable, and a
//!   connection made straight to a capture port is refused by the proxy, not
//!   looped).

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::netlist::{CidrList, InboundPorts, PortList};

/// Our chain for inbound traffic (jumped to from `PREROUTING`).
pub const INBOUND: &str = "MESHID_INBOUND";
/// Our chain that redirects inbound traffic to the inbound capture port.
pub const IN_REDIRECT: &str = "MESHID_IN_REDIRECT";
/// Our chain for traffic the pod sends (jumped to from `OUTPUT`).
pub const OUTPUT: &str = "MESHID_OUTPUT";
/// Our chain that redirects outbound traffic to the outbound capture port.
pub const REDIRECT: &str = "MESHID_REDIRECT";
/// Every chain of ours, in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// The prefix every chain of ours starts with.
pub const CHAIN_PREFIX: &str = "MESHID_";

/// The two jumps from built-in chains into ours: (built-in chain, rule).
pub fn jumps() -> [(&'static str, String); 2] {
    [
        ("PREROUTING", format!("-A PREROUTING -p tcp -j {INBOUND}")),
        ("OUTPUT", format!("-A OUTPUT -p tcp -j {OUTPUT}")),
    ]
}

/// The IP family a rule set is for (`iptables` or `ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

impl Family {
    /// The loopback network of the family.
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::V4, IpNet::V4(_)) | (Self::V6, IpNet::V6(_))
        )
    }
}

/// What `meshid proxy init` captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// The uid the proxy runs as; its traffic is never captured.
    pub proxy_uid: u32,
    /// Where outbound connections are redirected.
    pub outbound_port: u16,
    /// Where inbound connections are redirected.
    pub inbound_port: u16,
    /// Which inbound ports are captured.
    pub include_inbound_ports: InboundPorts,
    /// Inbound ports never captured.
    pub exclude_inbound_ports: PortList,
    /// The proxy's own ports (HBONE, metrics, health): never captured inbound.
    pub proxy_ports: PortList,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: PortList,
    /// Outbound destination networks never captured.
    pub exclude_outbound_cidrs: CidrList,
}

impl Default for CaptureRules {
    fn default() -> Self {
        Self {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: PortList::empty(),
            proxy_ports: PortList::of(&[15008, 15020]),
            exclude_outbound_ports: PortList::empty(),
            exclude_outbound_cidrs: CidrList::default(),
        }
    }
}

impl CaptureRules {
    /// Inbound ports that are never redirected: the capture ports, the
    /// proxy's own ports and the excluded ones.
    fn inbound_bypass(&self) -> PortList {
        let mut ports = PortList::of(&[self.inbound_port, self.outbound_port]);
        ports.extend(&self.proxy_ports);
        ports.extend(&self.exclude_inbound_ports);
        ports
    }

    /// The rules of our chains for `family`, one `-A` line each, in order
    /// (without the jumps from the built-in chains).
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut rules = Vec::new();
        let mut add = |chain: &str, rule: String| rules.push(format!("-A {chain} {rule}"));

        // Inbound: bypasses first, then either every port or the listed ones.
        for dport in self.inbound_bypass().dports() {
            add(INBOUND, format!("-p tcp -m tcp --dport {dport} -j RETURN"));
        }
        match &self.include_inbound_ports {
            InboundPorts::All => add(INBOUND, format!("-p tcp -j {IN_REDIRECT}")),
            InboundPorts::Only(ports) => {
                for dport in ports.dports() {
                    add(
                        INBOUND,
                        format!("-p tcp -m tcp --dport {dport} -j {IN_REDIRECT}"),
                    );
                }
            }
        }
        add(
            IN_REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );

        // Outbound: the proxy's own uid and loopback first, then exclusions.
        add(
            OUTPUT,
            format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        add(OUTPUT, format!("-d {} -j RETURN", family.loopback()));
        add(OUTPUT, "-o lo -j RETURN".to_owned());
        for dport in self.exclude_outbound_ports.dports() {
            add(OUTPUT, format!("-p tcp -m tcp --dport {dport} -j RETURN"));
        }
        for net in self
            .exclude_outbound_cidrs
            .0
            .iter()
            .filter(|n| family.holds(n))
        {
            add(OUTPUT, format!("-d {net} -j RETURN"));
        }
        add(OUTPUT, format!("-p tcp -j {REDIRECT}"));
        add(
            REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );
        rules
    }

    /// `iptables-restore --noflush` input that (re)writes our chains and
    /// adds the jumps in `missing_jumps` (those not already present), as one
    /// transaction: declaring a chain flushes it, so a second run leaves the
    /// same rules, not twice as many.
    pub fn restore_input(&self, family: Family, missing_jumps: &[String]) -> String {
        let mut text = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(text, ":{chain} - [0:0]");
        }
        for rule in self.chain_rules(family) {
            let _ = writeln!(text, "{rule}");
        }
        for jump in missing_jumps {
            let _ = writeln!(text, "{jump}");
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// `iptables-restore --noflush` input that removes what [`CaptureRules`]
/// added: the `present_jumps`, then our `present_chains` (flushed, then
/// deleted). Nothing else is named, so nothing else changes.
pub fn cleanup_input(present_jumps: &[String], present_chains: &[String]) -> String {
    let mut text = String::from("*nat\n");
    for jump in present_jumps {
        let _ = writeln!(text, "-D{}", jump.trim_start_matches("-A"));
    }
    for chain in present_chains {
        let _ = writeln!(text, "-F {chain}");
    }
    for chain in present_chains {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(r: &CaptureRules, family: Family) -> String {
        r.chain_rules(family).join("\n")
    }

    #[test]
    fn the_proxy_uid_and_loopback_are_never_captured_and_come_first() {
        let r = CaptureRules::default();
        let out = r.chain_rules(Family::V4);
        let outbound: Vec<&String> = out
            .iter()
            .filter(|l| l.starts_with(&format!("-A {OUTPUT} ")))
            .collect();
        assert_eq!(
            outbound[0],
            "-A MESHID_OUTPUT -m owner --uid-owner 1337 -j RETURN"
        );
        assert_eq!(outbound[1], "-A MESHID_OUTPUT -d 127.0.0.0/8 -j RETURN");
        assert_eq!(outbound[2], "-A MESHID_OUTPUT -o lo -j RETURN");
        assert_eq!(
            outbound.last().unwrap().as_str(),
            "-A MESHID_OUTPUT -p tcp -j MESHID_REDIRECT"
        );
        assert!(rules_of(&r, Family::V6).contains("-A MESHID_OUTPUT -d ::1/128 -j RETURN"));
    }

    #[test]
    fn capture_and_proxy_ports_are_never_redirected_inbound_even_when_listed() {
        let r = CaptureRules {
            include_inbound_ports: InboundPorts::Only("8080,15006,15020".parse().unwrap()),
            exclude_inbound_ports: "9090".parse().unwrap(),
            ..CaptureRules::default()
        };
        let rules = r.chain_rules(Family::V4);
        let position = |needle: &str| rules.iter().position(|l| l == needle).unwrap();
        // Every bypass comes before any redirect of the same port.
        for port in [15006, 15001, 15020, 9090] {
            let bypass = position(&format!(
                "-A MESHID_INBOUND -p tcp -m tcp --dport {port} -j RETURN"
            ));
            assert!(
                bypass
                    < position(
                        "-A MESHID_INBOUND -p tcp -m tcp --dport 8080 -j MESHID_IN_REDIRECT"
                    )
            );
        }
        assert!(!rules
            .iter()
            .any(|l| l == "-A MESHID_INBOUND -p tcp -j MESHID_IN_REDIRECT"));
    }

    #[test]
    fn exclusions_become_returns_per_family() {
        let r = CaptureRules {
            exclude_outbound_ports: "5432,6000-6010".parse().unwrap(),
            exclude_outbound_cidrs: "10.96.0.0/12,fd00::/8".parse().unwrap(),
            ..CaptureRules::default()
        };
        let v4 = rules_of(&r, Family::V4);
        assert!(v4.contains("-A MESHID_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN"));
        assert!(v4.contains("-A MESHID_OUTPUT -p tcp -m tcp --dport 6000:6010 -j RETURN"));
        assert!(v4.contains("-A MESHID_OUTPUT -d 10.96.0.0/12 -j RETURN"));
        assert!(!v4.contains("fd00::/8"));
        let v6 = rules_of(&r, Family::V6);
        assert!(v6.contains("-A MESHID_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!v6.contains("10.96.0.0/12"));
    }

    #[test]
    fn restore_input_declares_only_our_chains_and_the_missing_jumps() {
        let r = CaptureRules::default();
        let [(_, pre), (_, out)] = jumps();
        let text = r.restore_input(Family::V4, std::slice::from_ref(&out));
        assert!(text.starts_with("*nat\n:MESHID_INBOUND - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
        assert!(text.contains(&out) && !text.contains(&pre));
        // Only our chains are declared (declaring a built-in one would flush it).
        for line in text.lines().filter(|l| l.starts_with(':')) {
            assert!(line.starts_with(":MESHID_"), "{line}");
        }
        // Only our chains and the two jumps are appended to.
        for line in text.lines().filter(|l| l.starts_with("-A")) {
            assert!(
                line.starts_with("-A MESHID_") || line == pre || line == out,
                "{line}"
            );
        }
    }

    #[test]
    fn cleanup_deletes_the_jumps_then_our_chains_and_nothing_else() {
        let [(_, pre), _] = jumps();
        let text = cleanup_input(&[pre], &["MESHID_INBOUND".to_owned()]);
        assert_eq!(
            text,
            "*nat\n-D PREROUTING -p tcp -j MESHID_INBOUND\n-F MESHID_INBOUND\n-X MESHID_INBOUND\nCOMMIT\n"
        );
    }
}
