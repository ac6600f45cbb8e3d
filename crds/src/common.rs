//! Types shared by several kinds: durations, references, conditions, limits.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A duration written as Go and Kubernetes write them: `250ms`, `5s`, `1m30s`, `2h`.
///
/// The schema carries a pattern so the API server rejects a malformed value;
/// [`Duration::millis`] parses it for the compiler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct Duration(pub String);

/// The pattern every [`Duration`] must match.
pub const DURATION_PATTERN: &str = "^([0-9]{1,9}(ms|s|m|h))+$";

impl Duration {
    /// Parses the duration into whole milliseconds, or `None` when the text
    /// does not match [`DURATION_PATTERN`] or overflows.
    pub fn millis(&self) -> Option<u64> {
        let s = self.0.as_str();
        if s.is_empty() {
            return None;
        }
        let bytes = s.as_bytes();
        let mut total: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i || i - start > 9 {
                return None;
            }
            let n: u64 = s[start..i].parse().ok()?;
            let unit = if s[i..].starts_with("ms") {
                i += 2;
                1
            } else {
                let u = match bytes.get(i) {
                    Some(b's') => 1_000,
                    Some(b'm') => 60_000,
                    Some(b'h') => 3_600_000,
                    _ => return None,
                };
                i += 1;
                u
            };
            total = total.checked_add(n.checked_mul(unit)?)?;
        }
        Some(total)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_owned())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A duration such as 250ms, 5s, 1m30s or 2h."
        })
    }
}

/// The schema of `status.conditions`: a list-map keyed by `type`, so that
/// server-side apply merges conditions one by one.
pub fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What Sluice concluded about this object: Accepted (the spec is valid), ResolvedRefs (every reference was found), Programmed/Ready (proxies serve it).",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": { "type": "string", "format": "date-time", "description": "When the condition last changed status." },
                "message": { "type": "string", "maxLength": 32768, "description": "A sentence for humans." },
                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0, "description": "The metadata.generation the condition was computed from." },
                "reason": { "type": "string", "maxLength": 1024, "minLength": 1, "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", "description": "A CamelCase reason." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"], "description": "True, False or Unknown." },
                "type": { "type": "string", "maxLength": 316, "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$", "description": "Accepted, ResolvedRefs, Programmed, Ready or Conflicted." }
            }
        }
    })
}

/// Conditions, as every status holds them.
pub type Conditions = Vec<Condition>;

/// A reference to one key of a Secret in the referring object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[serde(default = "default_api_key_field")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_api_key_field() -> String {
    "api-key".to_owned()
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name (case-insensitive).
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// The unit of time a limit is counted over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum RatePeriod {
    /// Per second.
    Second,
    /// Per minute.
    #[default]
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
}

impl RatePeriod {
    /// Length of the period in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            RatePeriod::Second => 1,
            RatePeriod::Minute => 60,
            RatePeriod::Hour => 3_600,
            RatePeriod::Day => 86_400,
        }
    }
}

/// Who a rate limit counts separately.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
pub enum RateLimitKey {
    /// One budget per calling app (anonymous callers share one).
    #[default]
    App,
    /// One budget per client IP address.
    ClientIp,
    /// One budget per value of the header named in `header`.
    Header,
    /// One budget for the whole route.
    Route,
}

/// A request rate limit: `requests` per `period`, with an optional burst.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.key != 'Header' || has(self.header)").message("rateLimit.header is required when rateLimit.key is Header"))]
pub struct RateLimit {
    /// Requests allowed per period.
    #[schemars(range(min = 1))]
    pub requests: u64,
    /// The period the requests are counted over.
    #[serde(default)]
    pub period: RatePeriod,
    /// Extra requests allowed in a burst above the steady rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Who is counted separately.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Header whose value is the key, when `key` is Header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(Duration::from("250ms").millis(), Some(250));
        assert_eq!(Duration::from("5s").millis(), Some(5_000));
        assert_eq!(Duration::from("1m30s").millis(), Some(90_000));
        assert_eq!(Duration::from("2h").millis(), Some(7_200_000));
        assert_eq!(Duration::from("").millis(), None);
        assert_eq!(Duration::from("5").millis(), None);
        assert_eq!(Duration::from("s").millis(), None);
        assert_eq!(Duration::from("5x").millis(), None);
        assert_eq!(Duration::from("1.5s").millis(), None);
    }
}
