//! `meshid proxy init`: the capture rules of this network namespace (what
//! Istio's `istio-iptables` does for a pod), installed, shown or removed.

use clap::Args;

use crate::netlist::{BadCidr, BadPort, CidrList, InboundPorts, PortList};
use crate::proxy::capture::init::{self, Done, InitOptions, Report};
use crate::proxy::capture::netfilter::Backend;
use crate::proxy::capture::rules::CaptureRules;

/// Flags of `meshid proxy init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Where outbound connections are redirected (`meshid proxy --capture` listens there).
    #[arg(long, default_value_t = 15001)]
    pub outbound_capture_port: u16,
    /// Where inbound connections are redirected.
    #[arg(long, default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// Inbound ports to capture: `*` (every port) or a list such as `8080,9000-9010`.
    #[arg(long, default_value = "*", value_parser = parse_inbound)]
    pub include_inbound_ports: InboundPorts,
    /// Inbound ports never captured.
    #[arg(long, default_value = "", value_parser = parse_ports)]
    pub exclude_inbound_ports: PortList,
    /// The proxy's own ports (metrics, health), never captured inbound.
    #[arg(long, default_value = "15008,15020", value_parser = parse_ports)]
    pub proxy_ports: PortList,
    /// Outbound destination ports never captured.
    #[arg(long, default_value = "", value_parser = parse_ports)]
    pub exclude_outbound_ports: PortList,
    /// Outbound destination networks never captured, e.g. `10.96.0.0/12,fd00::/108`.
    #[arg(long, default_value = "", value_parser = parse_cidrs)]
    pub exclude_outbound_cidrs: CidrList,
    /// The netfilter backend; by default the one the node's rules are in.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Install beside another mesh's capture rules (Istio's ISTIO_*, Linkerd's PROXY_INIT_*).
    #[arg(long)]
    pub force: bool,
    /// Print the rules instead of installing them (needs no privilege).
    #[arg(long, conflicts_with = "cleanup")]
    pub dry_run: bool,
    /// Remove meshid's rules, and nothing else.
    #[arg(long)]
    pub cleanup: bool,
}

fn parse_inbound(s: &str) -> Result<InboundPorts, BadPort> {
    s.parse()
}

fn parse_ports(s: &str) -> Result<PortList, BadPort> {
    s.parse()
}

fn parse_cidrs(s: &str) -> Result<CidrList, BadCidr> {
    s.parse()
}

impl InitArgs {
    fn rules(&self) -> CaptureRules {
        CaptureRules {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_capture_port,
            inbound_port: self.inbound_capture_port,
            include_inbound_ports: self.include_inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            proxy_ports: self.proxy_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
        }
    }
}

/// Runs `meshid proxy init`.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let rules = args.rules();
    if args.dry_run {
        print!("{}", init::dry_run(&rules));
        return Ok(());
    }
    let opts = InitOptions {
        rules,
        backend: args.backend,
        force: args.force,
    };
    let (report, verb) = if args.cleanup {
        (init::cleanup(&opts)?, "removed")
    } else {
        (init::apply(&opts)?, "installed")
    };
    print_report(&report, verb);
    Ok(())
}

fn print_report(report: &Report, verb: &str) {
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    for (tool, done) in &report.families {
        match done {
            Done::Changed => println!("{tool}: capture rules {verb}"),
            Done::Unchanged if verb == "removed" => {
                println!("{tool}: no meshid capture rules; nothing to remove")
            }
            Done::Unchanged => println!("{tool}: capture rules already in place; nothing changed"),
            Done::Skipped(why) => println!("{tool}: skipped: {why}"),
        }
    }
}
