//! Pod UIDs from the contents of `/proc/<pid>/cgroup`: pure parsing, no I/O.
//!
//! The kubelet puts every container of a pod under one cgroup named after the
//! pod's UID, the same on cgroup v1 and v2:
//!
//! - cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`
//!   (guaranteed pods have no QoS segment);
//! - systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/`
//!   `kubepods[-<qos>]-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`,
//!   where the runtime is `cri-containerd`, `crio` or `docker`.
//!
//! Rules enforced here: only a `pod<uid>` segment in that place, with a
//! well-formed UID, counts (a `pod…` prefix elsewhere is not a pod); the
//! outermost pod segment of a path wins, because a process can create cgroups
//! only *inside* its own; a path that first goes through a tree delegated to
//! unprivileged users (`user.slice`, `user@<uid>.service`, `machine.slice`)
//! names no pod, because its owner may name sub-cgroups as it likes.

/// Pure: the pod UID in the contents of `/proc/<pid>/cgroup`, if any line
/// names a Kubernetes pod (and all lines that do name the same one).
///
/// Handles cgroup v1 (many lines `N:controllers:/path`) and v2 (`0::/path`),
/// the cgroupfs driver (`…/kubepods/burstable/pod<uid-with-dashes>/<container-id>`)
/// and the systemd driver
/// (`…/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`), the besteffort, burstable and
/// guaranteed QoS classes, and paths relative to the reader's cgroup namespace
/// (`/../../…`). Returns the UID with dashes.
pub fn pod_uid_from_cgroup(contents: &str) -> Option<String> {
    let mut uids = pod_uids(contents);
    if uids.len() == 1 {
        uids.pop()
    } else {
        None
    }
}

/// Every distinct pod UID the lines of `contents` name, in order of appearance.
pub(crate) fn pod_uids(contents: &str) -> Vec<String> {
    let mut uids: Vec<String> = Vec::new();
    for path in contents.lines().filter_map(cgroup_path) {
        if let Some(uid) = pod_uid_in_path(path) {
            if !uids.contains(&uid) {
                uids.push(uid);
            }
        }
    }
    uids
}

/// The path of a line `hierarchy-id:controller-list:path` (cgroups(7)).
fn cgroup_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let _controllers = fields.next()?;
    let path = fields.next()?;
    let numeric = !hierarchy.is_empty() && hierarchy.bytes().all(|b| b.is_ascii_digit());
    (numeric && path.starts_with('/')).then_some(path)
}

/// The outermost pod UID a cgroup path names.
fn pod_uid_in_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        // Rule: under a delegated tree, names are chosen by unprivileged users.
        if is_delegated(segment) {
            return None;
        }
        if let Some(uid) =
            systemd_pod_uid(segment).or_else(|| cgroupfs_pod_uid(&segments[..i], segment))
        {
            // Rule: the outermost pod wins (sub-cgroups are made from inside).
            return Some(uid);
        }
    }
    None
}

/// Trees whose sub-cgroups an unprivileged user may create and name.
fn is_delegated(segment: &str) -> bool {
    matches!(segment, "user.slice" | "machine.slice") || segment.starts_with("user@")
}

/// `pod<uid>` right under `kubepods` or `kubepods/<qos>`. Seen from inside a
/// cgroup namespace the `kubepods` ancestor may be hidden behind `..`.
fn cgroupfs_pod_uid(parents: &[&str], segment: &str) -> Option<String> {
    let uid = segment.strip_prefix("pod").filter(|u| is_uid(u))?;
    let mut up = parents.iter().rev();
    let mut parent = *up.next()?;
    if matches!(parent, "burstable" | "besteffort") {
        parent = up.next()?;
    }
    matches!(parent, "kubepods" | "..").then(|| uid.to_owned())
}

/// `[<prefix>-]kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
fn systemd_pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice")?;
    let (head, pod) = name.rsplit_once('-')?;
    let uid = pod.strip_prefix("pod")?.replace('_', "-");
    let head = head
        .strip_suffix("-burstable")
        .or_else(|| head.strip_suffix("-besteffort"))
        .unwrap_or(head);
    let in_kubepods = head == "kubepods" || head.ends_with("-kubepods");
    (in_kubepods && is_uid(&uid)).then_some(uid)
}

/// An RFC 4122 UUID as Kubernetes writes pod UIDs: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests;
