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

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
