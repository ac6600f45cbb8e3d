//! `AiProvider`: an upstream model provider, its models and prices.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Conditions, Duration, RateLimit, SecretKeyRef, conditions_schema};

/// A model provider (OpenAI, Azure OpenAI, Anthropic, Gemini, Mistral,
/// Ollama, vLLM or any OpenAI-compatible server), its credential and the
/// models Sluice may call, with their prices for cost accounting.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AiProvider",
    plural = "aiproviders",
    shortname = "aip",
    category = "sluice",
    namespaced,
    status = "AiProviderStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Base URL","type":"string","jsonPath":".status.baseUrl"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.baseUrl) || !(self.type in ['azureOpenai', 'openaiCompatible'])").message("baseUrl is required for azureOpenai and openaiCompatible providers"))]
#[x_kube(validation = Rule::new("has(self.credentialSecretRef) || self.type in ['ollama', 'vllm', 'openaiCompatible']").message("credentialSecretRef is required for hosted providers (openai, azureOpenai, anthropic, gemini, mistral)"))]
#[x_kube(validation = Rule::new("self.models.all(m, self.models.exists_one(n, n.name == m.name))").message("models[].name must be unique"))]
pub struct AiProviderSpec {
    /// The provider's API dialect.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Base URL of the API; defaulted per type (openai
    /// `https://api.openai.com/v1`, anthropic `https://api.anthropic.com`,
    /// gemini `https://generativelanguage.googleapis.com`, mistral
    /// `https://api.mistral.ai/v1`, ollama `http://ollama:11434`, vllm
    /// `http://vllm:8000/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = "^https?://"))]
    pub base_url: Option<String>,
    /// The Secret key holding the provider API key, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<SecretKeyRef>,
    /// Azure OpenAI API version (`api-version` query parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub api_version: Option<String>,
    /// The models that may be called.
    #[schemars(length(min = 1, max = 128))]
    pub models: Vec<AiModel>,
    /// Time limit of one call (to the last byte for non-streamed calls, to
    /// the first byte for streamed ones).
    #[serde(default = "default_ai_timeout")]
    pub timeout: Duration,
    /// Limit on calls to this provider from the whole gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn default_ai_timeout() -> Duration {
    Duration::from("120s")
}

/// The provider API dialects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderType {
    /// OpenAI.
    Openai,
    /// Azure OpenAI (deployments, `api-key` header, `api-version`).
    AzureOpenai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini.
    Gemini,
    /// Mistral.
    Mistral,
    /// Ollama (OpenAI-compatible endpoint).
    Ollama,
    /// vLLM (OpenAI-compatible endpoint).
    Vllm,
    /// Any other OpenAI-compatible server.
    OpenaiCompatible,
}

impl ProviderType {
    /// The base URL used when `baseUrl` is not set, if the type has one.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderType::Openai => Some("https://api.openai.com/v1"),
            ProviderType::Anthropic => Some("https://api.anthropic.com"),
            ProviderType::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderType::Mistral => Some("https://api.mistral.ai/v1"),
            ProviderType::Ollama => Some("http://ollama:11434"),
            ProviderType::Vllm => Some("http://vllm:8000/v1"),
            ProviderType::AzureOpenai | ProviderType::OpenaiCompatible => None,
        }
    }

    /// Whether calls need an API key.
    pub fn needs_credential(self) -> bool {
        !matches!(self, ProviderType::Ollama | ProviderType::Vllm | ProviderType::OpenaiCompatible)
    }
}

/// One model of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiModel {
    /// The provider's model name (or Azure deployment name).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Another name clients may use for it (`fast`, `smart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub alias: Option<String>,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<u64>,
    /// Most output tokens per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_output_tokens: Option<u64>,
    /// Prices, for cost accounting.
    #[serde(default)]
    pub pricing: Pricing,
}

/// Prices in US dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Per million input (prompt) tokens.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub input_per_million: f64,
    /// Per million output (completion) tokens.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub output_per_million: f64,
    /// Per million cached input tokens; the input price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cached_input_per_million: Option<f64>,
}

/// What Sluice concluded about an AiProvider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AiProviderStatus {
    /// The base URL in use (the spec's, or the type's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Accepted and ResolvedRefs.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
}
