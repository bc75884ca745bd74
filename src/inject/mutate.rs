//! The mutation of one pod template (pure). It works on JSON, not on typed
//! Kubernetes structs, so that fields this build does not know (a newer API
//! server's) pass through untouched: the answer's JSONPatch only ever adds.
//!
//! What an injected pod holds (DESIGN.md "How the parts become a mesh"):
//! - init container `meshid-init` first: `meshid-proxy init` with only
//!   NET_ADMIN and NET_RAW (the capture rules, from the pod's
//!   `traffic.meshid.io/*` annotations);
//! - native sidecar `meshid-proxy` next (an init container with
//!   `restartPolicy: Always`, Kubernetes ≥ 1.29): `meshid-proxy --capture` as
//!   the proxy uid, non-root, read-only root, no capabilities; its startup
//!   probe holds the application back until it has its certificate, its
//!   policy and the destination map;
//! - the agent's socket directory (hostPath, read-only) in the sidecar and in
//!   every application container, with `SPIFFE_ENDPOINT_SOCKET`;
//! - a projected service-account token for the sidecar;
//! - the label `security.meshid.io/tlsMode: meshid` (automatic mTLS reads it).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::decide::{decide, pointer, Decision, NamespaceInjection};
use super::{
    InjectConfig, EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_INBOUND_PORTS, SKIPPED_ANNOTATION, STATUS_ANNOTATION,
};
use crate::netlist::{BadCidr, BadPort, CidrList, InboundPorts, PortList};

/// The label automatic mTLS reads (`platform::TLS_MODE_LABEL`).
pub const TLS_MODE_LABEL: &str = "security.meshid.io/tlsMode";
/// Its value on an injected pod.
pub const TLS_MODE_MESHID: &str = "meshid";
/// The init container's preferred name.
pub const INIT_CONTAINER: &str = "meshid-init";
/// The sidecar's preferred name.
pub const PROXY_CONTAINER: &str = "meshid-proxy";
/// The socket volume's preferred name.
pub const SOCKET_VOLUME: &str = "meshid-agent-socket";
/// The token volume's preferred name.
pub const TOKEN_VOLUME: &str = "meshid-token";
/// Where the sidecar's token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/meshid/tokens";
/// The environment variable SPIFFE clients read.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why a pod is refused admission. Each message names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// A port-list annotation has a bad entry.
    #[error("annotation {annotation}: {source}")]
    BadPorts {
        /// The annotation.
        annotation: &'static str,
        /// The entry and what is wrong with it.
        source: BadPort,
    },
    /// A CIDR-list annotation has a bad entry.
    #[error("annotation {annotation}: {source}")]
    BadCidrs {
        /// The annotation.
        annotation: &'static str,
        /// The entry.
        source: BadCidr,
    },
    /// An annotation that must be a string is not.
    #[error("annotation {annotation} must be a string")]
    NotAString {
        /// The annotation.
        annotation: &'static str,
    },
    /// `sidecar.meshid.io/inject` is neither "true" nor "false".
    #[error("sidecar.meshid.io/inject is {value:?}; it must be \"true\" or \"false\"")]
    BadInjectValue {
        /// The value found.
        value: String,
    },
    /// A container of the pod would run as the proxy's uid, whose traffic is
    /// never captured: it would bypass the mesh (and STRICT).
    #[error("container {container:?} runs as uid {uid}, the proxy's uid, whose traffic is never captured: it would bypass the mesh; run it as another uid, or annotate the pod sidecar.meshid.io/inject: \"false\"")]
    RunsAsProxyUid {
        /// The container.
        container: String,
        /// The uid.
        uid: u32,
    },
    /// The object is not a pod template (no object `spec`, lists that are not lists).
    #[error("not a pod template: {0}")]
    Malformed(String),
}

/// What happened to a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy was added.
    Injected,
    /// Left alone (the reason is also in `sidecar.meshid.io/skipped`).
    Skipped(String),
}

/// Injects the pod template `template` (an object with `metadata` and
/// `spec`: a Pod, or a workload's `spec.template`) in place, or records why
/// not. On a denial nothing has been changed.
pub fn inject_template(
    template: &mut Value,
    namespace: &str,
    ns_label: &NamespaceInjection,
    cfg: &InjectConfig,
) -> Result<Outcome, Denied> {
    let object = template
        .as_object_mut()
        .ok_or_else(|| Denied::Malformed("the object is not a JSON object".to_owned()))?;
    if !object.get("spec").is_some_and(Value::is_object) {
        return Err(Denied::Malformed("it has no spec object".to_owned()));
    }
    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if !metadata.is_object() {
        return Err(Denied::Malformed("metadata is not an object".to_owned()));
    }
    let spec = &object["spec"];
    for list in ["containers", "initContainers", "volumes"] {
        if spec
            .get(list)
            .is_some_and(|l| !l.is_array() && !l.is_null())
        {
            return Err(Denied::Malformed(format!("spec.{list} is not a list")));
        }
    }
    match decide(&metadata, spec, namespace, ns_label, cfg)? {
        Decision::AlreadyInjected => Ok(Outcome::Skipped("already injected by meshid".to_owned())),
        Decision::Skip(why) => {
            set_string(
                object,
                &["metadata", "annotations"],
                SKIPPED_ANNOTATION,
                &why,
            );
            Ok(Outcome::Skipped(why))
        }
        Decision::Inject => {
            check_uids(spec, cfg.proxy_uid)?;
            let capture = CaptureAnnotations::read(&metadata)?;
            add_proxy(object, &capture, cfg);
            Ok(Outcome::Injected)
        }
    }
}

/// The `traffic.meshid.io/*` annotations, parsed (each bad entry named).
#[derive(Debug, Clone, Default)]
struct CaptureAnnotations {
    include_inbound: Option<InboundPorts>,
    exclude_inbound: Option<PortList>,
    exclude_outbound: Option<PortList>,
    exclude_outbound_cidrs: Option<CidrList>,
}

impl CaptureAnnotations {
    fn read(metadata: &Value) -> Result<Self, Denied> {
        let text = |annotation: &'static str| -> Result<Option<String>, Denied> {
            match metadata.pointer(&pointer(&["annotations", annotation])) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Denied::NotAString { annotation }),
            }
        };
        let ports = |annotation| -> Result<Option<PortList>, Denied> {
            text(annotation)?
                .map(|s| {
                    s.parse()
                        .map_err(|source| Denied::BadPorts { annotation, source })
                })
                .transpose()
        };
        Ok(Self {
            include_inbound: text(INCLUDE_INBOUND_PORTS)?
                .map(|s| {
                    s.parse().map_err(|source| Denied::BadPorts {
                        annotation: INCLUDE_INBOUND_PORTS,
                        source,
                    })
                })
                .transpose()?,
            exclude_inbound: ports(EXCLUDE_INBOUND_PORTS)?,
            exclude_outbound: ports(EXCLUDE_OUTBOUND_PORTS)?,
            exclude_outbound_cidrs: text(EXCLUDE_OUTBOUND_IP_RANGES)?
                .map(|s| {
                    s.parse().map_err(|source| Denied::BadCidrs {
                        annotation: EXCLUDE_OUTBOUND_IP_RANGES,
                        source,
                    })
                })
                .transpose()?,
        })
    }
}

/// Rule: no container of the pod may run as the proxy's uid (netfilter
/// exempts that uid's traffic from capture, so it would bypass the mesh).
fn check_uids(spec: &Value, proxy_uid: u32) -> Result<(), Denied> {
    let uid_of = |v: &Value| {
        v.pointer("/securityContext/runAsUser")
            .and_then(Value::as_u64)
    };
    let pod_uid = uid_of(spec);
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if uid_of(c).or(pod_uid) == Some(u64::from(proxy_uid)) {
                return Err(Denied::RunsAsProxyUid {
                    container: c["name"].as_str().unwrap_or("").to_owned(),
                    uid: proxy_uid,
                });
            }
        }
    }
    Ok(())
}

/// Adds the init container, the sidecar, the volumes, the mounts and
/// environment of the application containers, the label and the status.
fn add_proxy(object: &mut Map<String, Value>, capture: &CaptureAnnotations, cfg: &InjectConfig) {
    let spec = &object["spec"];
    let mut container_names: BTreeSet<String> =
        ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
    let mut volume_names: BTreeSet<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let init_name = free_name(INIT_CONTAINER, &mut container_names);
    let proxy_name = free_name(PROXY_CONTAINER, &mut container_names);
    let socket_volume = free_name(SOCKET_VOLUME, &mut volume_names);
    let token_volume = free_name(TOKEN_VOLUME, &mut volume_names);

    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    // The application's containers (its own init containers too) reach the
    // agent's Workload API through the socket.
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                add_socket(c, &socket_volume, cfg);
            }
        }
    }
    let init = init_container(&init_name, capture, cfg);
    let proxy = proxy_container(&proxy_name, &socket_volume, &token_volume, cfg);
    let inits = list_mut(spec, "initContainers");
    inits.insert(0, proxy);
    inits.insert(0, init);
    let volumes = list_mut(spec, "volumes");
    volumes.push(json!({
        "name": socket_volume,
        "hostPath": {"path": cfg.agent_socket_dir, "type": "DirectoryOrCreate"},
    }));
    volumes.push(json!({
        "name": token_volume,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.token_audience,
            "expirationSeconds": cfg.token_expiration_seconds,
            "path": "meshid-token",
        }}]},
    }));
    set_string(
        object,
        &["metadata", "labels"],
        TLS_MODE_LABEL,
        TLS_MODE_MESHID,
    );
    let status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "initContainers": [init_name, proxy_name],
        "volumes": [socket_volume, token_volume],
    });
    set_string(
        object,
        &["metadata", "annotations"],
        STATUS_ANNOTATION,
        &status.to_string(),
    );
    if let Some(annotations) = object
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        annotations.remove(SKIPPED_ANNOTATION);
    }
}

/// `preferred`, or `preferred-2`, `-3`… if the pod already uses the name.
fn free_name(preferred: &str, taken: &mut BTreeSet<String>) -> String {
    let name = (1..)
        .map(|i| {
            if i == 1 {
                preferred.to_owned()
            } else {
                format!("{preferred}-{i}")
            }
        })
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| preferred.to_owned());
    taken.insert(name.clone());
    name
}

/// The socket mount (unless something is mounted there already) and
/// `SPIFFE_ENDPOINT_SOCKET` (unless the container sets it).
fn add_socket(container: &mut Map<String, Value>, volume: &str, cfg: &InjectConfig) {
    let dir = cfg.agent_socket_dir.as_str();
    let mounts = list_mut(container, "volumeMounts");
    if !mounts.iter().any(|m| m["mountPath"].as_str() == Some(dir)) {
        mounts.push(json!({"name": volume, "mountPath": dir, "readOnly": true}));
    }
    let env = list_mut(container, "env");
    if !env.iter().any(|e| e["name"] == SPIFFE_ENDPOINT_SOCKET) {
        env.push(json!({
            "name": SPIFFE_ENDPOINT_SOCKET,
            "value": format!("unix://{}", cfg.agent_socket_path()),
        }));
    }
}

fn init_container(name: &str, capture: &CaptureAnnotations, cfg: &InjectConfig) -> Value {
    let mut args = vec![
        "init".to_owned(),
        format!("--proxy-uid={}", cfg.proxy_uid),
        format!("--outbound-capture-port={}", cfg.outbound_capture_port),
        format!("--inbound-capture-port={}", cfg.inbound_capture_port),
        format!("--proxy-ports={},{}", cfg.hbone_port, cfg.health_port),
    ];
    if let Some(v) = &capture.include_inbound {
        args.push(format!("--include-inbound-ports={v}"));
    }
    if let Some(v) = &capture.exclude_inbound {
        args.push(format!("--exclude-inbound-ports={v}"));
    }
    if let Some(v) = &capture.exclude_outbound {
        args.push(format!("--exclude-outbound-ports={v}"));
    }
    if let Some(v) = &capture.exclude_outbound_cidrs {
        args.push(format!("--exclude-outbound-cidrs={v}"));
    }
    let mut c = json!({
        "name": name,
        "image": cfg.proxy_image,
        "command": ["meshid-proxy"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        // Rule: the only privilege in an injected pod, for one short run:
        // root with NET_ADMIN and NET_RAW (netfilter), nothing else. The root
        // file system stays writable for iptables' lock file (/run/xtables.lock).
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    });
    set_pull_policy(&mut c, cfg);
    c
}

fn proxy_container(
    name: &str,
    socket_volume: &str,
    token_volume: &str,
    cfg: &InjectConfig,
) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": cfg.health_port},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    let mut c = json!({
        "name": name,
        "image": cfg.proxy_image,
        "command": ["meshid-proxy"],
        "args": [
            "--capture",
            format!("--outbound-capture=0.0.0.0:{}", cfg.outbound_capture_port),
            format!("--inbound-capture=0.0.0.0:{}", cfg.inbound_capture_port),
        ],
        // A native sidecar: started before the application, stopped after it.
        "restartPolicy": "Always",
        "env": [
            {"name": "MESHID_AGENT_SOCKET", "value": cfg.agent_socket_path()},
            {"name": "MESHID_TOKEN_FILE", "value": format!("{TOKEN_DIR}/meshid-token")},
            {"name": "MESHID_METRICS_LISTEN", "value": format!("0.0.0.0:{}", cfg.health_port)},
        ],
        "ports": [
            {"name": "meshid-hbone", "containerPort": cfg.hbone_port, "protocol": "TCP"},
            {"name": "meshid-health", "containerPort": cfg.health_port, "protocol": "TCP"},
        ],
        // The application starts only once this succeeds: the proxy holds its
        // certificate, its policy and the destination map (/readyz).
        "startupProbe": probe("/readyz", 1, 300),
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": {
            "requests": {"cpu": cfg.proxy_cpu_request, "memory": cfg.proxy_memory_request},
            "limits": {"memory": cfg.proxy_memory_limit},
        },
        "securityContext": {
            "runAsUser": cfg.proxy_uid,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": socket_volume, "mountPath": cfg.agent_socket_dir, "readOnly": true},
            {"name": token_volume, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    });
    set_pull_policy(&mut c, cfg);
    c
}

fn set_pull_policy(container: &mut Value, cfg: &InjectConfig) {
    if let (Some(policy), Some(c)) = (&cfg.image_pull_policy, container.as_object_mut()) {
        c.insert("imagePullPolicy".to_owned(), Value::String(policy.clone()));
    }
}

/// The list at `key`, created (or replacing a null) if absent.
fn list_mut<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = object.entry(key.to_owned()).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    match slot {
        Value::Array(list) => list,
        _ => unreachable!("just made an array"),
    }
}

/// Sets `object[path…][key] = value`, creating the maps on the way.
fn set_string(object: &mut Map<String, Value>, path: &[&str], key: &str, value: &str) {
    let mut here = object;
    for part in path {
        let slot = here.entry((*part).to_owned()).or_insert_with(|| json!({}));
        if !slot.is_object() {
            *slot = json!({});
        }
        here = match slot {
            Value::Object(map) => map,
            _ => unreachable!("just made an object"),
        };
    }
    here.insert(key.to_owned(), Value::String(value.to_owned()));
}

#[cfg(test)]
mod tests;
