//! The lists `meshid proxy init` takes and the injector writes from pod
//! annotations: ports (`'*'`, or `80,8080,9000-9010`) and CIDRs
//! (`10.0.0.0/8,fd00::/8`), each bad entry named. One grammar, one parser.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// A port list entry that is not a port or a range of ports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} in {list:?} is not a port (1-65535) or a range LOW-HIGH: {why}")]
pub struct BadPort {
    /// The whole list.
    pub list: String,
    /// The entry.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A CIDR list entry that is not an address or a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} in {list:?} is not an IP address or a CIDR such as 10.0.0.0/8 or fd00::/8")]
pub struct BadCidr {
    /// The whole list.
    pub list: String,
    /// The entry.
    pub entry: String,
}

/// Ports, as inclusive ranges (a single port is `p..=p`), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(Vec<(u16, u16)>);

impl PortList {
    /// No ports.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// The given single ports.
    pub fn of(ports: &[u16]) -> Self {
        Self(ports.iter().map(|p| (*p, *p)).collect())
    }

    /// Whether the list has no ports.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `port` is in the list.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    /// Each entry in iptables' `--dport` form: `80` or `9000:9010`.
    pub fn dports(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
    }

    /// Appends the entries of `other` not already here.
    pub fn extend(&mut self, other: &PortList) {
        for range in &other.0 {
            if !self.0.contains(range) {
                self.0.push(*range);
            }
        }
    }
}

impl FromStr for PortList {
    type Err = BadPort;

    /// Empty means none; entries are comma-separated, spaces around them ignored.
    fn from_str(list: &str) -> Result<Self, BadPort> {
        let bad = |entry: &str, why| BadPort {
            list: list.to_owned(),
            entry: entry.to_owned(),
            why,
        };
        let port = |entry: &str, text: &str| -> Result<u16, BadPort> {
            match text.trim().parse::<u16>() {
                Ok(0) => Err(bad(entry, "port 0 cannot be captured")),
                Ok(p) => Ok(p),
                Err(_) => Err(bad(entry, "not a number from 1 to 65535")),
            }
        };
        let mut ranges = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let range = match entry.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(entry, lo)?, port(entry, hi)?);
                    if lo > hi {
                        return Err(bad(entry, "the range's low end is above its high end"));
                    }
                    (lo, hi)
                }
                None => {
                    let p = port(entry, entry)?;
                    (p, p)
                }
            };
            if !ranges.contains(&range) {
                ranges.push(range);
            }
        }
        Ok(Self(ranges))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&entries.join(","))
    }
}

/// Which inbound ports are captured: every port, or the listed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `'*'`: every TCP port (the default).
    All,
    /// Only these.
    Only(PortList),
}

impl FromStr for InboundPorts {
    type Err = BadPort;

    fn from_str(s: &str) -> Result<Self, BadPort> {
        if s.trim() == "*" {
            Ok(Self::All)
        } else {
            Ok(Self::Only(s.parse()?))
        }
    }
}

impl fmt::Display for InboundPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Only(ports) => ports.fmt(f),
        }
    }
}

/// Networks, IPv4 and IPv6 mixed, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl FromStr for CidrList {
    type Err = BadCidr;

    /// Empty means none; a bare address is its /32 or /128.
    fn from_str(list: &str) -> Result<Self, BadCidr> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| BadCidr {
                    list: list.to_owned(),
                    entry: entry.to_owned(),
                })?;
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_take_ports_and_ranges_and_name_a_bad_entry() {
        let list: PortList = "80, 8080,9000-9010,80".parse().unwrap();
        assert_eq!(
            list.dports().collect::<Vec<_>>(),
            ["80", "8080", "9000:9010"]
        );
        assert!(list.contains(9005) && !list.contains(9011));
        assert_eq!(list.to_string(), "80,8080,9000-9010");
        assert!("".parse::<PortList>().unwrap().is_empty());

        for (input, entry, why) in [
            ("80,abc", "abc", "not a number"),
            ("70000", "70000", "not a number"),
            ("0", "0", "port 0"),
            ("90-80", "90-80", "low end"),
            ("80-", "80-", "not a number"),
            ("-5", "-5", "not a number"),
        ] {
            let e = input.parse::<PortList>().unwrap_err();
            assert_eq!(e.entry, entry, "{input}");
            assert!(e.to_string().contains(why), "{e}");
            assert!(e.to_string().contains(&format!("{entry:?}")), "{e}");
        }
    }

    #[test]
    fn inbound_ports_are_all_or_a_list() {
        assert_eq!("*".parse::<InboundPorts>().unwrap(), InboundPorts::All);
        assert_eq!(
            "8080".parse::<InboundPorts>().unwrap(),
            InboundPorts::Only(PortList::of(&[8080]))
        );
        assert!("*,80".parse::<InboundPorts>().is_err());
    }

    #[test]
    fn cidr_lists_take_networks_and_addresses_of_both_families() {
        let list: CidrList = "10.0.0.0/8, 192.168.1.7,fd00::/8".parse().unwrap();
        let shown: Vec<String> = list.0.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        // A host address with a prefix is the network it is in.
        let trunc: CidrList = "10.1.2.3/16".parse().unwrap();
        assert_eq!(trunc.0[0].to_string(), "10.1.0.0/16");
        let e = "10.0.0.0/8,10.0.0.0/33".parse::<CidrList>().unwrap_err();
        assert_eq!(e.entry, "10.0.0.0/33");
        assert!("not-an-ip".parse::<CidrList>().is_err());
    }

    #[test]
    fn lists_print_as_they_parse() {
        for text in ["*", "80,9000-9010", ""] {
            assert_eq!(text.parse::<InboundPorts>().unwrap().to_string(), text);
        }
        let list: CidrList = "10.0.0.0/8,192.168.1.7,fd00::/8".parse().unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8,192.168.1.7/32,fd00::/8");
        assert_eq!(list.to_string().parse::<CidrList>().unwrap(), list);
    }
}
