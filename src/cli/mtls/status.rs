//! `meshid mtls status`: one row per pod with its effective mode, port-level
//! modes and the policy they came from; warnings about competing policies on
//! stderr. Pods and policies come from the local platform's [`Manifests`], the
//! per-pod modes from [`crate::policy::report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;

use super::{OutputFormat, StatusArgs};
use crate::platform::local::Manifests;
use crate::platform::Pod;
use crate::policy::{report, MtlsMode, PodMode, Policies, PolicyWarning, Scope};

/// One row of `meshid mtls status`.
#[derive(Debug, Serialize)]
pub(super) struct StatusRow {
    pub(super) namespace: String,
    pub(super) pod: String,
    pub(super) service_account: String,
    pub(super) node: Option<String>,
    pub(super) mode: MtlsMode,
    pub(super) ports: BTreeMap<u32, MtlsMode>,
    pub(super) source: String,
    pub(super) ports_source: Option<String>,
}

pub(super) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = &args.dir.manifests;
    let manifests = Manifests::read(dir)
        .with_context(|| format!("reading the manifests in {}", dir.display()))?;
    let policies = Policies::new(&args.dir.root_namespace, manifests.peer_authentications());
    print_warnings(&policies, args.namespace.as_deref());
    let pods: Vec<_> = manifests
        .pods()
        .into_iter()
        .filter(|p| {
            args.namespace
                .as_deref()
                .is_none_or(|want| want == p.namespace)
        })
        .collect();
    let rows = rows(&policies, pods);
    if rows.is_empty() {
        match &args.namespace {
            Some(ns) => eprintln!("no pods in namespace {ns} in {}", dir.display()),
            None => eprintln!("no pods in {}", dir.display()),
        }
    }
    print_rows(args.output, &rows)
}

/// One row per pod of the policy report (sorted by namespace and name) with
/// its effective mode; per-pod warnings go to stderr.
pub(super) fn rows(policies: &Policies, pods: Vec<Pod>) -> Vec<StatusRow> {
    let report = report(policies, pods);
    for line in report.iter().flat_map(PodMode::warning_lines) {
        eprintln!("warning: {line}");
    }
    report
        .into_iter()
        .map(|PodMode { pod, effective, .. }| StatusRow {
            namespace: pod.namespace,
            pod: pod.name,
            service_account: pod.service_account,
            node: pod.node_name,
            mode: effective.mode,
            ports: effective.ports,
            source: effective.source.to_string(),
            ports_source: effective.ports_source.map(|s| s.to_string()),
        })
        .collect()
}

/// Prints `rows` to stdout as a table or JSON lines.
pub(super) fn print_rows(output: OutputFormat, rows: &[StatusRow]) -> anyhow::Result<()> {
    let text = match output {
        OutputFormat::Table => render_table(rows),
        OutputFormat::Json => render_json(rows)?,
    };
    print!("{text}");
    Ok(())
}

/// Prints the warnings that concern `namespace` (all of them without one) to stderr.
pub(super) fn print_warnings(policies: &Policies, namespace: Option<&str>) {
    for warning in policies.warnings() {
        let relevant = match (warning, namespace) {
            (
                PolicyWarning::Shadowed {
                    scope: Scope::Namespace { namespace: ns },
                    ..
                },
                Some(want),
            ) => ns == want,
            _ => true,
        };
        if relevant {
            eprintln!("warning: {warning}");
        }
    }
}

const COLUMNS: [&str; 7] = [
    "NAMESPACE",
    "POD",
    "SERVICE-ACCOUNT",
    "NODE",
    "MODE",
    "PORTS",
    "SOURCE",
];

fn render_table(rows: &[StatusRow]) -> String {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let ports = r
                .ports
                .iter()
                .map(|(port, mode)| format!("{port}={mode}"))
                .collect::<Vec<_>>()
                .join(",");
            let source = match &r.ports_source {
                Some(ports_source) if *ports_source != r.source => {
                    format!("{} (ports: {ports_source})", r.source)
                }
                _ => r.source.clone(),
            };
            [
                r.namespace.clone(),
                r.pod.clone(),
                r.service_account.clone(),
                r.node.clone().unwrap_or_else(|| "-".into()),
                r.mode.to_string(),
                if ports.is_empty() { "-".into() } else { ports },
                source,
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(COLUMNS.map(str::to_owned)).chain(cells) {
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            // Writing to a String cannot fail.
            let _ = if i + 1 == COLUMNS.len() {
                writeln!(out, "{cell}")
            } else {
                write!(out, "{cell:<width$}  ")
            };
        }
    }
    out
}

/// JSON lines, as `meshid audit list -o json`.
fn render_json(rows: &[StatusRow]) -> anyhow::Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&serde_json::to_string(row)?);
        out.push('\n');
    }
    Ok(out)
}
