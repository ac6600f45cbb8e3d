//! AiProviders: base URLs, credentials and models.

use std::collections::{BTreeMap, BTreeSet};

use crds::AiProvider;

use super::Output;
use super::index::{Index, names, secret_value};
use super::tenants::{Tenancy, check_rate_limit};
use crate::model::{Provider, SecretString};
use crate::status::{ObjectRef, Rejection, reason};

/// Compiled providers, and the ids of those that were left out.
#[derive(Default)]
pub struct Providers {
    pub accepted: BTreeMap<String, Provider>,
    pub rejected: BTreeSet<String>,
}

impl Providers {
    pub fn into_values(self) -> impl Iterator<Item = Provider> {
        self.accepted.into_values()
    }
}

pub fn translate(index: &Index<'_>, tenancy: &Tenancy, out: &mut Output) -> Providers {
    let mut providers = Providers::default();
    for provider in &index.providers {
        let (namespace, name) = names(&provider.metadata);
        let id = format!("{namespace}/{name}");
        let object = ObjectRef::new("AiProvider", namespace, name);
        let generation = provider.metadata.generation;
        match compile(index, tenancy, provider, &id) {
            Ok(compiled) => {
                out.accept(&object, generation);
                out.status_mut(&object, generation).base_url = Some(compiled.base_url.clone());
                providers.accepted.insert(id, compiled);
            }
            Err(rejection) => {
                out.reject(&object, generation, rejection);
                providers.rejected.insert(id);
            }
        }
    }
    providers
}

fn compile(index: &Index<'_>, tenancy: &Tenancy, provider: &AiProvider, id: &str) -> Result<Provider, Rejection> {
    let spec = &provider.spec;
    let (namespace, _) = names(&provider.metadata);
    let base_url = match (&spec.base_url, spec.kind.default_base_url()) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.baseUrl is required for type {}.", type_name(spec.kind)),
            ));
        }
    };
    check_url(&base_url).map_err(|e| Rejection::invalid(reason::INVALID, format!("spec.baseUrl {e}.")))?;
    let timeout_ms = spec.timeout.millis().ok_or_else(|| {
        Rejection::invalid(reason::INVALID, format!("spec.timeout {:?} is not a duration.", spec.timeout.0))
    })?;
    if let Some(limit) = &spec.rate_limit {
        check_rate_limit(limit, "spec.rateLimit")?;
    }
    if spec.models.is_empty() {
        return Err(Rejection::invalid(reason::INVALID, "spec.models must list at least one model."));
    }
    let mut seen = BTreeSet::new();
    for (i, model) in spec.models.iter().enumerate() {
        if !seen.insert(model.name.as_str()) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.models[{i}].name {:?} is listed twice.", model.name),
            ));
        }
        let prices = [
            model.pricing.input_per_million,
            model.pricing.output_per_million,
            model.pricing.cached_input_per_million.unwrap_or(0.0),
        ];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.models[{i}].pricing has a negative or non-finite price."),
            ));
        }
    }
    for (i, model) in spec.models.iter().enumerate() {
        if let Some(alias) = &model.alias
            && (seen.contains(alias.as_str())
                || spec.models.iter().enumerate().any(|(j, m)| j != i && m.alias.as_ref() == Some(alias)))
        {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.models[{i}].alias {alias:?} is already a model name or alias."),
            ));
        }
    }
    let api_key = match &spec.credential_secret_ref {
        Some(secret_ref) => {
            let secret = index.secret(namespace, &secret_ref.name).ok_or_else(|| {
                Rejection::unresolved(
                    reason::SECRET_NOT_FOUND,
                    format!("spec.credentialSecretRef: Secret {namespace}/{} does not exist.", secret_ref.name),
                )
            })?;
            let value = secret_value(secret, &secret_ref.key).filter(|v| !v.is_empty()).ok_or_else(|| {
                Rejection::unresolved(
                    reason::SECRET_NOT_FOUND,
                    format!(
                        "spec.credentialSecretRef: Secret {namespace}/{} has no key {:?}.",
                        secret_ref.name, secret_ref.key
                    ),
                )
            })?;
            Some(SecretString::new(value.trim().to_owned()))
        }
        None if spec.kind.needs_credential() => {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("spec.credentialSecretRef is required for type {}.", type_name(spec.kind)),
            ));
        }
        None => None,
    };
    let mut models = spec.models.clone();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Provider {
        id: id.to_owned(),
        tenant: tenancy.owner(namespace).map(|t| t.name.clone()),
        kind: spec.kind,
        base_url,
        api_version: spec.api_version.clone(),
        api_key,
        models,
        timeout_ms,
        rate_limit: spec.rate_limit.clone().map(Box::new),
    })
}

/// Checks an `http(s)://host[:port][/path]` URL; the error completes
/// "FIELD ...".
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query"));
    }
    // NB: credentials in a URL would be logged, shown on /status and sent
    // in the clear by some clients; they belong in a Secret.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry user information (user:password@); put credentials in a Secret".into());
    }
    Ok(uri)
}

fn type_name(kind: crds::ProviderType) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
