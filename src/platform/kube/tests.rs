//! Tests of the kube platform against the mock API server.
