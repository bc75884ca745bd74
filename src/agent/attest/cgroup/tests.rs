//! Pod UIDs from cgroup lines as real nodes write them: both drivers, cgroup
//! v1 and v2, containerd, CRI-O and Docker, and what must name no pod.

use super::*;

const UID_A: &str = "4e8a2f3c-1b2d-4f5e-9a8b-7c6d5e4f3a2b";
const UID_B: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const CTR: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn underscored(uid: &str) -> String {
    uid.replace('-', "_")
}

#[test]
fn cgroup_v1_cgroupfs_names_the_pod_on_every_line() {
    let contents = format!(
        "12:pids:/kubepods/burstable/pod{UID_A}/{CTR}\n\
         11:memory:/kubepods/burstable/pod{UID_A}/{CTR}\n\
         4:cpu,cpuacct:/kubepods/burstable/pod{UID_A}/{CTR}\n\
         1:name=systemd:/kubepods/burstable/pod{UID_A}/{CTR}\n"
    );
    assert_eq!(pod_uid_from_cgroup(&contents).as_deref(), Some(UID_A));
}

#[test]
fn cgroup_v1_systemd_containerd() {
    let u = underscored(UID_A);
    let contents = format!(
        "11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CTR}.scope\n\
         1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CTR}.scope\n"
    );
    assert_eq!(pod_uid_from_cgroup(&contents).as_deref(), Some(UID_A));
}

#[test]
fn cgroup_v2_systemd_crio_besteffort() {
    let u = underscored(UID_A);
    let contents = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{CTR}.scope\n"
    );
    assert_eq!(pod_uid_from_cgroup(&contents).as_deref(), Some(UID_A));
}

#[test]
fn cgroup_guaranteed_pods_have_no_qos_segment() {
    let cgroupfs = format!("0::/kubepods/pod{UID_A}/{CTR}\n");
    assert_eq!(pod_uid_from_cgroup(&cgroupfs).as_deref(), Some(UID_A));
    let systemd = format!(
        "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CTR}.scope\n",
        underscored(UID_A)
    );
    assert_eq!(pod_uid_from_cgroup(&systemd).as_deref(), Some(UID_A));
}

#[test]
fn cgroup_docker_runtime_both_drivers() {
    let systemd = format!(
        "9:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-{CTR}.scope\n",
        underscored(UID_B)
    );
    assert_eq!(pod_uid_from_cgroup(&systemd).as_deref(), Some(UID_B));
    let cgroupfs = format!("9:devices:/kubepods/besteffort/pod{UID_B}/{CTR}\n");
    assert_eq!(pod_uid_from_cgroup(&cgroupfs).as_deref(), Some(UID_B));
}

#[test]
fn cgroup_paths_seen_from_inside_a_cgroup_namespace_and_from_kind() {
    let systemd = format!(
        "0::/../../kubepods-burstable-pod{}.slice/cri-containerd-{CTR}.scope\n",
        underscored(UID_A)
    );
    assert_eq!(pod_uid_from_cgroup(&systemd).as_deref(), Some(UID_A));
    let cgroupfs = format!("0::/../../besteffort/pod{UID_A}/{CTR}\n");
    assert_eq!(pod_uid_from_cgroup(&cgroupfs).as_deref(), Some(UID_A));
    let kind = format!(
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
         kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{CTR}.scope\n",
        underscored(UID_A)
    );
    assert_eq!(pod_uid_from_cgroup(&kind).as_deref(), Some(UID_A));
}

#[test]
fn cgroup_of_processes_outside_kubernetes_name_no_pod() {
    for contents in [
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/\n",
        "0::/system.slice/containerd.service\n",
        &format!("12:pids:/docker/{CTR}\n1:name=systemd:/docker/{CTR}\n"),
        &format!("0::/system.slice/pod{UID_A}/{CTR}\n"),
    ] {
        assert_eq!(pod_uid_from_cgroup(contents), None, "{contents}");
    }
}

#[test]
fn cgroup_garbage_names_no_pod() {
    for contents in [
        "",
        "garbage",
        "\0\0\0",
        &format!("kubepods/pod{UID_A}"),
        &format!("x::/kubepods/pod{UID_A}/{CTR}"),
        &format!("0::kubepods/pod{UID_A}/{CTR}"),
        &format!("0::/kubepods/pod{}/{CTR}", &UID_A[..35]),
        &format!("0::/kubepods/pod{}x/{CTR}", UID_A),
    ] {
        assert_eq!(pod_uid_from_cgroup(contents), None, "{contents:?}");
    }
}

#[test]
fn cgroup_pod_prefix_in_a_segment_that_is_not_a_uid_names_no_pod() {
    for contents in [
        "0::/kubepods/burstable/podcast-service/abc\n",
        "0::/kubepods.slice/kubepods-podcast.slice/crio-abc.scope\n",
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod-1234.slice/x.scope\n",
        // Dashes where the systemd driver writes underscores.
        &format!("0::/kubepods.slice/kubepods-pod{UID_A}.slice/crio-{CTR}.scope\n"),
        // A pod segment not where the kubelet puts it.
        &format!("0::/kubepods/burstable/extra/pod{UID_A}/{CTR}\n"),
        &format!(
            "0::/podman.slice/machine-pod{}.slice/x.scope\n",
            underscored(UID_A)
        ),
    ] {
        assert_eq!(pod_uid_from_cgroup(contents), None, "{contents}");
    }
}

#[test]
fn cgroup_names_chosen_by_unprivileged_users_name_no_pod() {
    let u = underscored(UID_A);
    let forged = format!(
        "0::/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod{u}.slice/x.scope\n"
    );
    assert_eq!(pod_uid_from_cgroup(&forged), None);
    let forged = format!("0::/user.slice/user-1000.slice/session-3.scope/kubepods/pod{UID_A}/x\n");
    assert_eq!(pod_uid_from_cgroup(&forged), None);
}

#[test]
fn cgroup_outermost_pod_wins_and_disagreeing_lines_name_none() {
    let nested = format!(
        "0::/kubepods/pod{UID_A}/{CTR}/kubepods.slice/kubepods-pod{}.slice/x.scope\n",
        underscored(UID_B)
    );
    assert_eq!(pod_uid_from_cgroup(&nested).as_deref(), Some(UID_A));
    let conflicting = format!("2:cpu:/kubepods/pod{UID_A}/x\n1:memory:/kubepods/pod{UID_B}/x\n");
    assert_eq!(pod_uid_from_cgroup(&conflicting), None);
}
