//! What `/proc/self` says about this process: its effective uid, the one
//! place it is read (the agent's operator check, the owner checks on our
//! directories and manifests, `up`'s demo pod annotation).

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

#[cfg(test)]
mod tests {
    use super::*;

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
