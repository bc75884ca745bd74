//! The JSONPatch (RFC 6902) between a pod and its injected self, written
//! for what the mutation does, so the patch says it plainly: keys added to
//! objects, elements inserted before or appended after a list's own, a key
//! removed. A list changed any other way is replaced whole (never by
//! index-wise edits that would rewrite the pod's own containers).

use serde_json::{json, Value};

/// The operations that turn `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(&mut String::new(), before, after, &mut ops);
    ops
}

fn walk(path: &mut String, before: &Value, after: &Value, ops: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
            }
            for (key, new) in a {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match b.get(key) {
                    None => ops.push(json!({"op": "add", "path": path.as_str(), "value": new})),
                    Some(old) if old != new => walk(path, old, new, ops),
                    Some(_) => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() >= b.len() => {
            let added = a.len() - b.len();
            if a[added..] == b[..] {
                // Inserted before the list's own elements, in order.
                for (i, new) in a[..added].iter().enumerate() {
                    ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": new}));
                }
            } else if a[..b.len()] == b[..] {
                for new in &a[b.len()..] {
                    ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": new}));
                }
            } else if added == 0 {
                for (i, (old, new)) in b.iter().zip(a).enumerate() {
                    if old != new {
                        let len = path.len();
                        path.push_str(&format!("/{i}"));
                        walk(path, old, new, ops);
                        path.truncate(len);
                    }
                }
            } else {
                ops.push(json!({"op": "replace", "path": path.as_str(), "value": after}));
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": after})),
    }
}

/// A JSON pointer segment (RFC 6901): `~` → `~0`, `/` → `~1`.
fn escape(key: &str) -> String {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1")
    } else {
        key.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mut doc: Value, ops: &[Value]) -> Value {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn the_patch_turns_before_into_after_and_says_what_was_added() {
        let before = json!({
            "metadata": {"labels": {"app": "a"}, "annotations": {"x/y": "1", "sidecar.meshid.io/skipped": "no"}},
            "spec": {"initContainers": [{"name": "own"}], "containers": [{"name": "c", "env": []}], "volumes": [{"name": "v"}], "n": 1},
        });
        let after = json!({
            "metadata": {"labels": {"app": "a", "security.meshid.io/tlsMode": "meshid"}, "annotations": {"x/y": "1"}},
            "spec": {
                "initContainers": [{"name": "meshid-init"}, {"name": "meshid-proxy"}, {"name": "own"}],
                "containers": [{"name": "c", "env": [{"name": "E"}]}],
                "volumes": [{"name": "v"}, {"name": "w"}],
                "n": 2,
            },
        });
        let ops = diff(&before, &after);
        assert_eq!(apply(before.clone(), &ops), after);
        let paths: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o["op"].as_str().unwrap(), o["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            [
                ("remove", "/metadata/annotations/sidecar.meshid.io~1skipped"),
                ("add", "/metadata/labels/security.meshid.io~1tlsMode"),
                ("add", "/spec/containers/0/env/0"),
                ("add", "/spec/initContainers/0"),
                ("add", "/spec/initContainers/1"),
                ("replace", "/spec/n"),
                ("add", "/spec/volumes/-"),
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn a_list_changed_otherwise_is_replaced_whole() {
        for (before, after) in [
            (json!({"l": [1, 2, 3]}), json!({"l": [3, 1]})),
            (json!({"l": [1, 2]}), json!({"l": [0, 2, 9]})),
            (json!({"l": [1]}), json!({"l": {"a": 1}})),
            (json!(1), json!("x")),
        ] {
            let ops = diff(&before, &after);
            assert_eq!(apply(before.clone(), &ops), after, "{ops:?}");
        }
    }
}
