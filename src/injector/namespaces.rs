//! The `meshid.io/inject` label of every namespace, from one watch.
//!
//! The webhook's `namespaceSelector` already keeps other namespaces' pods
//! away; the injector reads the label itself to honour `disabled` over a
//! pod's own wish, and to say why it left a pod alone. Until the first list
//! has arrived the injector is not ready (a pod in an enabled namespace must
//! never be skipped for want of the label).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

use crate::inject::server::NamespaceLabels;
use crate::inject::{NamespaceInjection, NAMESPACE_LABEL};
use crate::platform::kube::backoff::SteadyBackoff;
use crate::shutdown::Shutdown;

/// A watched view of the namespaces' labels.
#[derive(Clone)]
pub struct NamespaceWatch {
    store: Store<Namespace>,
}

impl NamespaceWatch {
    /// Starts the watch (until shutdown).
    pub fn start(client: kube::Client, shutdown: &Shutdown) -> Self {
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher::watcher(Api::<Namespace>::all(client), watcher::Config::default())
                .backoff(SteadyBackoff::default()),
        );
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = stop.triggered() => return,
                    item = stream.next() => match item {
                        None => return,
                        Some(Err(e)) => tracing::warn!(error = %e, "namespace watch"),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
        Self { store }
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        // The store is ready once the watcher's first list was applied.
        self.store.wait_until_ready().now_or_never().is_some()
    }

    /// The lookup the server asks. A label value other than `enabled` or
    /// `disabled` is logged and treated as no label.
    pub fn labels(&self) -> NamespaceLabels {
        let store = self.store.clone();
        Arc::new(move |name: &str| {
            let value = store.get(&ObjectRef::new(name)).and_then(|ns| {
                ns.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(NAMESPACE_LABEL).cloned())
            });
            let label = NamespaceInjection::from_label(value.as_deref());
            if let NamespaceInjection::Other(value) = &label {
                tracing::warn!(namespace = name, value = %value, "namespace label {NAMESPACE_LABEL} is neither enabled nor disabled; ignored");
            }
            label
        })
    }
}

use futures::FutureExt as _;
