//! What translate concluded about each input object: conditions without
//! clocks. The operator adds `lastTransitionTime` when it writes them.
//!
//! Every reason is a constant here, so the set of reasons is one list.

use serde::{Deserialize, Serialize};

/// Identifies one input object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Kind (`ApiRoute`, `Tenant`, `Secret`, `Ingress`...).
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to a namespaced object.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef { kind: kind.to_owned(), namespace: namespace.to_owned(), name: name.to_owned() }
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn key(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.key())
    }
}

/// Condition types.
pub mod condition {
    /// The spec is valid and the object is in the snapshot.
    pub const ACCEPTED: &str = "Accepted";
    /// Every reference (Service, Secret, provider, route, app) was found.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A namespace or hostname is claimed by another tenant too.
    pub const CONFLICTED: &str = "Conflicted";
    /// The proxy serves the object as compiled (set by the proxy, not by
    /// translate).
    pub const PROGRAMMED: &str = "Programmed";
}

/// CamelCase reasons.
pub mod reason {
    /// All good.
    pub const ACCEPTED: &str = "Accepted";
    /// All references found.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A field has an invalid value.
    pub const INVALID: &str = "Invalid";
    /// The backend is not exactly one valid kind.
    pub const INVALID_BACKEND: &str = "InvalidBackend";
    /// A host is not allowed for this namespace's tenant (or is claimed by a tenant).
    pub const NOT_ALLOWED_HOST: &str = "NotAllowedHost";
    /// Another, older object claims the same thing.
    pub const CONFLICTED: &str = "Conflicted";
    /// A namespace is claimed by two tenants.
    pub const NAMESPACE_CONFLICT: &str = "NamespaceConflict";
    /// A hostname pattern is claimed by two tenants.
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    /// A referenced Service does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// A referenced Service has no such port.
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    /// A referenced Secret does not exist or lacks the key.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A TLS Secret is not a usable certificate.
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    /// A referenced AiProvider does not exist.
    pub const PROVIDER_NOT_FOUND: &str = "ProviderNotFound";
    /// A referenced AiProvider exists but was not accepted.
    pub const PROVIDER_NOT_ACCEPTED: &str = "ProviderNotAccepted";
    /// A referenced model is not listed by the provider.
    pub const MODEL_NOT_FOUND: &str = "ModelNotFound";
    /// A referenced ConfigMap (OpenAPI document) does not exist.
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// A referenced ApiRoute does not exist.
    pub const ROUTE_NOT_FOUND: &str = "RouteNotFound";
    /// A referenced ApiRoute exists but was not accepted.
    pub const ROUTE_NOT_ACCEPTED: &str = "RouteNotAccepted";
    /// A referenced route is a Draft, open to its own tenant only.
    pub const ROUTE_NOT_PUBLISHED: &str = "RouteNotPublished";
    /// A subscription of another tenant's app to a Private route.
    pub const ROUTE_PRIVATE: &str = "RoutePrivate";
    /// The namespace belongs to no tenant.
    pub const NO_TENANT: &str = "NoTenant";
    /// The app is not one of the tenant's apps.
    pub const UNKNOWN_APP: &str = "UnknownApp";
    /// The same API key is used twice.
    pub const DUPLICATE_API_KEY: &str = "DuplicateApiKey";
    /// The route needs a policy the proxy cannot enforce, so it is not
    /// served (503) rather than served without it.
    pub const UNSUPPORTED_BY_PROXY: &str = "UnsupportedByProxy";
}

/// One condition, as translate decides it (no timestamps).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// True or False.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: String,
    /// One sentence naming the field.
    pub message: String,
}

/// A condition's truth.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// Holds.
    True,
    /// Does not hold.
    False,
}

impl StatusCondition {
    /// A True condition.
    pub fn ok(kind: &str, reason: &str, message: impl Into<String>) -> Self {
        StatusCondition {
            kind: kind.to_owned(),
            status: ConditionStatus::True,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// A False condition.
    pub fn fail(kind: &str, reason: &str, message: impl Into<String>) -> Self {
        StatusCondition {
            kind: kind.to_owned(),
            status: ConditionStatus::False,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the condition is False.
    pub fn is_false(&self) -> bool {
        self.status == ConditionStatus::False
    }
}

/// Everything translate says about one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The object.
    pub object: ObjectRef,
    /// `metadata.generation` the conditions were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, in a fixed order (Accepted first).
    pub conditions: Vec<StatusCondition>,
    /// Subscriptions: the effective approval state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crds::ApprovalState>,
    /// AiProviders: the base URL in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// ApiRoutes: how many apps may call the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<u32>,
}

impl ObjectStatus {
    /// A status with no conditions yet.
    pub fn new(object: ObjectRef, observed_generation: Option<i64>) -> Self {
        // NB: most objects have two or three conditions; a default vector
        // would grow to four (thousands of routes keep theirs in /status).
        let conditions = Vec::with_capacity(3);
        ObjectStatus { object, observed_generation, conditions, phase: None, base_url: None, apps: None }
    }

    /// The condition of this type.
    pub fn condition(&self, kind: &str) -> Option<&StatusCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Whether any condition is False.
    pub fn has_false(&self) -> bool {
        self.conditions.iter().any(StatusCondition::is_false)
    }

    /// Sets (or replaces) a condition of the same type.
    pub fn set(&mut self, condition: StatusCondition) {
        match self.conditions.iter_mut().find(|c| c.kind == condition.kind) {
            Some(existing) => *existing = condition,
            None => self.conditions.push(condition),
        }
    }
}

/// Why an object was left out: the condition that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub StatusCondition);

impl Rejection {
    /// `Accepted=False`.
    pub fn invalid(reason: &str, message: impl Into<String>) -> Self {
        Rejection(StatusCondition::fail(condition::ACCEPTED, reason, message))
    }

    /// `ResolvedRefs=False`.
    pub fn unresolved(reason: &str, message: impl Into<String>) -> Self {
        Rejection(StatusCondition::fail(condition::RESOLVED_REFS, reason, message))
    }
}
