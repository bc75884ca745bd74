//! Network namespaces a test creates (and deletes on drop), for traffic
//! that must cross hosts and for netfilter rules that must not touch the
//! machine's own. Root only: [`NetNs::available`] says why not otherwise.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// `None` when namespaces can be created here; else why not, for the
    /// test's skip message.
    pub fn unavailable() -> Option<String> {
        if crate::proc_self::effective_uid() != Some(0) {
            return Some("not root: network namespace tests need root (CI runs as root)".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(out) if out.status.success() => None,
            _ => Some("the `ip` command (iproute2) is not installed".into()),
        }
    }

    /// A new namespace with its loopback up.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv[0]).args(&argv[1..]).output().unwrap()
    }

    /// Runs `argv` inside the namespace; panics with its stderr if it fails.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A hub namespace with a bridge, and pods plugged into it.
pub struct Lan {
    pub hub: NetNs,
    pub pods: Vec<NetNs>,
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Lan {
    /// A hub namespace with bridge `br0` up, and no pods yet.
    pub fn new() -> Self {
        let hub = NetNs::new("hub");
        hub.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        hub.ok(&["ip", "link", "set", "br0", "up"]);
        Self {
            hub,
            pods: Vec::new(),
        }
    }

    /// A pod namespace with `ip`/24 on `eth0` (and, when IPv6 is on, the
    /// IPv6 address of [`v6_of`]), plugged into the bridge.
    pub fn pod(&mut self, tag: &str, ip: &str) -> usize {
        let ns = NetNs::new(tag);
        let hub_side = format!("vh{}-{}", tag, self.pods.len());
        let out = Command::new("ip")
            .args([
                "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name",
            ])
            .args([hub_side.as_str(), "netns", self.hub.name.as_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        if ipv6() {
            let v6 = format!("{}/64", v6_of(ip));
            ns.ok(&["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        }
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        self.hub
            .ok(&["ip", "link", "set", &hub_side, "master", "br0"]);
        self.hub.ok(&["ip", "link", "set", &hub_side, "up"]);
        self.pods.push(ns);
        self.pods.len() - 1
    }
}

/// Whether this kernel has IPv6 (pods then get an IPv6 address too).
pub fn ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The IPv6 address of the pod with IPv4 address `ip`: `fd77::<last byte>`.
pub fn v6_of(ip: &str) -> String {
    format!("fd77::{}", ip.rsplit('.').next().unwrap_or("1"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
