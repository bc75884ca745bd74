//! Transparent capture: the netfilter rules that send a pod's TCP traffic to
//! its proxy (`meshid proxy init`), and recovering where each captured
//! connection was going.
//!
//! - the port and CIDR lists the flags take are [`crate::netlist`]'s (the
//!   injector writes them too);
//! - [`rules`]: the rules themselves, as `iptables-restore` input (pure);
//! - [`saved`]: `iptables-save` output, read;
//! - [`netfilter`]: the node's `iptables` tools (nft or legacy), run;
//! - [`init`]: install, show, remove, for IPv4 and IPv6;
//! - [`original_dst`]: where a captured connection was going.
//!
//! What capture cannot see is in SECURITY.md: UDP, the proxy's own uid,
//! excluded ports and networks, loopback.

pub mod init;
pub mod netfilter;
pub mod original_dst;
pub mod rules;
pub mod saved;
