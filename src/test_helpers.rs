//! Test and bench support (feature `testing`): [`calls`] (a call counter
//! to wait on instead of the clock), [`env`] (temporary data and
//! manifest directories, pods, tokens from the local issuer, CSRs, a TLS
//! client of the CA), [`in_process`] (the CA and the agent built in this
//! process by the binaries' own composition root, on `127.0.0.1:0`),
//! [`process`] (our binaries as child processes, for signals, exit codes
//! and logs), [`netns`] (network namespaces the test creates, root only), [`kube_api`] (the Kubernetes API fake) and [`bench_args`].
//!
//! The CA, the agent and the proxy are the real code paths, the tokens are
//! signed by the same issuer code `meshid token issue` uses, and the client
//! speaks TLS. The one stand-in is [`kube_api`]: a Kubernetes API server
//! (in-process for unit tests, over HTTP for e2e), since no cluster is
//! reachable from the tests.

#![allow(clippy::unwrap_used, unreachable_pub, missing_docs)]

pub mod bench_args;
pub mod calls;
pub mod env;
pub mod in_process;
pub mod kube_api;
pub mod netns;
pub mod postgres;
pub mod process;

pub use bench_args::{cli_arg, cli_flag, cli_value};
pub use calls::Calls;
pub use env::{connect, key_and_csr, request, CaClient, TestEnv};
pub use in_process::{InProcessAgent, InProcessCa};
pub use netns::NetNs;
pub use process::{
    cpu_seconds, free_port, my_unix_uid, rss_kib, run_kube, AgentProcess, CaProcess, Managed,
    ProxyProcess,
};
