//! `meshid up --netns`: each demo workload in a network namespace of its own
//! on a bridge, with `proxy init`'s capture rules and a `--capture` proxy,
//! its application unmodified (it listens on its pod IP's port 8080 and the
//! frontend calls the backend's pod IP). Root only.
//!
//! The proxies run as root with `--proxy-uid 0`, so the applications run as
//! `nobody` (their traffic is captured; root's in those namespaces is not).
//! Everything started here (namespaces, child processes) is removed when
//! `up` stops.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

use super::demo::{CallLog, Workload, WORKLOADS};

/// The namespace holding the bridge.
pub(crate) const HUB: &str = "meshid-up-hub";

/// The port every demo application listens on, in its own namespace.
pub(crate) const APP_PORT: u16 = 8080;

/// The namespace of workload `w`.
pub(crate) fn namespace_of(w: &Workload) -> String {
    format!("meshid-up-{}", w.name)
}

/// The pod IP of the `i`-th workload: 10.88.0.11, .12, ….
pub(crate) fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 11 + u8::try_from(i).unwrap_or(0))
}

/// The namespaces and processes `--netns` started; removed on drop.
#[derive(Debug, Default)]
pub(crate) struct Netns {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `argv`; its stderr in the error when it fails.
fn run(argv: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("cannot run {} (is it installed?)", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Checks the privilege, removes namespaces a crashed `up` left, and
    /// builds the hub with its bridge and one namespace per workload.
    pub(crate) fn create() -> anyhow::Result<Self> {
        if crate::proc_self::effective_uid() != Some(0) {
            bail!(
                "--netns creates network namespaces and netfilter rules, which needs root: run it \
                 with sudo, or run plain `meshid up`"
            );
        }
        let mut made = Self::default();
        let names: Vec<String> = std::iter::once(HUB.to_owned())
            .chain(WORKLOADS.iter().map(namespace_of))
            .collect();
        for ns in &names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        run(&["ip", "netns", "add", HUB])?;
        made.namespaces.push(HUB.to_owned());
        run(&[
            "ip", "netns", "exec", HUB, "ip", "link", "add", "br0", "type", "bridge",
        ])?;
        run(&["ip", "netns", "exec", HUB, "ip", "link", "set", "br0", "up"])?;
        for (i, w) in WORKLOADS.iter().enumerate() {
            let ns = namespace_of(w);
            run(&["ip", "netns", "add", &ns])?;
            made.namespaces.push(ns.clone());
            let hub_side = format!("vh-{}", w.name);
            run(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                &hub_side, "netns", HUB,
            ])?;
            let exec = |argv: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns.as_str()];
                full.extend_from_slice(argv);
                run(&full)
            };
            exec(&["ip", "link", "set", "lo", "up"])?;
            exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", pod_ip(i)),
                "dev",
                "eth0",
            ])?;
            exec(&["ip", "link", "set", "eth0", "up"])?;
            run(&[
                "ip", "netns", "exec", HUB, "ip", "link", "set", &hub_side, "master", "br0",
            ])?;
            run(&[
                "ip", "netns", "exec", HUB, "ip", "link", "set", &hub_side, "up",
            ])?;
        }
        Ok(made)
    }

    /// In workload `i`'s namespace: the capture rules, the application (as
    /// `nobody`; the frontend's also calls `call` every second, its results
    /// in `calls`) and a `--capture` proxy attested by `token`. Returns once
    /// the proxy is ready.
    pub(crate) fn start_workload(
        &mut self,
        i: usize,
        socket: &Path,
        token: &Path,
        call: Option<SocketAddr>,
        calls: Arc<Mutex<CallLog>>,
        started: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        let w = &WORKLOADS[i];
        let ns = namespace_of(w);
        let exe = std::env::current_exe().context("finding meshid's own executable")?;
        let exe = exe.display().to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            &exe,
            "proxy",
            "init",
            "--proxy-uid",
            "0",
        ])?;

        let mut app = Command::new("ip");
        app.args([
            "netns", "exec", &ns, "setpriv", "--reuid", "65534", "--regid", "65534",
        ])
        .args(["--clear-groups", &exe, "demo-app", "--name", w.name])
        .args(["--listen", &format!("0.0.0.0:{APP_PORT}")]);
        if let Some(call) = call {
            app.args(["--call", &call.to_string()]);
        }
        let mut app = app
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a demo application (needs setpriv, from util-linux)")?;
        let out = app.stdout.take();
        self.children.push(app);
        let mut lines = BufReader::new(out.context("no stdout from the demo application")?).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("demo-app ready") => {}
            other => bail!("the {} application did not start: {other:?}", w.name),
        }
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mut log) = calls.lock() {
                    if let Some(body) = line.strip_prefix("call ok ") {
                        log.ok += 1;
                        log.first_ok.get_or_insert_with(|| started.elapsed());
                        log.last = Some(Ok(body.to_owned()));
                    } else if let Some(error) = line.strip_prefix("call failed ") {
                        log.failed += 1;
                        log.last = Some(Err(error.to_owned()));
                    }
                }
            }
        });

        let mut proxy = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                &exe,
                "proxy",
                "--capture",
                "--agent-socket",
            ])
            .arg(socket)
            .arg("--token-file")
            .arg(token)
            .args(["--metrics-listen", "127.0.0.1:15020"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a capture proxy")?;
        let out = proxy.stdout.take();
        self.children.push(proxy);
        let mut line = String::new();
        BufReader::new(out.context("no stdout from the proxy")?)
            .read_line(&mut line)
            .context("reading the proxy's first line")?;
        if !line.starts_with("meshid proxy ready") {
            bail!(
                "the {} proxy did not start (it prints why above): {line:?}",
                w.name
            );
        }
        Ok(())
    }
}

/// Adds the meshed label and the pod IP to each demo pod's manifest (once).
pub(crate) fn label_pods(manifests: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (i, w) in WORKLOADS.iter().enumerate() {
        let path = manifests.join(format!("pod-{}-{}.yaml", w.namespace, w.name));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.contains("podIP:") {
            continue;
        }
        let text = text
            .replacen(
                "  labels:\n",
                "  labels:\n    security.meshid.io/tlsMode: meshid\n",
                1,
            )
            .replacen(
                "  phase: Running\n",
                &format!("  phase: Running\n  podIP: {}\n", pod_ip(i)),
                1,
            );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        changed.push(path);
    }
    Ok(changed)
}
