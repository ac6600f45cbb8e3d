//! `Inputs`: every object translate reads, and loading them from YAML text
//! (what standalone mode, the golden tests and the examples use).

use crds::{AiProvider, ApiRoute, Subscription, Tenant};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// Every object translate reads. Order does not matter: translate sorts.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Tenants (cluster-scoped).
    pub tenants: Vec<Tenant>,
    /// ApiRoutes, each boxed: a folder or cluster may hold thousands, and a
    /// growing vector of 1.7 KB values leaves up to half of it unused.
    pub routes: Vec<Box<ApiRoute>>,
    /// Subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// AiProviders.
    pub providers: Vec<AiProvider>,
    /// Ingresses (only Sluice's are compiled: see `ingress_classes`).
    pub ingresses: Vec<Ingress>,
    /// IngressClasses: which class names are Sluice's (controller
    /// `sluice.dev/ingress-controller`), and whether one is the default.
    /// The class named `sluice` is Sluice's even without an object.
    pub ingress_classes: Vec<IngressClass>,
    /// Services referenced by routes.
    pub services: Vec<Service>,
    /// EndpointSlices of those Services.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Secrets: TLS certificates, provider credentials, app API keys.
    pub secrets: Vec<Secret>,
    /// ConfigMaps holding OpenAPI documents.
    pub config_maps: Vec<ConfigMap>,
    /// What `metadata.creationTimestamp` means when conflicts are settled
    /// ("the older wins"), so that status messages say the rule truthfully.
    pub ages: AgeSource,
}

/// Where objects' ages come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgeSource {
    /// The API server's creation times.
    #[default]
    CreationTime,
    /// When a standalone proxy first saw each object (a fresh start counts
    /// files and documents in order): the loader stamps them.
    FirstSeen,
}

/// Why a YAML document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML, or a document does not fit its kind's schema.
    #[error("{source_name}: document {document}: {message}")]
    Parse {
        /// File name (or other label) of the text.
        source_name: String,
        /// 1-based document index within the text.
        document: usize,
        /// What serde said, with the field path.
        message: String,
    },
    /// A document of a kind translate does not read.
    #[error("{source_name}: document {document}: unsupported kind {api_version}/{kind}")]
    UnsupportedKind {
        /// File name.
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

impl Inputs {
    /// Parses every document of a multi-document YAML text and adds the
    /// objects. Namespaced objects without a namespace get `default`, as
    /// `kubectl apply` would. `List` documents are unpacked. Empty
    /// documents are skipped. Returns how many objects were added; on an
    /// error nothing from this text is added.
    pub fn load_yaml(&mut self, source_name: &str, text: &str) -> Result<usize, LoadError> {
        let mut staged = Inputs::default();
        let mut count = 0;
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document_number = index + 1;
            let value = serde_yaml::Value::deserialize(document).map_err(|err| LoadError::Parse {
                source_name: source_name.to_owned(),
                document: document_number,
                message: err.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            count += staged.add_value(source_name, document_number, value)?;
        }
        self.extend(staged);
        Ok(count)
    }

    fn add_value(&mut self, source_name: &str, document: usize, value: serde_yaml::Value) -> Result<usize, LoadError> {
        let parse_err = |message: String| LoadError::Parse { source_name: source_name.to_owned(), document, message };
        let meta = TypeMeta::deserialize(&value).map_err(|err| parse_err(err.to_string()))?;
        // NB: serde_yaml forgets field paths once a document is a Value;
        // serde_path_to_error puts them back ("spec.backend.services[0].port: ...").
        // Fields the schema does not have are errors, as with kubectl's
        // strict field validation: `matchs:` for `matches:` must not turn a
        // route into a catch-all.
        fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
            let mut unknown = Vec::new();
            let mut note = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path.to_string()));
            let tracked = serde_ignored::Deserializer::new(value, &mut note);
            let parsed = serde_path_to_error::deserialize(tracked).map_err(|err| {
                let path = err.path().to_string();
                if path == "." { err.inner().to_string() } else { format!("{path}: {}", err.inner()) }
            })?;
            // NB: apiVersion and kind are read by TypeMeta, not by the types.
            unknown.retain(|path| path != "apiVersion" && path != "kind");
            match unknown.as_slice() {
                [] => Ok(parsed),
                [one] => Err(format!("{one}: unknown field (not in the schema; a typo?)")),
                [first, rest @ ..] => {
                    Err(format!("{first}: unknown field (not in the schema; a typo?), and {} more", rest.len()))
                }
            }
        }
        match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("v1", "List") => {
                let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
                let mut count = 0;
                for item in items {
                    count += self.add_value(source_name, document, item)?;
                }
                Ok(count)
            }
            (crds::API_VERSION, "Tenant") => {
                self.tenants.push(typed(value).map_err(parse_err)?);
                Ok(1)
            }
            (crds::API_VERSION, "ApiRoute") => {
                let mut route: ApiRoute = typed(value).map_err(parse_err)?;
                default_namespace(&mut route.metadata);
                self.routes.push(Box::new(route));
                Ok(1)
            }
            (crds::API_VERSION, "Subscription") => {
                let mut sub: Subscription = typed(value).map_err(parse_err)?;
                default_namespace(&mut sub.metadata);
                self.subscriptions.push(sub);
                Ok(1)
            }
            (crds::API_VERSION, "AiProvider") => {
                let mut provider: AiProvider = typed(value).map_err(parse_err)?;
                default_namespace(&mut provider.metadata);
                self.providers.push(provider);
                Ok(1)
            }
            ("networking.k8s.io/v1", "Ingress") => {
                let mut ingress: Ingress = typed(value).map_err(parse_err)?;
                default_namespace(&mut ingress.metadata);
                self.ingresses.push(ingress);
                Ok(1)
            }
            ("v1", "Service") => {
                let mut service: Service = typed(value).map_err(parse_err)?;
                default_namespace(&mut service.metadata);
                self.services.push(service);
                Ok(1)
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let mut slice: EndpointSlice = typed(value).map_err(parse_err)?;
                default_namespace(&mut slice.metadata);
                self.endpoint_slices.push(slice);
                Ok(1)
            }
            ("v1", "Secret") => {
                let mut secret: Secret = typed(value).map_err(parse_err)?;
                default_namespace(&mut secret.metadata);
                self.secrets.push(secret);
                Ok(1)
            }
            // NB: read and checked, then dropped: a folder that `kubectl
            // apply` takes as it is creates its namespaces, and translate
            // needs nothing from them.
            ("networking.k8s.io/v1", "IngressClass") => {
                self.ingress_classes.push(typed(value).map_err(parse_err)?);
                Ok(1)
            }
            ("v1", "Namespace") => {
                typed::<k8s_openapi::api::core::v1::Namespace>(value).map_err(parse_err)?;
                Ok(0)
            }
            ("v1", "ConfigMap") => {
                let mut config_map: ConfigMap = typed(value).map_err(parse_err)?;
                default_namespace(&mut config_map.metadata);
                self.config_maps.push(config_map);
                Ok(1)
            }
            (api_version, kind) => Err(LoadError::UnsupportedKind {
                source_name: source_name.to_owned(),
                document,
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            }),
        }
    }

    /// Moves every object of `other` into `self` (taking its vectors whole
    /// where `self` has none yet: no copy of a large file's objects).
    pub fn extend(&mut self, other: Inputs) {
        let Inputs {
            tenants,
            routes,
            subscriptions,
            providers,
            ingresses,
            ingress_classes,
            services,
            endpoint_slices,
            secrets,
            config_maps,
            ages: _,
        } = other;
        join(&mut self.ingress_classes, ingress_classes);
        join(&mut self.tenants, tenants);
        join(&mut self.routes, routes);
        join(&mut self.subscriptions, subscriptions);
        join(&mut self.providers, providers);
        join(&mut self.ingresses, ingresses);
        join(&mut self.services, services);
        join(&mut self.endpoint_slices, endpoint_slices);
        join(&mut self.secrets, secrets);
        join(&mut self.config_maps, config_maps);
    }

    /// How many objects there are in all.
    pub fn len(&self) -> usize {
        self.tenants.len()
            + self.routes.len()
            + self.subscriptions.len()
            + self.providers.len()
            + self.ingresses.len()
            + self.ingress_classes.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.config_maps.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_owned());
    }
}

/// serde_ignored's path (`spec.matches.0.path.?.typ`) as the field paths
/// elsewhere are written (`spec.matches[0].path.typ`).
fn field_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for segment in raw.split('.').filter(|s| *s != "?") {
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Appends `more` to `into`, or takes it whole when `into` is empty.
fn join<T>(into: &mut Vec<T>, more: Vec<T>) {
    if into.is_empty() {
        *into = more;
    } else {
        into.extend(more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: { name: users }\nspec:\n  matchs: [{ path: { type: PathPrefix, value: /users } }]\n  backend: { directResponse: { status: 200 } }\n";

    #[test]
    fn unknown_fields_are_errors_naming_file_document_and_path() {
        let mut inputs = Inputs::default();
        let text = format!("---\n{}---\n{}", ROUTE.replace("matchs", "matches"), ROUTE);
        let error = inputs.load_yaml("routes.yaml", &text).expect_err("a typo is refused");
        assert_eq!(
            error.to_string(),
            "routes.yaml: document 2: spec.matchs: unknown field (not in the schema; a typo?)"
        );
        assert!(inputs.routes.is_empty(), "nothing from the file is added");
        // Deeper, and in a Kubernetes kind too.
        let deep = ROUTE.replace("matchs", "matches").replace("type: PathPrefix", "typ: PathPrefix");
        let error = inputs.load_yaml("r.yaml", &deep).expect_err("refused");
        assert!(error.to_string().contains("spec.matches[0].path.typ: unknown field"), "{error}");
        let service = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { prots: [] }\n";
        let error = inputs.load_yaml("s.yaml", service).expect_err("refused");
        assert!(error.to_string().contains("spec.prots: unknown field"), "{error}");
    }

    #[test]
    fn namespaces_are_checked_and_add_nothing() {
        let mut inputs = Inputs::default();
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\n{}",
            ROUTE.replace("matchs", "matches")
        );
        assert_eq!(inputs.load_yaml("n.yaml", &text).expect("loads"), 1, "the route only");
        let typo = "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\nspce: {}\n";
        let error = inputs.load_yaml("n.yaml", typo).expect_err("refused");
        assert!(error.to_string().contains("spce: unknown field"), "{error}");
    }
}
