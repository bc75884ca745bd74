//! Which process holds a loopback TCP port or a Unix socket path, read from
//! Linux's `/proc`, for the "in use" errors of `meshid up`.
//!
//! The socket's inode comes from `/proc/net/tcp`, `/proc/net/tcp6` or
//! `/proc/net/unix`; the process is the one with a `socket:[inode]` link in
//! `/proc/<pid>/fd`. Parsing is kept apart from reading so that it is tested
//! on real lines. Rule enforced: this only ever explains an error. Every
//! failure (no `/proc`, another user's fds we may not read, a process gone
//! meanwhile) becomes "another process (could not tell which)" or `None`,
//! never an error of its own.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Who holds a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The process that has the socket open.
    Process {
        pid: u32,
        /// `/proc/<pid>/comm`: the executable's name, at most 15 bytes.
        comm: String,
        /// `/proc/<pid>/cmdline`, one entry per argument.
        args: Vec<String>,
    },
    /// The socket exists, but no `/proc/<pid>/fd` we may read has it
    /// (another user's process, or one that ended meanwhile).
    Unknown {
        /// The socket owner's uid, when the kernel says (TCP only).
        uid: Option<u32>,
    },
}

impl Holder {
    /// Whether the holder is a `meshid up`.
    pub(crate) fn is_meshid_up(&self) -> bool {
        match self {
            Holder::Process { comm, args, .. } => {
                comm == "meshid" && args.iter().skip(1).any(|a| a == "up")
            }
            Holder::Unknown { .. } => false,
        }
    }
}

/// Longest command line shown, in characters.
const MAX_SHOWN: usize = 160;

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Process { pid, comm, args } => {
                // Arguments may hold newlines (`python3 -c '…'`): one line.
                let line: String = args
                    .join(" ")
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let shown = if line.is_empty() { comm.clone() } else { line };
                if shown.chars().count() > MAX_SHOWN {
                    let cut: String = shown.chars().take(MAX_SHOWN).collect();
                    write!(f, "pid {pid} ({cut}…)")
                } else {
                    write!(f, "pid {pid} ({shown})")
                }
            }
            Holder::Unknown { uid: Some(uid) } => {
                write!(
                    f,
                    "another process (could not tell which; it runs as uid {uid})"
                )
            }
            Holder::Unknown { uid: None } => write!(f, "another process (could not tell which)"),
        }
    }
}

/// The holder of the TCP socket that keeps `addr` from being bound, if
/// `/proc/net/tcp{,6}` shows one: a listener first, then any socket on that port.
pub(crate) fn tcp_port_holder(addr: SocketAddr) -> Option<Holder> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            sockets.extend(text.lines().filter_map(parse_tcp_line));
        }
    }
    let socket = best_tcp_match(&sockets, addr)?;
    Some(holder_of(socket.inode, Some(socket.uid)))
}

/// The holder of the Unix socket listening on `path`, if `/proc/net/unix` shows one.
pub(crate) fn unix_socket_holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let wanted = path.to_str()?;
    let socket = text
        .lines()
        .filter_map(parse_unix_line)
        .find(|s| s.listening && s.path == wanted)?;
    Some(holder_of(socket.inode, None))
}

fn holder_of(inode: u64, uid: Option<u32>) -> Holder {
    match pid_with_socket(inode) {
        Some(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            let args = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| split_cmdline(&c))
                .unwrap_or_default();
            Holder::Process { pid, comm, args }
        }
        None => Holder::Unknown { uid },
    }
}

/// The first process with a `socket:[inode]` link among its fds; processes
/// whose fds we may not read are skipped.
fn pid_with_socket(inode: u64) -> Option<u32> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.to_str().and_then(socket_inode) == Some(inode) {
                return Some(pid);
            }
        }
    }
    None
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpSocket {
    local: SocketAddr,
    /// State `0A`: LISTEN.
    listening: bool,
    uid: u32,
    inode: u64,
}

/// Parses a row: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`.
/// The header and anything malformed give `None`.
fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    Some(TcpSocket {
        local: parse_hex_socket_addr(fields[1])?,
        listening: fields[3] == "0A",
        uid: fields[7].parse().ok()?,
        inode: fields[9].parse().ok()?,
    })
}

/// `0100007F:3A98` (IPv4) or 32 hex digits `:PORT` (IPv6). The kernel prints
/// the address as 32-bit words in the host's byte order, the port as a number.
fn parse_hex_socket_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(8 * i..8 * i + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket bound to `held` keeps `wanted` from being bound (same
/// port assumed): the same address, a wildcard, or IPv4 mapped into IPv6.
fn conflicts(held: IpAddr, wanted: IpAddr) -> bool {
    let held = match held {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(held, IpAddr::V4),
        v4 => v4,
    };
    held == wanted || held.is_unspecified()
}

/// The socket most likely to hold `addr`: a listener on its exact address,
/// then a wildcard listener, then any other socket (inode 0: none, as in TIME-WAIT).
fn best_tcp_match(sockets: &[TcpSocket], addr: SocketAddr) -> Option<&TcpSocket> {
    let candidates = || {
        sockets.iter().filter(move |s| {
            s.inode != 0 && s.local.port() == addr.port() && conflicts(s.local.ip(), addr.ip())
        })
    };
    candidates()
        .find(|s| s.listening && s.local.ip() == addr.ip())
        .or_else(|| candidates().find(|s| s.listening))
        .or_else(|| candidates().next())
}

/// One row of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnixSocket {
    /// `__SO_ACCEPTCON` in the flags: a listening socket.
    listening: bool,
    inode: u64,
    /// The bound path (`@…` for abstract sockets); empty when unbound.
    path: String,
}

/// Flag of a listening socket in `/proc/net/unix` (`__SO_ACCEPTCON`).
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// Parses a row: `Num: RefCount Protocol Flags Type St Inode [Path]`. The
/// path is the rest of the line after one space, spaces included.
fn parse_unix_line(line: &str) -> Option<UnixSocket> {
    let mut rest = line;
    let mut fields = Vec::with_capacity(7);
    for _ in 0..7 {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    if !fields[0].ends_with(':') {
        return None;
    }
    let flags = u32::from_str_radix(fields[3], 16).ok()?;
    Some(UnixSocket {
        listening: flags & SO_ACCEPTCON != 0,
        inode: fields[6].parse().ok()?,
        path: rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
    })
}

/// The inode of an fd link target `socket:[12345]`.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `/proc/<pid>/cmdline`: arguments separated (and ended) by NUL bytes.
fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real rows, captured on Linux 6.18 (x86_64, little-endian).
    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
    const TCP_LISTEN: &str = "   0: 0100007F:89D1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1660428 1 0000000031b05904 100 0 0 10 0";
    const TCP_WILDCARD: &str = "   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1151 1 000000007039e42e 100 0 0 10 0";
    const TCP_ESTABLISHED: &str = "  25: 0100007F:59E4 0100007F:C446 01 00000000:00000000 00:00000000 00000000  1000        0 1660444 1 0000000017da6314 20 4 30 18 -1";
    const TCP6_WILDCARD: &str = "   0: 00000000000000000000000000000000:833F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1663218 1 00000000ec7a8b93 100 0 0 10 0";
    const TCP6_LOOPBACK: &str = "   1: 00000000000000000000000001000000:E291 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1663219 1 000000006f02743b 100 0 0 10 0";
    const UNIX_LISTEN: &str =
        "00000000a6177c2d: 00000002 00000000 00010000 0001 01 1660426 /tmp/upx/data/agent.sock";
    const UNIX_ACCEPTED: &str =
        "000000007dd97c15: 00000003 00000000 00000000 0001 03 1660440 /tmp/upx/data/agent.sock";
    const UNIX_UNBOUND: &str = "0000000099fa8d71: 00000003 00000000 00000000 0001 03 1663048";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp_rows_give_address_state_uid_and_inode() {
        assert_eq!(parse_tcp_line(TCP_HEADER), None);
        let listen = parse_tcp_line(TCP_LISTEN).unwrap();
        assert_eq!(listen.local, addr("127.0.0.1:35281"));
        assert!(listen.listening);
        assert_eq!((listen.uid, listen.inode), (0, 1_660_428));
        assert_eq!(
            parse_tcp_line(TCP_WILDCARD).unwrap().local,
            addr("0.0.0.0:2024")
        );
        let established = parse_tcp_line(TCP_ESTABLISHED).unwrap();
        assert!(!established.listening);
        assert_eq!(established.uid, 1000);
        assert_eq!(
            parse_tcp_line(TCP6_WILDCARD).unwrap().local,
            addr("[::]:33599")
        );
        assert_eq!(
            parse_tcp_line(TCP6_LOOPBACK).unwrap().local,
            addr("[::1]:58001")
        );
    }

    #[test]
    fn malformed_tcp_rows_are_skipped() {
        for line in [
            "",
            "   0: 0100007F 00000000:0000 0A 0 0 0 0 0 1",
            "   0: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 0100007:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1",
        ] {
            assert_eq!(parse_tcp_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_listener_on_the_exact_address_wins_then_a_wildcard_then_any_socket() {
        let socket = |local: &str, listening: bool, inode: u64| TcpSocket {
            local: addr(local),
            listening,
            uid: 0,
            inode,
        };
        let wanted = addr("127.0.0.1:15012");
        let all = [
            socket("127.0.0.1:15012", false, 1),
            socket("[::]:15012", true, 2),
            socket("127.0.0.1:15012", true, 3),
            socket("10.0.0.5:15012", true, 4),
        ];
        assert_eq!(best_tcp_match(&all, wanted).unwrap().inode, 3);
        assert_eq!(best_tcp_match(&all[..2], wanted).unwrap().inode, 2);
        assert_eq!(best_tcp_match(&all[..1], wanted).unwrap().inode, 1);
        // Another address, another port, or no inode (TIME-WAIT) hold nothing.
        let none = [
            socket("10.0.0.5:15012", true, 4),
            socket("127.0.0.1:15013", true, 5),
            socket("127.0.0.1:15012", false, 0),
        ];
        assert_eq!(best_tcp_match(&none, wanted), None);
        assert!(conflicts("::ffff:127.0.0.1".parse().unwrap(), wanted.ip()));
    }

    #[test]
    fn unix_rows_give_the_listener_and_its_path() {
        let listen = parse_unix_line(UNIX_LISTEN).unwrap();
        assert!(listen.listening);
        assert_eq!(listen.inode, 1_660_426);
        assert_eq!(listen.path, "/tmp/upx/data/agent.sock");
        assert!(!parse_unix_line(UNIX_ACCEPTED).unwrap().listening);
        assert_eq!(parse_unix_line(UNIX_UNBOUND).unwrap().path, "");
        assert_eq!(
            parse_unix_line("Num       RefCount Protocol Flags    Type St Inode Path"),
            None
        );
        let spaced = UNIX_LISTEN.replace("/tmp/upx", "/tmp/my data");
        assert_eq!(
            parse_unix_line(&spaced).unwrap().path,
            "/tmp/my data/data/agent.sock"
        );
    }

    #[test]
    fn fd_links_name_socket_inodes() {
        assert_eq!(socket_inode("socket:[1660426]"), Some(1_660_426));
        assert_eq!(socket_inode("pipe:[1660426]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_meshid_up_is_recognised_and_shown_with_its_command_line() {
        let up = Holder::Process {
            pid: 42,
            comm: "meshid".to_owned(),
            args: split_cmdline(b"/usr/bin/meshid\0up\0--data-dir\0/tmp/d\0"),
        };
        assert!(up.is_meshid_up());
        assert_eq!(
            up.to_string(),
            "pid 42 (/usr/bin/meshid up --data-dir /tmp/d)"
        );
        let ca = Holder::Process {
            pid: 43,
            comm: "meshid".to_owned(),
            args: split_cmdline(b"meshid\0ca\0"),
        };
        assert!(!ca.is_meshid_up());
        let long = Holder::Process {
            pid: 44,
            comm: "java".to_owned(),
            args: vec!["x".repeat(500)],
        };
        assert!(long.to_string().ends_with("…)"));
        let script = Holder::Process {
            pid: 45,
            comm: "python3".to_owned(),
            args: split_cmdline(b"python3\0-c\0import socket\nsocket.socket()\0"),
        };
        assert_eq!(
            script.to_string(),
            "pid 45 (python3 -c import socket socket.socket())"
        );
        let unknown = Holder::Unknown { uid: Some(1000) };
        assert!(unknown.to_string().contains("could not tell which"));
        assert!(!unknown.is_meshid_up());
    }

    #[test]
    fn a_port_bound_by_this_process_is_traced_to_our_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let holder = tcp_port_holder(listener.local_addr().unwrap()).unwrap();
        let Holder::Process { pid, .. } = holder else {
            panic!("not found: {holder:?}");
        };
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn a_unix_socket_bound_by_this_process_is_traced_to_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let holder = unix_socket_holder(&path).unwrap();
        let Holder::Process { pid, .. } = holder else {
            panic!("not found: {holder:?}");
        };
        assert_eq!(pid, std::process::id());
        assert_eq!(unix_socket_holder(&dir.path().join("other.sock")), None);
    }
}
