//! The fixed loopback ports of `meshid up` (all relative to `--port-base`)
//! and the check, before anything starts, that none of them (nor the agent
//! socket) is taken, with a message that names the port, the pid in `up.pid`
//! when another `up` recorded one, and otherwise how to find the holder (`ss`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::bail;

use super::WORKLOADS;

/// The fixed loopback ports, all relative to `--port-base`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports(pub(crate) u16);

impl Ports {
    fn at(self, offset: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.0 + offset))
    }
    pub(crate) fn ca(self) -> SocketAddr {
        self.at(12)
    }
    pub(crate) fn ca_metrics(self) -> SocketAddr {
        self.at(14)
    }
    pub(crate) fn agent_metrics(self) -> SocketAddr {
        self.at(20)
    }
    pub(crate) fn frontend_outbound(self) -> SocketAddr {
        self.at(1)
    }
    /// Workload `i` of [`WORKLOADS`]: inbound BASE+6+100i, metrics BASE+16+100i.
    pub(crate) fn inbound(self, i: u16) -> SocketAddr {
        self.at(6 + 100 * i)
    }
    pub(crate) fn proxy_metrics(self, i: u16) -> SocketAddr {
        self.at(16 + 100 * i)
    }
    pub(crate) fn all(self) -> Vec<(String, SocketAddr)> {
        let mut v = vec![
            ("the CA".to_owned(), self.ca()),
            ("the CA's metrics".to_owned(), self.ca_metrics()),
            ("the agent's metrics".to_owned(), self.agent_metrics()),
            (
                "the frontend's outbound route".to_owned(),
                self.frontend_outbound(),
            ),
        ];
        for (i, w) in (0u16..).zip(WORKLOADS) {
            v.push((format!("the {} proxy's inbound", w.name), self.inbound(i)));
            v.push((
                format!("the {} proxy's metrics", w.name),
                self.proxy_metrics(i),
            ));
        }
        v
    }
}

/// Fails, naming the port or socket, when another `up` (or anything) holds
/// them: the pid of another `up` when `up.pid` records one, else an `ss` hint.
pub(crate) fn preflight(data_dir: &Path, ports: Ports) -> anyhow::Result<()> {
    for (what, addr) in ports.all() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                in_use_by(data_dir, Some(addr.port()))
            } else {
                "use --port-base to move every port".to_owned()
            };
            bail!(
                "port {} ({what}, {addr}) cannot be bound: {e}; {why}",
                addr.port()
            );
        }
    }
    let socket = data_dir.join("agent.sock");
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!(
            "the agent socket {} is in use; {}",
            socket.display(),
            in_use_by(data_dir, None)
        );
    }
    Ok(())
}

/// Who holds a port (`Some`) or the socket (`None`), in words, with what to
/// do about it: the data directory's `up.pid` when it names a live process,
/// else how to find the holder.
fn in_use_by(data_dir: &Path, port: Option<u16>) -> String {
    let recorded = std::fs::read_to_string(data_dir.join("up.pid"))
        .ok()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty() && Path::new("/proc").join(p).exists());
    match (recorded, port) {
        (Some(pid), _) => format!(
            "another `meshid up` is running (pid {pid}, from {}/up.pid); stop that one first",
            data_dir.display()
        ),
        (None, Some(port)) => format!(
            "port {port} is in use (see `ss -ltnp 'sport = :{port}'`); stop what holds it, or use --port-base to move every port"
        ),
        (None, None) => {
            "is another `meshid up` running? (or use --port-base to move every port)".to_owned()
        }
    }
}
