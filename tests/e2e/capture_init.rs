//! `meshid proxy init` in network namespaces this test creates: the rules
//! installed, left alone on a second run, removed exactly, and every bad
//! input refused with its reason. Root only (CI runs as root).

use std::process::Output;

use meshid::test_helpers::NetNs;

use crate::support::*;

/// A fresh namespace, or `None` (with the reason printed) when not root or
/// when iptables is missing (`.ci/run` installs it).
fn namespace(tag: &str) -> Option<NetNs> {
    if let Some(why) = NetNs::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    if std::process::Command::new("iptables-save")
        .output()
        .is_err()
    {
        eprintln!("skipped: iptables is not installed (.ci/run installs it)");
        return None;
    }
    Some(NetNs::new(tag))
}

fn init(ns: &NetNs, args: &[&str]) -> Output {
    let mut argv = vec![BIN, "proxy", "init"];
    argv.extend_from_slice(args);
    ns.exec(&argv)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `iptables-save` without comments and counters.
fn saved(ns: &NetNs, tool: &str) -> String {
    meshid::proxy::capture::saved::Saved::normalized(&ns.ok(&[tool]))
}

#[test]
fn init_installs_once_and_cleanup_restores_iptables_save_exactly() {
    let Some(ns) = namespace("init") else { return };
    // Rules of someone else (a CNI's masquerade, a filter rule) must survive.
    ns.ok(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.9.0.0/16",
        "-j",
        "MASQUERADE",
    ]);
    ns.ok(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
    ]);
    ns.ok(&[
        "ip6tables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "fd00::/8",
        "-j",
        "MASQUERADE",
    ]);
    let before = (saved(&ns, "iptables-save"), saved(&ns, "ip6tables-save"));

    let flags = [
        "--exclude-inbound-ports",
        "22",
        "--exclude-outbound-cidrs",
        "10.96.0.0/12",
    ];
    let out = init(&ns, &flags);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("iptables-nft: capture rules installed"),
        "{}",
        text(&out)
    );
    let installed = saved(&ns, "iptables-save");
    for rule in [
        "-A PREROUTING -p tcp -j MESHID_INBOUND",
        "-A OUTPUT -p tcp -j MESHID_OUTPUT",
        "-A MESHID_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A MESHID_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESHID_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A MESHID_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A MESHID_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(installed.contains(rule), "{rule} missing:\n{installed}");
    }
    assert!(saved(&ns, "ip6tables-save").contains("-A MESHID_OUTPUT -d ::1/128 -j RETURN"));

    // A second run changes nothing.
    let again = init(&ns, &flags);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already in place; nothing changed"),
        "{}",
        text(&again)
    );
    assert_eq!(saved(&ns, "iptables-save"), installed);

    // Other settings rewrite our chains, still with one jump each.
    let other = init(&ns, &["--include-inbound-ports", "8080"]);
    assert!(other.status.success(), "{}", text(&other));
    let rewritten = saved(&ns, "iptables-save");
    assert_eq!(
        rewritten.matches("-j MESHID_INBOUND").count(),
        1,
        "{rewritten}"
    );
    assert!(rewritten.contains("--dport 8080 -j MESHID_IN_REDIRECT"));
    assert!(!rewritten.contains("--dport 22 -j RETURN"));

    let cleanup = init(&ns, &["--cleanup"]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert_eq!(
        (saved(&ns, "iptables-save"), saved(&ns, "ip6tables-save")),
        before
    );
    let nothing = init(&ns, &["--cleanup"]);
    assert!(
        text(&nothing).contains("nothing to remove"),
        "{}",
        text(&nothing)
    );
}

#[test]
fn init_uses_the_legacy_backend_where_the_node_rules_are() {
    let Some(ns) = namespace("legacy") else {
        return;
    };
    if ns.exec(&["iptables-legacy-save"]).status.code() != Some(0) {
        eprintln!("skipped: iptables-legacy cannot run here");
        return;
    }
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.9.0.0/16",
        "-j",
        "MASQUERADE",
    ]);
    let out = init(&ns, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("iptables-legacy: capture rules installed"),
        "{}",
        text(&out)
    );
    assert!(saved(&ns, "iptables-legacy-save").contains("-A OUTPUT -p tcp -j MESHID_OUTPUT"));
    assert!(!saved(&ns, "iptables-nft-save").contains("MESHID"));
    assert!(init(&ns, &["--cleanup"]).status.success());
    assert!(!saved(&ns, "iptables-legacy-save").contains("MESHID"));
}

#[test]
fn another_meshs_rules_are_refused_by_name_unless_forced() {
    let Some(ns) = namespace("istio") else { return };
    ns.ok(&["iptables", "-t", "nat", "-N", "ISTIO_OUTPUT"]);
    let before = saved(&ns, "iptables-save");
    let out = init(&ns, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nat/ISTIO_OUTPUT"), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(saved(&ns, "iptables-save"), before, "nothing was written");

    let forced = init(&ns, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        text(&forced).contains("installed beside another mesh"),
        "{}",
        text(&forced)
    );
}

#[test]
fn init_without_privilege_or_iptables_or_with_a_bad_port_says_why_and_changes_nothing() {
    let Some(ns) = namespace("bad") else { return };
    let before = saved(&ns, "iptables-save");

    let unprivileged = ns.exec(&[
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-net_admin,-net_raw",
        BIN,
        "proxy",
        "init",
    ]);
    assert!(!unprivileged.status.success());
    assert!(
        text(&unprivileged).contains("needs the NET_ADMIN and NET_RAW capabilities"),
        "{}",
        text(&unprivileged)
    );

    let no_tools = ns.exec(&["env", "PATH=/nonexistent", BIN, "proxy", "init"]);
    assert!(!no_tools.status.success());
    assert!(
        text(&no_tools).contains("iptables is not installed"),
        "{}",
        text(&no_tools)
    );

    for (flag, value, named) in [
        ("--exclude-inbound-ports", "80,abc", "\"abc\""),
        ("--include-inbound-ports", "8080-80", "\"8080-80\""),
        ("--exclude-outbound-cidrs", "10.0.0.0/33", "\"10.0.0.0/33\""),
    ] {
        let out = init(&ns, &[flag, value]);
        assert!(!out.status.success());
        assert!(text(&out).contains(named), "{flag} {value}: {}", text(&out));
    }
    assert_eq!(saved(&ns, "iptables-save"), before);

    // The dry run needs no privilege and prints both families.
    let dry = ns.exec(&[
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-net_admin",
        BIN,
        "proxy",
        "init",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("# ip6tables-restore --noflush"));
    // And the sidecar binary has the same command.
    let sidecar = ns.exec(&[env!("CARGO_BIN_EXE_meshid-proxy"), "init", "--dry-run"]);
    assert_eq!(sidecar.stdout, dry.stdout);
}
