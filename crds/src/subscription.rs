//! `Subscription`: an app asking to call an ApiRoute, and the answer.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Conditions, RateLimit, conditions_schema};

/// An app of the tenant that owns this namespace asks to call one
/// ApiRoute. Nothing is callable until the subscription is Approved, by an
/// approver of the route's tenant or by the route's Auto approval policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Subscription",
    plural = "subscriptions",
    shortname = "sub",
    category = "sluice",
    namespaced,
    status = "SubscriptionStatus",
    printcolumn = r#"{"name":"App","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"Route","type":"string","jsonPath":".spec.route.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.app == oldSelf.app && self.route == oldSelf.route").message("app and route are immutable: create a new Subscription instead"))]
pub struct SubscriptionSpec {
    /// The calling app: one of `spec.apps` of the tenant owning this
    /// subscription's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub app: String,
    /// The ApiRoute asked for.
    pub route: RouteRef,
    /// A plan: a rate limit for this app on this route instead of the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Why the app needs the API, for the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub reason: Option<String>,
    /// The approver's decision. Routes with Auto approval ignore it unless
    /// it is Rejected or Revoked.
    #[serde(default)]
    pub approval: Approval,
}

/// A reference to an ApiRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    /// The route's namespace; the subscription's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The route's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A rate limit granted to one subscriber.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Plan name, for the catalog and logs.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The app's rate limit on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// An approver's decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.state == 'Pending' || has(self.decidedBy)").message("approval.decidedBy is required once the state is not Pending"))]
pub struct Approval {
    /// Pending, Approved, Rejected or Revoked.
    #[serde(default)]
    pub state: ApprovalState,
    /// Who decided (user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub decided_by: Option<String>,
    /// Why, for the requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub comment: Option<String>,
}

/// The states of a subscription.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum ApprovalState {
    /// Waiting for an approver.
    #[default]
    Pending,
    /// The app may call the route.
    Approved,
    /// The app may not call the route.
    Rejected,
    /// Once approved, now withdrawn.
    Revoked,
}

/// What Sluice concluded about a Subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// The effective state: the approver's decision, or Approved by the
    /// route's Auto approval policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalState>,
    /// Accepted and ResolvedRefs.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
    /// Once approved: the Secret (in this namespace) holding the app's API
    /// key, issued by the operator unless the app had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
}
