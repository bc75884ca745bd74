//! What `/proc/self` says about this process: its effective uid, the one
//! place it is read (the agent's operator check, the owner checks on our
//! directories and manifests, `up`'s demo pod annotation), and its effective
//! capabilities (`meshid proxy init`'s privilege check).

/// This process's effective uid, from the `Uid:` line of `/proc/self/status`
/// (real, effective, saved, filesystem); `None` when it cannot be read. Read
/// once (meshid never changes its uid): the local platform asks on every poll.
pub fn effective_uid() -> Option<u32> {
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        effective_uid_in(&status)
    })
}

/// The effective uid in the text of a `/proc/<pid>/status` file.
pub fn effective_uid_in(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `CAP_NET_ADMIN`'s bit in a capability mask (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`'s bit in a capability mask (linux/capability.h).
pub const CAP_NET_RAW: u32 = 13;

/// Whether this process's effective capabilities (`CapEff:` of
/// `/proc/self/status`) include `cap`; `None` when they cannot be read.
pub fn has_capability(cap: u32) -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(effective_capabilities_in(&status)? & (1u64 << cap) != 0)
}

/// The effective capability mask in the text of a `/proc/<pid>/status` file.
pub fn effective_capabilities_in(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_the_cap_eff_mask() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let mask = effective_capabilities_in(root).unwrap();
        assert!(mask & (1 << CAP_NET_ADMIN) != 0);
        let none = effective_capabilities_in("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(none & (1 << CAP_NET_ADMIN), 0);
        // NET_RAW alone (0x2000) is not NET_ADMIN (0x1000).
        let raw = effective_capabilities_in("CapEff:\t0000000000002000\n").unwrap();
        assert_eq!(raw & (1 << CAP_NET_ADMIN), 0);
        assert!(raw & (1 << CAP_NET_RAW) != 0);
        assert_eq!(effective_capabilities_in("Name:\tx\n"), None);
        assert!(has_capability(CAP_NET_ADMIN).is_some());
    }

    #[test]
    fn the_effective_uid_is_the_second_field() {
        assert!(effective_uid().is_some());
        assert_eq!(
            effective_uid_in("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n"),
            Some(0)
        );
        assert_eq!(effective_uid_in("Name:\tx\n"), None);
    }
}
