//! The `iptables` tools of this network namespace: which backend the node
//! uses (nft or legacy), reading the rules (`*-save`) and changing them
//! atomically (`*-restore --noflush`, one transaction per table, as Istio's
//! `istio-iptables` does).
//!
//! Why the tools and not a crate: `iptables-restore` is the one interface
//! that is atomic and speaks both backends; the Rust crates either call
//! `iptables` once per rule (not atomic) or speak nftables only (no legacy
//! nodes, and rules `iptables-save` would not show the way operators read
//! them).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::Family;

/// The netfilter backend behind the `iptables` tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `iptables-nft`: rules kept in nftables.
    Nft,
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
}

impl Backend {
    fn suffix(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        }
    }
}

/// Why the rules could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetfilterError {
    /// No usable `*-save` / `*-restore` pair is installed.
    #[error(
        "{tool} is not installed (looked for {} on PATH): install the iptables package \
         (it provides iptables-nft and iptables-legacy)",
        looked_for.join(", ")
    )]
    NotInstalled {
        /// `iptables` or `ip6tables`.
        tool: &'static str,
        /// The executables looked for.
        looked_for: Vec<String>,
    },
    /// A tool could not be run.
    #[error("cannot run {tool}")]
    Run {
        /// The executable.
        tool: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The executable.
        tool: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The `*-save` and `*-restore` pair of one family and backend.
#[derive(Debug, Clone)]
pub struct Tools {
    /// IPv4 (`iptables`) or IPv6 (`ip6tables`).
    pub family: Family,
    /// The backend, when the executables name it.
    pub backend: Option<Backend>,
    save: PathBuf,
    restore: PathBuf,
}

fn base(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

impl Tools {
    /// The tools of `family`: the backend `forced`, or the one this node
    /// uses — the backend that already holds rules (kube-proxy's, the CNI's),
    /// else the one `iptables` itself is, else whichever is installed.
    pub fn detect(family: Family, forced: Option<Backend>) -> Result<Self, NetfilterError> {
        let base = base(family);
        let pair = |backend: Option<Backend>| {
            let name = match backend {
                Some(b) => format!("{base}-{}", b.suffix()),
                None => base.to_owned(),
            };
            let save = find_on_path(&format!("{name}-save"))?;
            let restore = find_on_path(&format!("{name}-restore"))?;
            Some(Self {
                family,
                backend,
                save,
                restore,
            })
        };
        let looked_for = |backends: &[Option<Backend>]| {
            backends
                .iter()
                .map(|b| match b {
                    Some(b) => format!("{base}-{}-restore", b.suffix()),
                    None => format!("{base}-restore"),
                })
                .collect()
        };
        if let Some(backend) = forced {
            return pair(Some(backend)).ok_or_else(|| NetfilterError::NotInstalled {
                tool: base,
                looked_for: looked_for(&[Some(backend)]),
            });
        }
        let mut found: Vec<Self> = [Backend::Nft, Backend::Legacy]
            .into_iter()
            .filter_map(|b| pair(Some(b)))
            .collect();
        if found.len() < 2 {
            return found.pop().or_else(|| pair(None)).ok_or_else(|| {
                NetfilterError::NotInstalled {
                    tool: base,
                    looked_for: looked_for(&[Some(Backend::Nft), Some(Backend::Legacy), None]),
                }
            });
        }
        let mut counted = Vec::new();
        for tools in found {
            let rules = tools
                .save()?
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count();
            counted.push((rules, tools));
        }
        let most = counted.iter().map(|(n, _)| *n).max().unwrap_or(0);
        let default = default_backend(base);
        counted.sort_by_key(|(n, t)| (*n != most, t.backend != default));
        Ok(counted.remove(0).1)
    }

    /// What the tools are called, e.g. `iptables-nft`.
    pub fn name(&self) -> String {
        let base = base(self.family);
        match self.backend {
            Some(b) => format!("{base}-{}", b.suffix()),
            None => base.to_owned(),
        }
    }

    /// Every table's rules, as `*-save` prints them.
    pub fn save(&self) -> Result<String, NetfilterError> {
        let out = Command::new(&self.save)
            .output()
            .map_err(|source| NetfilterError::Run {
                tool: self.save.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(NetfilterError::Failed {
                tool: self.save.display().to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `input` with `*-restore --noflush`: all of a table or none of it.
    pub fn restore(&self, input: &str) -> Result<(), NetfilterError> {
        let tool = self.restore.display().to_string();
        let mut child = Command::new(&self.restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetfilterError::Run {
                tool: tool.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|source| NetfilterError::Run {
                    tool: tool.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NetfilterError::Run {
                tool: tool.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(NetfilterError::Failed {
                tool,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// The backend the plain `iptables` executable is, from `iptables --version`
/// (`iptables v1.8.9 (nf_tables)` or `(legacy)`).
fn default_backend(base: &str) -> Option<Backend> {
    let path = find_on_path(base)?;
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("nf_tables") {
        Some(Backend::Nft)
    } else if text.contains("legacy") {
        Some(Backend::Legacy)
    } else {
        None
    }
}

/// `name` in a directory of `PATH`, if it is there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
