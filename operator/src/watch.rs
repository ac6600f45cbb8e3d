//! The operator's view of the cluster: one reflector per kind translate
//! reads, each a local cache kept current by a watch, and one signal that
//! something changed.
//!
//! Secrets are never watched cluster-wide: only app API keys (label
//! `sluice.dev/app`) and TLS certificates (field selector
//! `type=kubernetes.io/tls`), the two kinds of Secret the compiler reads in
//! bulk. ConfigMaps are watched only with the label `sluice.dev/config`.
//! NB: a route's JWKS Secret, an upstream CA, or a provider's credential
//! Secret that is neither of those must carry one of these labels to be seen
//! (`docs/architecture.md`, "Operator"); until it does, the object that
//! names it reports `ResolvedRefs=False` and is not served.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use crds::{AiProvider, ApiRoute, Subscription, Tenant};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use snapshot::Inputs;
use tokio::sync::Notify;

/// The label that makes a ConfigMap (an OpenAPI document, a CA bundle) or
/// a Secret other than an API key or a TLS certificate visible to Sluice.
pub const CONFIG_LABEL: &str = "sluice.dev/config";

/// Every cache the compiler reads.
#[derive(Clone)]
pub struct Stores {
    tenants: Store<Tenant>,
    routes: Store<ApiRoute>,
    subscriptions: Store<Subscription>,
    providers: Store<AiProvider>,
    ingresses: Store<Ingress>,
    ingress_classes: Store<IngressClass>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    key_secrets: Store<Secret>,
    tls_secrets: Store<Secret>,
    labelled_secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("routes", &self.routes.len()).finish_non_exhaustive()
    }
}

impl Stores {
    /// Starts every watch (each on its own task, restarting with back-off
    /// on errors); `changed` is notified on every event.
    pub fn start(client: &kube::Client, changed: &Arc<Notify>) -> Stores {
        let all = watcher::Config::default;
        Stores {
            tenants: reflect(Api::all(client.clone()), all(), changed),
            routes: reflect(Api::all(client.clone()), all(), changed),
            subscriptions: reflect(Api::all(client.clone()), all(), changed),
            providers: reflect(Api::all(client.clone()), all(), changed),
            ingresses: reflect(Api::all(client.clone()), all(), changed),
            ingress_classes: reflect(Api::all(client.clone()), all(), changed),
            services: reflect(Api::all(client.clone()), all(), changed),
            endpoint_slices: reflect(
                Api::all(client.clone()),
                // Only slices that belong to a Service.
                all().labels("kubernetes.io/service-name"),
                changed,
            ),
            key_secrets: reflect(
                Api::all(client.clone()),
                all().labels(snapshot::api_keys::APP_LABEL).fields("type=sluice.dev/api-key"),
                changed,
            ),
            tls_secrets: reflect(Api::all(client.clone()), all().fields("type=kubernetes.io/tls"), changed),
            labelled_secrets: reflect(Api::all(client.clone()), all().labels(CONFIG_LABEL), changed),
            config_maps: reflect(Api::all(client.clone()), all().labels(CONFIG_LABEL), changed),
        }
    }

    /// Waits until every cache has listed once.
    pub async fn ready(&self) {
        // NB: a writer is only dropped with its task, which runs forever.
        let _ = futures::join!(
            self.tenants.wait_until_ready(),
            self.routes.wait_until_ready(),
            self.subscriptions.wait_until_ready(),
            self.providers.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.ingress_classes.wait_until_ready(),
            self.services.wait_until_ready(),
            self.endpoint_slices.wait_until_ready(),
            self.key_secrets.wait_until_ready(),
            self.tls_secrets.wait_until_ready(),
            self.labelled_secrets.wait_until_ready(),
            self.config_maps.wait_until_ready(),
        );
    }

    /// What the caches hold now, as translate's inputs.
    pub fn inputs(&self) -> Inputs {
        fn all<K: Clone + reflector::Lookup>(store: &Store<K>) -> Vec<K>
        where
            K::DynamicType: Eq + Hash + Clone,
        {
            store.state().iter().map(|object| (**object).clone()).collect()
        }
        let mut secrets = all(&self.key_secrets);
        secrets.extend(all(&self.tls_secrets));
        secrets.extend(all(&self.labelled_secrets));
        // A Secret both labelled and of a watched type is listed twice.
        secrets
            .sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
        secrets.dedup_by(|a, b| a.metadata.namespace == b.metadata.namespace && a.metadata.name == b.metadata.name);
        Inputs {
            tenants: all(&self.tenants),
            routes: all(&self.routes).into_iter().map(Box::new).collect(),
            subscriptions: all(&self.subscriptions),
            providers: all(&self.providers),
            ingresses: all(&self.ingresses),
            ingress_classes: all(&self.ingress_classes),
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            secrets,
            config_maps: all(&self.config_maps),
            ages: snapshot::AgeSource::CreationTime,
        }
    }

    /// Every cached Subscription.
    pub fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions.state()
    }

    /// Every cached API key Secret.
    pub fn key_secrets(&self) -> Vec<Arc<Secret>> {
        self.key_secrets.state()
    }

    /// The cached ApiRoute `namespace/name`.
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<ApiRoute>> {
        self.routes.get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The cached Tenant `name`.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(&reflector::ObjectRef::new(name))
    }

    /// The cached Subscription `namespace/name`.
    pub fn subscription(&self, namespace: &str, name: &str) -> Option<Arc<Subscription>> {
        self.subscriptions.get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The cached AiProvider `namespace/name`.
    pub fn provider(&self, namespace: &str, name: &str) -> Option<Arc<AiProvider>> {
        self.providers.get(&reflector::ObjectRef::new(name).within(namespace))
    }
}

/// A reflector over `api` on its own task: the store it fills.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let changed = changed.clone();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    tokio::spawn(async move {
        // NB: the watcher relists and resumes by itself; the back-off keeps
        // a failing API server from being hammered.
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => crate::say!("watch {kind}: {error} (retrying)"),
            }
        }
    });
    store
}
