//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered from the
//! tokens the test registered, in the shape the API server answers.

use std::collections::BTreeMap;

use axum::response::Response;
use serde_json::{json, Value};

use super::{json_response, lock, Shared};

/// What TokenReview answers for one token.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    username: String,
    audiences: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

impl TokenIdentity {
    /// `system:serviceaccount:<namespace>:<name>`, audience `istio-ca`, bound to nothing.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            audiences: vec!["istio-ca".to_owned()],
            extra: BTreeMap::new(),
        }
    }

    /// Bound to pod `name` (uid) on `node`, as a projected token is.
    pub fn bound_to(mut self, pod: &str, pod_uid: &str, node: &str) -> Self {
        let prefix = "authentication.kubernetes.io";
        for (key, value) in [("pod-name", pod), ("pod-uid", pod_uid), ("node-name", node)] {
            self.extra
                .insert(format!("{prefix}/{key}"), vec![value.to_owned()]);
        }
        self
    }
}

/// TokenReview: the registered identity when the token is known and one of
/// the requested audiences is the token's; otherwise `authenticated: false`
/// with an `error`, as the API server answers a bad token.
pub(super) fn token_review(shared: &Shared, review: Value) -> Response {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let identity = lock(&shared.tokens).get(token).cloned();
    let status = match identity {
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
        Some(id) => {
            let granted: Vec<&String> =
                id.audiences.iter().filter(|a| wanted.contains(a)).collect();
            if granted.is_empty() {
                json!({"user": {}, "error": format!("token audiences {:?} is invalid for the target audiences {wanted:?}", id.audiences)})
            } else {
                let namespace = id.username.split(':').nth(2).unwrap_or_default();
                json!({
                    "authenticated": true,
                    "user": {
                        "username": id.username,
                        "uid": format!("uid-sa-{}", id.username),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                        "extra": id.extra,
                    },
                    "audiences": granted,
                })
            }
        }
    };
    json_response(
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        }),
    )
}
