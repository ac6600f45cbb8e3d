//! The inputs, sorted and indexed for lookups. Sorting here is what makes
//! translate independent of input order.

use std::collections::BTreeMap;

use crds::{AiProvider, ApiRoute, Subscription, Tenant};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::Inputs;

/// "Older wins" order: creation time (objects without one first), then
/// namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    created: Option<i64>,
    namespace: String,
    name: String,
}

impl Age {
    pub fn of(meta: &ObjectMeta) -> Self {
        Age {
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

type Key<'a> = (&'a str, &'a str);

fn key(meta: &ObjectMeta) -> Key<'_> {
    (meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

/// Sorts objects by (namespace, name) and keeps one per key. Of duplicates,
/// the one whose JSON sorts first is kept, so the choice does not depend
/// on input order.
fn sorted<T: Serialize>(items: &[T], meta: impl Fn(&T) -> &ObjectMeta) -> Vec<&T> {
    let mut refs: Vec<&T> = items.iter().collect();
    refs.sort_by(|a, b| key(meta(a)).cmp(&key(meta(b))));
    let mut out: Vec<&T> = Vec::with_capacity(refs.len());
    for item in refs {
        match out.last_mut() {
            Some(last) if key(meta(last)) == key(meta(item)) => {
                let (a, b) = (serde_json::to_string(*last).ok(), serde_json::to_string(item).ok());
                if b < a {
                    *last = item;
                }
            }
            _ => out.push(item),
        }
    }
    out
}

/// Sorted inputs and lookup tables.
pub struct Index<'a> {
    pub tenants: Vec<&'a Tenant>,
    pub routes: Vec<&'a ApiRoute>,
    pub subscriptions: Vec<&'a Subscription>,
    pub providers: Vec<&'a AiProvider>,
    pub ingresses: Vec<&'a Ingress>,
    pub ingress_classes: &'a [k8s_openapi::api::networking::v1::IngressClass],
    pub secrets: Vec<&'a Secret>,
    services: BTreeMap<Key<'a>, &'a Service>,
    slices: BTreeMap<Key<'a>, Vec<&'a EndpointSlice>>,
    secrets_by_key: BTreeMap<Key<'a>, &'a Secret>,
    config_maps: BTreeMap<Key<'a>, &'a ConfigMap>,
}

impl<'a> Index<'a> {
    pub fn new(inputs: &'a Inputs) -> Self {
        let mut tenants = sorted(&inputs.tenants, |t| &t.metadata);
        tenants.sort_by_cached_key(|t| Age::of(&t.metadata));
        let mut routes: Vec<&ApiRoute> = sorted(&inputs.routes, |r| &r.metadata).into_iter().map(|r| &**r).collect();
        routes.sort_by_cached_key(|r| Age::of(&r.metadata));
        let secrets = sorted(&inputs.secrets, |s| &s.metadata);
        let mut slices: BTreeMap<Key<'a>, Vec<&'a EndpointSlice>> = BTreeMap::new();
        for slice in sorted(&inputs.endpoint_slices, |s| &s.metadata) {
            let service = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
            if let Some(service) = service {
                slices.entry((key(&slice.metadata).0, service.as_str())).or_default().push(slice);
            }
        }
        Index {
            tenants,
            routes,
            subscriptions: sorted(&inputs.subscriptions, |s| &s.metadata),
            providers: sorted(&inputs.providers, |p| &p.metadata),
            ingresses: sorted(&inputs.ingresses, |i| &i.metadata),
            ingress_classes: &inputs.ingress_classes,
            services: sorted(&inputs.services, |s| &s.metadata).into_iter().map(|s| (key(&s.metadata), s)).collect(),
            slices,
            secrets_by_key: secrets.iter().map(|s| (key(&s.metadata), *s)).collect(),
            secrets,
            config_maps: sorted(&inputs.config_maps, |c| &c.metadata)
                .into_iter()
                .map(|c| (key(&c.metadata), c))
                .collect(),
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(&(namespace, name)).copied()
    }

    pub fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<&'a EndpointSlice> {
        self.slices.get(&(namespace, service)).cloned().unwrap_or_default()
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.secrets_by_key.get(&(namespace, name)).copied()
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&'a ConfigMap> {
        self.config_maps.get(&(namespace, name)).copied()
    }
}

/// The UTF-8 value of a Secret key, from `data` or (as in files applied by
/// hand) `stringData`, which wins as the API server would make it.
pub fn secret_value(secret: &Secret, field: &str) -> Option<String> {
    if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(field)) {
        return Some(value.clone());
    }
    let bytes = secret.data.as_ref()?.get(field)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// `namespace` and `name` of an object.
pub fn names(meta: &ObjectMeta) -> (&str, &str) {
    key(meta)
}
