//! ApiRoutes: validation, compilation, and host + path + method conflicts.

use std::collections::{BTreeMap, BTreeSet};

use crds::{
    ApiRoute, ApiRouteSpec, AuthMode, HeaderTransform, HeaderValue, LifecycleState, LoadBalancerPolicy, PathMatchType,
    RouteMatch, ValueMatchType, Visibility,
};
use jiff::Timestamp;

use super::index::{Age, Index, names, secret_value};
use super::providers::{Providers, check_url};
use super::tenants::{Tenancy, check_rate_limit};
use super::{Candidate, Output, backends, hosts};
use crate::model::{
    Access, AuthPolicy, Backend, CachePolicy, Certificate, DirectResponse, Match, PassiveHealthPolicy, PathRewrite,
    RequestTransform, RetryPolicy, Route, SecretString, TrafficPolicy, ValueMatch,
};
use crate::status::{ObjectRef, Rejection, reason};

/// Compiles every ApiRoute; the rejected ones get their status here.
pub fn translate(index: &Index<'_>, tenancy: &Tenancy, providers: &Providers, out: &mut Output) -> Vec<Candidate> {
    // NB: growing vectors of ~1 KiB routes by doubling costs more than the
    // compilation itself at 10,000 routes, so every vector is sized once.
    let mut candidates = Vec::with_capacity(index.routes.len());
    for route in &index.routes {
        let (namespace, name) = names(&route.metadata);
        let object = ObjectRef::new("ApiRoute", namespace, name);
        match compile(index, tenancy, providers, route, &object) {
            Ok(candidate) => candidates.push(candidate),
            Err(rejection) => out.reject(&object, route.metadata.generation, rejection),
        }
    }
    candidates
}

fn compile(
    index: &Index<'_>,
    tenancy: &Tenancy,
    providers: &Providers,
    route: &ApiRoute,
    object: &ObjectRef,
) -> Result<Candidate, Rejection> {
    let spec: &ApiRouteSpec = &route.spec;
    let (namespace, _) = names(&route.metadata);
    let tenant = tenancy.owner(namespace);

    let hosts = compile_hosts(&spec.hosts, "spec.hosts")?;
    tenancy.check_hosts(namespace, &hosts, "spec.hosts")?;
    let matches = compile_matches(&spec.matches)?;

    let (backend, lifecycle_headers) = match spec.lifecycle.state {
        LifecycleState::Retired => {
            check_single_backend(spec)?;
            (retired_answer(object, spec), Vec::new())
        }
        state => {
            let headers = if state == LifecycleState::Deprecated { deprecation_headers(spec)? } else { Vec::new() };
            (compile_backend(index, providers, namespace, spec)?, headers)
        }
    };

    let auth = compile_auth(index, namespace, spec)?;
    // NB: a Draft is callable by its own tenant's apps only, so it needs to
    // know who calls, and every other app needs a grant it cannot get.
    let draft = spec.lifecycle.state == LifecycleState::Draft;
    if draft && auth.mode == AuthMode::None {
        return Err(Rejection::invalid(
            reason::INVALID,
            "spec.auth.mode is None, but a Draft route is callable only by its own tenant's apps, so it needs ApiKey, Jwt or ApiKeyOrJwt.",
        ));
    }
    if spec.subscription.required && auth.mode == AuthMode::None {
        return Err(Rejection::invalid(
            reason::INVALID,
            "spec.subscription.required needs an spec.auth.mode other than None, to know which app is calling.",
        ));
    }
    let traffic = compile_traffic(spec)?;
    let request_transform = compile_request_transform(spec, &matches)?;
    let mut response_transform = match &spec.response_transform {
        Some(t) => Some(compile_header_transform(t, "spec.responseTransform")?),
        None => None,
    };
    if !lifecycle_headers.is_empty() {
        response_transform.get_or_insert_with(HeaderTransform::default).set_headers.extend(lifecycle_headers);
    }
    let defaults = tenant.map(|t| &t.defaults);
    let mut rate_limit = spec.rate_limit.clone().or_else(|| defaults.and_then(|d| d.rate_limit.clone()));
    if let Some(header) = rate_limit.as_mut().and_then(|l| l.header.as_mut()) {
        header.make_ascii_lowercase();
    }
    if let Some(limit) = &spec.rate_limit {
        check_rate_limit(limit, "spec.rateLimit")?;
    }
    let cache = match &spec.cache {
        Some(cache) => Some(CachePolicy {
            ttl_ms: millis(&cache.ttl, "spec.cache.ttl")?,
            vary_headers: lower_sorted(&cache.vary_headers, "spec.cache.varyHeaders")?,
            max_body_bytes: cache.max_body_bytes,
            public: cache.public,
        }),
        None => None,
    };
    if let Some(cors) = &spec.cors {
        if cors.allow_origins.is_empty() {
            return Err(Rejection::invalid(reason::INVALID, "spec.cors.allowOrigins must list at least one origin."));
        }
        if let Some(age) = &cors.max_age {
            millis(age, "spec.cors.maxAge")?;
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            return Err(Rejection::invalid(
                reason::INVALID,
                "spec.cors.allowOrigins may not be \"*\" when allowCredentials is true (browsers refuse it).",
            ));
        }
    }
    let certificates = compile_tls(index, namespace, spec, &hosts)?;
    let warning = check_openapi(index, namespace, spec);

    let visibility = spec.visibility.or_else(|| defaults.and_then(|d| d.visibility)).unwrap_or(Visibility::Tenant);
    let approval = spec.subscription.approval.or_else(|| defaults.and_then(|d| d.approval)).unwrap_or_default();
    Ok(Candidate {
        route: Route {
            id: object.key(),
            source: object.clone(),
            tenant: tenant.map(|t| t.name.clone()),
            version: spec.version.clone(),
            lifecycle: spec.lifecycle.state,
            visibility,
            hosts,
            matches,
            auth,
            access: Access {
                subscription_required: spec.subscription.required || draft,
                approval,
                apps: Vec::new(),
                pending: Vec::new(),
            },
            backend,
            traffic,
            request_transform: request_transform.map(Box::new),
            response_transform: response_transform.map(Box::new),
            rate_limit: rate_limit.map(Box::new),
            cache: cache.map(Box::new),
            cors: spec.cors.clone().map(Box::new),
            websocket: spec.websocket,
            merge_slashes: spec.merge_slashes,
        },
        age: Age::of(&route.metadata),
        generation: route.metadata.generation,
        certificates,
        warning,
    })
}

pub fn compile_hosts(raw: &[String], field: &str) -> Result<Vec<String>, Rejection> {
    let mut hosts = BTreeSet::new();
    for (i, host) in raw.iter().enumerate() {
        let host =
            hosts::normalize(host).map_err(|e| Rejection::invalid(reason::INVALID, format!("{field}[{i}]: {e}.")))?;
        hosts.insert(host);
    }
    Ok(hosts.into_iter().collect())
}

fn compile_matches(raw: &[RouteMatch]) -> Result<Vec<Match>, Rejection> {
    if raw.is_empty() {
        return Ok(vec![prefix_match("/")]);
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let field = format!("spec.matches[{i}]");
        let (path_type, path) = match &m.path {
            None => (PathMatchType::PathPrefix, "/".to_owned()),
            Some(p) => (p.kind, compile_path(p.kind, &p.value, &format!("{field}.path.value"))?),
        };
        let mut methods = m.methods.clone();
        methods.sort();
        methods.dedup();
        out.push(Match {
            path_type,
            path,
            methods,
            headers: compile_value_matches(&m.headers, true, &format!("{field}.headers"))?,
            query_params: compile_value_matches(&m.query_params, false, &format!("{field}.queryParams"))?,
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A PathPrefix match.
pub fn prefix_match(prefix: &str) -> Match {
    Match {
        path_type: PathMatchType::PathPrefix,
        path: prefix.to_owned(),
        methods: Vec::new(),
        headers: Vec::new(),
        query_params: Vec::new(),
    }
}

/// Validates and normalises a path of the given match kind.
pub fn compile_path(kind: PathMatchType, value: &str, field: &str) -> Result<String, Rejection> {
    match kind {
        PathMatchType::RegularExpression => {
            check_regex(value, field)?;
            Ok(value.to_owned())
        }
        PathMatchType::Exact | PathMatchType::PathPrefix => {
            if !value.starts_with('/') {
                return Err(Rejection::invalid(reason::INVALID, format!("{field} {value:?} must start with '/'.")));
            }
            if value.contains(['?', '#']) || value.chars().any(char::is_whitespace) {
                return Err(Rejection::invalid(
                    reason::INVALID,
                    format!("{field} {value:?} must be a path without query, fragment or spaces."),
                ));
            }
            if kind == PathMatchType::PathPrefix && value.len() > 1 {
                Ok(value.trim_end_matches('/').to_owned())
            } else {
                Ok(value.to_owned())
            }
        }
    }
}

fn check_regex(value: &str, field: &str) -> Result<(), Rejection> {
    regex::RegexBuilder::new(&format!("^(?:{value})$")).size_limit(1 << 20).build().map(|_| ()).map_err(|e| {
        let first = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
        Rejection::invalid(reason::INVALID, format!("{field} {value:?} is not a valid regular expression: {first}."))
    })
}

fn compile_value_matches(raw: &[crds::ValueMatch], lower: bool, field: &str) -> Result<Vec<ValueMatch>, Rejection> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let name = if lower { m.name.to_ascii_lowercase() } else { m.name.clone() };
        if lower && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("{field}[{i}].name {:?} is not a header name.", m.name),
            ));
        }
        let value = match (m.kind, &m.value) {
            (ValueMatchType::Present, _) => String::new(),
            (_, None) => {
                return Err(Rejection::invalid(
                    reason::INVALID,
                    format!("{field}[{i}].value is required unless type is Present."),
                ));
            }
            (ValueMatchType::RegularExpression, Some(v)) => {
                check_regex(v, &format!("{field}[{i}].value"))?;
                v.clone()
            }
            (ValueMatchType::Exact, Some(v)) => v.clone(),
        };
        out.push(ValueMatch { name, kind: m.kind, value });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_single_backend(spec: &ApiRouteSpec) -> Result<(), Rejection> {
    let b = &spec.backend;
    let set = [b.services.is_some(), b.upstreams.is_some(), b.ai.is_some(), b.direct_response.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set == 1 {
        Ok(())
    } else {
        Err(Rejection::invalid(
            reason::INVALID_BACKEND,
            format!("spec.backend sets {set} of services, upstreams, ai and directResponse; exactly one is required."),
        ))
    }
}

fn compile_backend(
    index: &Index<'_>,
    providers: &Providers,
    namespace: &str,
    spec: &ApiRouteSpec,
) -> Result<Backend, Rejection> {
    check_single_backend(spec)?;
    let b = &spec.backend;
    if let Some(services) = &b.services {
        if services.is_empty() {
            return Err(Rejection::invalid(reason::INVALID_BACKEND, "spec.backend.services must not be empty."));
        }
        return backends::services(index, namespace, services).map(|groups| Backend::Upstreams { groups });
    }
    if let Some(upstreams) = &b.upstreams {
        if upstreams.is_empty() {
            return Err(Rejection::invalid(reason::INVALID_BACKEND, "spec.backend.upstreams must not be empty."));
        }
        return backends::urls(upstreams).map(|groups| Backend::Upstreams { groups });
    }
    if let Some(ai) = &b.ai {
        return backends::ai(providers, namespace, ai).map(|ai| Backend::Ai(Box::new(ai)));
    }
    match &b.direct_response {
        Some(direct) => {
            if !(200..=599).contains(&direct.status) {
                return Err(Rejection::invalid(
                    reason::INVALID_BACKEND,
                    format!("spec.backend.directResponse.status {} is not between 200 and 599.", direct.status),
                ));
            }
            check_headers(&direct.headers, "spec.backend.directResponse.headers")?;
            Ok(Backend::Direct(DirectResponse {
                status: direct.status,
                headers: direct.headers.clone(),
                body: direct.body.clone().unwrap_or_default(),
            }))
        }
        None => Err(Rejection::invalid(reason::INVALID_BACKEND, "spec.backend sets no backend.")),
    }
}

/// The 410 answer of a Retired route: an RFC 9457 problem document.
fn retired_answer(object: &ObjectRef, spec: &ApiRouteSpec) -> Backend {
    let version = spec.version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default();
    let mut detail = format!("The API {}{version} has been retired.", object.key());
    if let Some(successor) = &spec.lifecycle.successor {
        detail.push_str(&format!(" Its successor is {successor}."));
    }
    let body = serde_json::json!({
        "type": "https://sluice.dev/problems/route-retired",
        "title": "API retired",
        "status": 410,
        "detail": detail,
    });
    let mut headers = vec![HeaderValue { name: "content-type".into(), value: "application/problem+json".into() }];
    if let Some(successor) = &spec.lifecycle.successor {
        headers.push(HeaderValue { name: "link".into(), value: format!("<{successor}>; rel=\"successor-version\"") });
    }
    Backend::Direct(DirectResponse { status: 410, headers, body: body.to_string() })
}

/// `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and `Link` headers.
fn deprecation_headers(spec: &ApiRouteSpec) -> Result<Vec<HeaderValue>, Rejection> {
    let lifecycle = &spec.lifecycle;
    let parse = |value: &Option<String>, field: &str| -> Result<Timestamp, Rejection> {
        let text = value.as_deref().ok_or_else(|| {
            Rejection::invalid(reason::INVALID, format!("{field} is required when spec.lifecycle.state is Deprecated."))
        })?;
        text.parse::<Timestamp>().map_err(|_| {
            Rejection::invalid(
                reason::INVALID,
                format!("{field} {text:?} is not an RFC 3339 date-time (like 2026-12-31T00:00:00Z)."),
            )
        })
    };
    let since = parse(&lifecycle.deprecated_since, "spec.lifecycle.deprecatedSince")?;
    let sunset = parse(&lifecycle.sunset, "spec.lifecycle.sunset")?;
    if sunset < since {
        return Err(Rejection::invalid(
            reason::INVALID,
            "spec.lifecycle.sunset is before spec.lifecycle.deprecatedSince.",
        ));
    }
    let sunset_text = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&sunset)
        .map_err(|_| Rejection::invalid(reason::INVALID, "spec.lifecycle.sunset is out of range."))?;
    let mut headers = vec![
        HeaderValue { name: "deprecation".into(), value: format!("@{}", since.as_second()) },
        HeaderValue { name: "sunset".into(), value: sunset_text },
    ];
    if let Some(successor) = &lifecycle.successor {
        headers.push(HeaderValue { name: "link".into(), value: format!("<{successor}>; rel=\"successor-version\"") });
    }
    Ok(headers)
}

fn compile_auth(index: &Index<'_>, namespace: &str, spec: &ApiRouteSpec) -> Result<AuthPolicy, Rejection> {
    let auth = &spec.auth;
    let api_key_header = auth.api_key.header.to_ascii_lowercase();
    if http::HeaderName::from_bytes(api_key_header.as_bytes()).is_err() {
        return Err(Rejection::invalid(
            reason::INVALID,
            format!("spec.auth.apiKey.header {:?} is not a header name.", auth.api_key.header),
        ));
    }
    // NB: the proxy removes every x-sluice-* header a client sends (they
    // carry the gateway's word on the caller), so a key there never arrives.
    if api_key_header.starts_with("x-sluice-") {
        return Err(Rejection::invalid(
            reason::INVALID,
            format!(
                "spec.auth.apiKey.header {:?} is one of the gateway's own x-sluice- headers, which clients cannot send.",
                auth.api_key.header
            ),
        ));
    }
    let jwt = match auth.mode {
        AuthMode::Jwt | AuthMode::ApiKeyOrJwt => {
            let jwt = auth.jwt.clone().ok_or_else(|| {
                Rejection::invalid(
                    reason::INVALID,
                    "spec.auth.jwt is required when spec.auth.mode is Jwt or ApiKeyOrJwt.",
                )
            })?;
            match (&jwt.jwks_uri, &jwt.jwks_secret_ref) {
                (Some(uri), None) => {
                    check_url(uri)
                        .map_err(|e| Rejection::invalid(reason::INVALID, format!("spec.auth.jwt.jwksUri {e}.")))?;
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(Rejection::invalid(
                        reason::INVALID,
                        "spec.auth.jwt needs exactly one of jwksUri or jwksSecretRef.",
                    ));
                }
            }
            for (i, mapping) in jwt.claim_headers.iter().enumerate() {
                let header = mapping.header.to_ascii_lowercase();
                let valid = http::HeaderName::from_bytes(header.as_bytes()).is_ok();
                // NB: identity headers are the gateway's alone, and a
                // claim must not replace what says who the caller is.
                if !valid || header.starts_with("x-sluice-") || header == "authorization" || header == "host" {
                    return Err(Rejection::invalid(
                        reason::INVALID,
                        format!(
                            "spec.auth.jwt.claimHeaders[{i}].header {:?} is not a header a claim may set.",
                            mapping.header
                        ),
                    ));
                }
            }
            Some(jwt)
        }
        AuthMode::None | AuthMode::ApiKey => None,
    };
    let jwks = match jwt.as_ref().and_then(|j| j.jwks_secret_ref.as_ref()) {
        None => None,
        Some(reference) => {
            let field = "spec.auth.jwt.jwksSecretRef";
            let secret = index.secret(namespace, &reference.name).ok_or_else(|| {
                Rejection::unresolved(
                    reason::SECRET_NOT_FOUND,
                    format!("{field}: Secret {namespace}/{} does not exist.", reference.name),
                )
            })?;
            let document = secret_value(secret, &reference.key).ok_or_else(|| {
                Rejection::unresolved(
                    reason::SECRET_NOT_FOUND,
                    format!("{field}: Secret {namespace}/{} has no key {:?}.", reference.name, reference.key),
                )
            })?;
            let parsed: serde_json::Value = serde_json::from_str(&document).map_err(|e| {
                Rejection::invalid(
                    reason::INVALID,
                    format!("{field}: the Secret's {:?} is not JSON: {e}.", reference.key),
                )
            })?;
            if !parsed.get("keys").is_some_and(serde_json::Value::is_array) {
                return Err(Rejection::invalid(
                    reason::INVALID,
                    format!("{field}: the Secret's {:?} is not a JWKS document (no \"keys\" list).", reference.key),
                ));
            }
            Some(document)
        }
    };
    Ok(AuthPolicy {
        mode: auth.mode,
        api_key_header,
        api_key_query: auth.api_key.query_param.clone(),
        jwt: jwt.map(Box::new),
        jwks,
    })
}

fn millis(d: &crds::Duration, field: &str) -> Result<u64, Rejection> {
    d.millis().ok_or_else(|| {
        Rejection::invalid(reason::INVALID, format!("{field} {:?} is not a duration (like 250ms, 5s, 1m30s).", d.0))
    })
}

fn compile_traffic(spec: &ApiRouteSpec) -> Result<TrafficPolicy, Rejection> {
    let lb = &spec.load_balancer;
    let hash_header = match (lb.policy, &lb.hash_header) {
        (LoadBalancerPolicy::ConsistentHash, None) => {
            return Err(Rejection::invalid(
                reason::INVALID,
                "spec.loadBalancer.hashHeader is required when spec.loadBalancer.policy is ConsistentHash.",
            ));
        }
        (_, Some(h)) => Some(h.to_ascii_lowercase()),
        (_, None) => None,
    };
    let retries = match &spec.retries {
        Some(r) => {
            let mut retry_on = r.retry_on.clone();
            retry_on.sort();
            retry_on.dedup();
            Some(RetryPolicy {
                attempts: r.attempts,
                retry_on,
                per_try_timeout_ms: r
                    .per_try_timeout
                    .as_ref()
                    .map(|d| millis(d, "spec.retries.perTryTimeout"))
                    .transpose()?,
                backoff_ms: millis(&r.backoff, "spec.retries.backoff")?,
                budget_percent: r.budget_percent.clamp(1, 100),
                non_idempotent: r.non_idempotent,
            })
        }
        None => None,
    };
    let passive_health = match &spec.passive_health {
        Some(p) => Some(PassiveHealthPolicy {
            consecutive_failures: p.consecutive_failures.max(1),
            base_ejection_ms: millis(&p.base_ejection, "spec.passiveHealth.baseEjection")?,
            max_ejection_percent: p.max_ejection_percent.min(100),
        }),
        None => None,
    };
    Ok(TrafficPolicy {
        load_balancer: lb.policy,
        hash_header,
        connect_timeout_ms: millis(&spec.timeouts.connect, "spec.timeouts.connect")?,
        request_timeout_ms: millis(&spec.timeouts.request, "spec.timeouts.request")?,
        idle_timeout_ms: millis(&spec.timeouts.idle, "spec.timeouts.idle")?,
        retries: retries.map(Box::new),
        passive_health,
    })
}

fn check_headers(headers: &[HeaderValue], field: &str) -> Result<(), Rejection> {
    for (i, h) in headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("{field}[{i}].name {:?} is not a header name.", h.name),
            ));
        }
        if http::HeaderValue::from_str(&h.value).is_err() {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("{field}[{i}].value of {} has characters a header cannot carry.", h.name),
            ));
        }
    }
    Ok(())
}

fn lower_sorted(names: &[String], field: &str) -> Result<Vec<String>, Rejection> {
    let mut out = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(Rejection::invalid(reason::INVALID, format!("{field}[{i}] {name:?} is not a header name.")));
        }
        out.insert(lower);
    }
    Ok(out.into_iter().collect())
}

fn compile_header_transform(t: &HeaderTransform, field: &str) -> Result<HeaderTransform, Rejection> {
    check_headers(&t.set_headers, &format!("{field}.setHeaders"))?;
    check_headers(&t.add_headers, &format!("{field}.addHeaders"))?;
    let lower = |hs: &[HeaderValue]| {
        hs.iter().map(|h| HeaderValue { name: h.name.to_ascii_lowercase(), value: h.value.clone() }).collect()
    };
    Ok(HeaderTransform {
        set_headers: lower(&t.set_headers),
        add_headers: lower(&t.add_headers),
        remove_headers: lower_sorted(&t.remove_headers, &format!("{field}.removeHeaders"))?,
    })
}

fn compile_request_transform(spec: &ApiRouteSpec, matches: &[Match]) -> Result<Option<RequestTransform>, Rejection> {
    let Some(t) = &spec.request_transform else { return Ok(None) };
    let headers = compile_header_transform(&t.headers, "spec.requestTransform")?;
    let rewrite_path = match &t.rewrite_path {
        None => None,
        Some(r) => match (&r.replace_prefix, &r.replace_full) {
            (Some(prefix), None) => {
                if matches.iter().any(|m| m.path_type != PathMatchType::PathPrefix) {
                    return Err(Rejection::invalid(
                        reason::INVALID,
                        "spec.requestTransform.rewritePath.replacePrefix needs every match to be a PathPrefix match.",
                    ));
                }
                Some(PathRewrite::ReplacePrefix(compile_path(
                    PathMatchType::Exact,
                    prefix,
                    "spec.requestTransform.rewritePath.replacePrefix",
                )?))
            }
            (None, Some(full)) => Some(PathRewrite::ReplaceFull(compile_path(
                PathMatchType::Exact,
                full,
                "spec.requestTransform.rewritePath.replaceFull",
            )?)),
            _ => {
                return Err(Rejection::invalid(
                    reason::INVALID,
                    "spec.requestTransform.rewritePath must set exactly one of replacePrefix or replaceFull.",
                ));
            }
        },
    };
    Ok(Some(RequestTransform {
        headers,
        rewrite_path,
        set_query: t.set_query.clone(),
        remove_query: t.remove_query.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
    }))
}

/// Resolves `spec.tls` into certificates.
fn compile_tls(
    index: &Index<'_>,
    namespace: &str,
    spec: &ApiRouteSpec,
    hosts: &[String],
) -> Result<Vec<Certificate>, Rejection> {
    let mut out = Vec::new();
    for (i, tls) in spec.tls.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let tls_hosts = compile_hosts(&tls.hosts, &format!("{field}.hosts"))?;
        if let Some(h) = tls_hosts.iter().find(|h| !hosts.contains(h)) {
            return Err(Rejection::invalid(
                reason::INVALID,
                format!("{field}.hosts has {h}, which is not in spec.hosts."),
            ));
        }
        out.push(tls_secret(index, namespace, &tls.secret_name, tls_hosts, &format!("{field}.secretName"))?);
    }
    Ok(out)
}

/// Reads a `kubernetes.io/tls` Secret into a certificate for `hosts`.
pub fn tls_secret(
    index: &Index<'_>,
    namespace: &str,
    name: &str,
    hosts: Vec<String>,
    field: &str,
) -> Result<Certificate, Rejection> {
    let secret = index.secret(namespace, name).ok_or_else(|| {
        Rejection::unresolved(reason::SECRET_NOT_FOUND, format!("{field}: Secret {namespace}/{name} does not exist."))
    })?;
    if secret.type_.as_deref().is_some_and(|t| t != "kubernetes.io/tls") {
        return Err(Rejection::unresolved(
            reason::INVALID_CERTIFICATE,
            format!(
                "{field}: Secret {namespace}/{name} has type {:?}, not kubernetes.io/tls.",
                secret.type_.as_deref().unwrap_or_default()
            ),
        ));
    }
    let cert = secret_value(secret, "tls.crt").unwrap_or_default();
    let key = secret_value(secret, "tls.key").unwrap_or_default();
    if !cert.contains("-----BEGIN CERTIFICATE-----") || !key.contains("-----BEGIN") || !key.contains("PRIVATE KEY") {
        return Err(Rejection::unresolved(
            reason::INVALID_CERTIFICATE,
            format!(
                "{field}: Secret {namespace}/{name} must hold a PEM certificate in tls.crt and a PEM private key in tls.key."
            ),
        ));
    }
    Ok(Certificate {
        secret: ObjectRef::new("Secret", namespace, name),
        hosts,
        cert_pem: cert,
        key_pem: SecretString::new(key),
    })
}

/// A missing OpenAPI document is reported but does not stop traffic: the
/// document only feeds the catalog.
fn check_openapi(index: &Index<'_>, namespace: &str, spec: &ApiRouteSpec) -> Option<Rejection> {
    let source = spec.openapi.as_ref()?;
    match (&source.inline, &source.config_map_ref) {
        (Some(_), None) => None,
        (None, Some(r)) => {
            let found = index
                .config_map(namespace, &r.name)
                .is_some_and(|cm| cm.data.as_ref().is_some_and(|d| d.contains_key(&r.key)));
            (!found).then(|| {
                Rejection::unresolved(
                    reason::CONFIG_MAP_NOT_FOUND,
                    format!(
                        "spec.openapi.configMapRef: ConfigMap {namespace}/{} has no key {:?}; the catalog shows no document, traffic is unaffected.",
                        r.name, r.key
                    ),
                )
            })
        }
        _ => Some(Rejection::invalid(
            reason::INVALID,
            "spec.openapi must set exactly one of inline or configMapRef; the catalog shows no document, traffic is unaffected.",
        )),
    }
}

/// The routes that survive conflicts, and their certificates.
pub struct Accepted {
    pub routes: Vec<Route>,
    pub certificates: Vec<Certificate>,
}

/// Settles conflicts: oldest source first, each source claims every
/// host + method + match it serves (and every TLS host it brings); a source
/// that hits an earlier claim is rejected whole, naming the winner.
pub fn resolve_conflicts(candidates: Vec<Candidate>, out: &mut Output) -> Accepted {
    let candidates = super::sorted_by(candidates, |a, b| {
        (&a.age, &a.route.source, &a.route.id).cmp(&(&b.age, &b.route.source, &b.route.id))
    });
    // Claims point into `owners`, so a claim costs one String.
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    let mut owners: Vec<ObjectRef> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut tls_claims: BTreeMap<String, (ObjectRef, ObjectRef)> = BTreeMap::new();
    let mut certificates: BTreeMap<ObjectRef, Certificate> = BTreeMap::new();
    let mut routes = Vec::with_capacity(candidates.len());

    // Group candidates of one source (an Ingress yields several).
    let mut candidates = candidates.into_iter().peekable();
    let mut group: Vec<Candidate> = Vec::new();
    while let Some(first) = candidates.next() {
        group.clear();
        group.push(first);
        while let Some(next) = candidates.next_if(|c| c.route.source == group[0].route.source) {
            group.push(next);
        }
        let source = group[0].route.source.clone();
        let generation = group[0].generation;
        keys.clear();
        for c in &group {
            claim_keys(&c.route, &mut keys);
        }
        let older = out.older;
        let conflict = keys.iter().find_map(|key| {
            claims.get(key).map(|&owner| &owners[owner]).filter(|owner| **owner != source).map(|owner| {
                format!(
                    "{source} serves {key}, which {owner} already serves; {owner} {older} and wins, so this one is not served."
                )
            })
        });
        let tls_conflict = group.iter().flat_map(|c| &c.certificates).find_map(|cert| {
            cert.hosts.iter().find_map(|h| {
                tls_claims.get(h).filter(|(owner, secret)| *owner != source && *secret != cert.secret).map(|(owner, secret)| {
                    format!("TLS host {h} already uses the certificate in {secret} from {owner}, which {older} and wins.")
                })
            })
        });
        if let Some(message) = conflict.or(tls_conflict) {
            out.reject(&source, generation, Rejection::invalid(reason::CONFLICTED, message));
            continue;
        }
        owners.push(source.clone());
        for key in keys.drain(..) {
            claims.insert(key, owners.len() - 1);
        }
        let mut warning = None;
        for candidate in group.drain(..) {
            for cert in candidate.certificates {
                for h in &cert.hosts {
                    tls_claims.entry(h.clone()).or_insert_with(|| (source.clone(), cert.secret.clone()));
                }
                let entry = certificates
                    .entry(cert.secret.clone())
                    .or_insert_with(|| Certificate { hosts: Vec::new(), ..cert.clone() });
                for h in cert.hosts {
                    if !entry.hosts.contains(&h) {
                        entry.hosts.push(h);
                    }
                }
                entry.hosts.sort();
            }
            warning = warning.or(candidate.warning);
            routes.push(candidate.route);
        }
        if let Some(Rejection(condition)) = warning {
            out.status_mut(&source, generation).set(condition);
        }
        out.accept(&source, generation);
    }
    // A certificate may only serve hosts its route claimed first.
    let certificates = certificates
        .into_values()
        .map(|mut c| {
            c.hosts.retain(|h| tls_claims.get(h).is_some_and(|(_, s)| *s == c.secret));
            c
        })
        .filter(|c| !c.hosts.is_empty())
        .collect();
    Accepted { routes, certificates }
}

/// Every (host, method, match) a route serves, as a conflict key that
/// reads as a description ("host api.test GET prefix /v1").
fn claim_keys(route: &Route, keys: &mut Vec<String>) {
    let any_host = ["(any)".to_owned()];
    let hosts: &[String] = if route.hosts.is_empty() { &any_host } else { &route.hosts };
    for host in hosts {
        for m in &route.matches {
            let kind = match m.path_type {
                PathMatchType::Exact => "path",
                PathMatchType::PathPrefix => "prefix",
                PathMatchType::RegularExpression => "regex",
            };
            let extra = if m.headers.is_empty() && m.query_params.is_empty() {
                String::new()
            } else {
                format!(" with headers {:?} and query {:?}", m.headers, m.query_params)
            };
            if m.methods.is_empty() {
                keys.push(format!("host {host} (any method) {kind} {}{extra}", m.path));
            }
            for method in &m.methods {
                keys.push(format!("host {host} {} {kind} {}{extra}", method.as_str(), m.path));
            }
        }
    }
}
