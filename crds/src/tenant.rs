//! `Tenant`: a team, with the namespaces, hostnames and apps it owns.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Conditions, RateLimit, conditions_schema};

/// A team that publishes and consumes APIs. Cluster-scoped: it claims
/// namespaces (where its ApiRoutes, Subscriptions and AiProviders live) and
/// hostname patterns (which only its routes may serve).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    category = "sluice",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Display Name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.apps.all(a, self.apps.exists_one(b, b.name == a.name))").message("apps[].name must be unique"))]
pub struct TenantSpec {
    /// Human-readable name shown in the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// What the team does, for the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
    /// Namespaces this tenant owns. Routes, subscriptions and providers in
    /// them belong to the tenant. A namespace claimed by two tenants goes to
    /// the older one and is reported on both.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub namespaces: Vec<NamespaceName>,
    /// Hostname patterns the tenant's routes may serve: exact
    /// (`api.team-a.example.com`) or a leading wildcard
    /// (`*.team-a.example.com`). No route outside the tenant may serve them.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub hostnames: Vec<HostnamePattern>,
    /// The tenant's apps: the consumers that call APIs. API keys of an app
    /// are Secrets of type `sluice.dev/api-key` in one of the tenant's
    /// namespaces, labelled `sluice.dev/app: <app name>`, with the key under
    /// `api-key`.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub apps: Vec<TenantApp>,
    /// Who may approve subscriptions to the tenant's routes.
    #[serde(default)]
    pub approvers: Approvers,
    /// Defaults applied to the tenant's routes that do not say otherwise.
    #[serde(default)]
    pub defaults: TenantDefaults,
    /// Limits on everything the tenant's apps call, across all routes.
    #[serde(default)]
    pub quotas: Quotas,
}

/// A Kubernetes namespace name.
pub type NamespaceName = String;

/// A hostname pattern: `api.example.com` or `*.example.com`.
pub type HostnamePattern = String;

/// One consumer application of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantApp {
    /// App name, unique within the tenant (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// What the app is, for approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
    /// OAuth client ids (JWT `azp` or `client_id` claims) that identify
    /// this app on JWT-authenticated routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub client_ids: Vec<String>,
}

/// Users and groups who may decide on subscriptions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    /// User names, as the Kubernetes API server or the portal's identity
    /// provider knows them.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
}

/// Policies a tenant's routes inherit unless they set their own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantDefaults {
    /// Catalog visibility of routes that do not set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<crate::Visibility>,
    /// Approval mode of routes that do not set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::ApprovalMode>,
    /// Rate limit of routes that do not set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Tenant-wide limits. Each is counted across all of the tenant's apps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Requests per minute, all routes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Requests per day, all routes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_day: Option<u64>,
    /// AI tokens (input + output) per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ai_tokens_per_day: Option<u64>,
    /// AI spend allowed per calendar month, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub monthly_ai_budget_usd: Option<f64>,
}

/// What Sluice concluded about a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Accepted, and Conflicted when a namespace or hostname is claimed twice.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}
