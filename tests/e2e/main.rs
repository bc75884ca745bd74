//! End-to-end tests: the real `meshid` binary as child processes on
//! 127.0.0.1, called over TLS with clients generated from `proto/`.
//! One test binary with modules, so there is one link step.

#![allow(clippy::unwrap_used)]
// Child processes live on the real clock; the ban on real sleeps and
// instants (clippy.toml) is for the library, whose time tests can pause.
#![allow(clippy::disallowed_methods)]

mod agent;
mod agent_sds;
mod audit_log;
mod audit_postgres;
mod ca_issue;
mod ca_refusals;
mod ca_transport;
mod capture;
mod capture_init;
mod grpc_interop;
mod injector;
mod kube;
mod mtls_cli;
mod policy_push;
mod proxy;
mod support;
mod up;
