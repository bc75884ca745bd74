//! Tests of the kube platform against the mock API server ([`cluster`] plays
//! the cluster behind it).

mod cluster;
mod informers;
mod policy_write;
mod tokens;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use self::cluster::FakeCluster;
use super::{KubeConfig, KubePlatform, TokenVerifier};
use crate::platform::{PlatformError, VerifyFuture};
use crate::test_helpers::kube_api::MockApi;

/// A verifier that refuses every token (for tests that do not verify tokens).
struct NoTokens;

impl TokenVerifier for NoTokens {
    fn verify<'a>(&'a self, _token: &'a str, _audiences: &'a [String]) -> VerifyFuture<'a> {
        Box::pin(async { Err(PlatformError::invalid_token("no tokens in this test")) })
    }
}

/// A platform running against `cluster`; stops when dropped.
struct Running {
    platform: Arc<KubePlatform>,
    api: MockApi,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start(cluster: &FakeCluster, config: KubeConfig) -> Running {
    start_with(cluster, config, Arc::new(NoTokens))
}

fn start_with(
    cluster: &FakeCluster,
    config: KubeConfig,
    verifier: Arc<dyn TokenVerifier>,
) -> Running {
    let (client, api) = cluster.serve();
    let platform = KubePlatform::new(client, config, verifier).expect("config");
    let cancel = CancellationToken::new();
    tokio::spawn(Arc::clone(&platform).run(cancel.clone()));
    Running {
        platform,
        api,
        cancel,
    }
}

#[test]
fn empty_node_name_is_refused_naming_the_flag() {
    let config = KubeConfig {
        node_name: Some(" ".into()),
        ..KubeConfig::default()
    };
    assert_eq!(config.validate().expect_err("empty").flag, "node-name");
}

#[test]
fn token_verification_values_are_tokenreview_and_jwks() {
    use super::TokenVerification;
    use clap::ValueEnum;
    let names: Vec<String> = TokenVerification::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|v| v.get_name().to_owned())
        .collect();
    assert_eq!(names, ["tokenreview", "jwks"]);
    assert!(TokenVerification::Jwks.needs_bound_pod_check());
    assert!(!TokenVerification::TokenReview.needs_bound_pod_check());
}
