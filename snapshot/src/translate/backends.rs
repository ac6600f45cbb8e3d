//! Backends: Services (via EndpointSlices), URLs, AI models, direct answers.

use std::collections::BTreeSet;

use crds::{AiBackend, BackendTls, ServiceBackend, UrlBackend};
use k8s_openapi::api::core::v1::ServicePort;

use super::index::{Index, secret_value};
use super::providers::{Providers, check_url};
use super::routes::tls_secret;
use crate::model::{AiRoute, AiTarget, UpstreamGroup, UpstreamTls};
use crate::status::{Rejection, reason};

/// How a Service port is named by the referrer.
pub enum PortRef<'a> {
    /// `spec.ports[].port`.
    Number(i32),
    /// `spec.ports[].name`.
    Name(&'a str),
}

/// Resolves one Service port to its ready endpoints.
pub fn service_port(
    index: &Index<'_>,
    namespace: &str,
    name: &str,
    port: PortRef<'_>,
    weight: u32,
    backend_tls: Option<&BackendTls>,
    field: &str,
) -> Result<UpstreamGroup, Rejection> {
    let service = index.service(namespace, name).ok_or_else(|| {
        Rejection::unresolved(reason::BACKEND_NOT_FOUND, format!("{field}: Service {namespace}/{name} does not exist."))
    })?;
    let spec = service.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let found: Option<&ServicePort> = match &port {
        PortRef::Number(n) => ports.iter().find(|p| p.port == *n),
        PortRef::Name(n) => ports.iter().find(|p| p.name.as_deref() == Some(n)),
    };
    let is_external = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let label = match &port {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(n) => (*n).to_owned(),
    };
    if is_external {
        // ExternalName Services have no EndpointSlices: the proxy resolves
        // the external name itself, on the port asked for.
        let external = spec.and_then(|s| s.external_name.clone()).unwrap_or_default();
        let number = match (&port, found) {
            (_, Some(p)) => p.port,
            (PortRef::Number(n), None) => *n,
            (PortRef::Name(_), None) => {
                return Err(Rejection::unresolved(
                    reason::PORT_NOT_FOUND,
                    format!("{field}: Service {namespace}/{name} has no port named {label}."),
                ));
            }
        };
        return Ok(UpstreamGroup {
            name: format!("service:{namespace}/{name}:{label}"),
            weight,
            tls: number == 443,
            host: Some(external.clone()),
            path_prefix: String::new(),
            endpoints: vec![format!("{external}:{number}")],
            tls_options: None,
            h2c: false,
        });
    }
    let service_port = found.ok_or_else(|| {
        Rejection::unresolved(
            reason::PORT_NOT_FOUND,
            format!("{field}: Service {namespace}/{name} has no port {label}."),
        )
    })?;
    let mut endpoints = BTreeSet::new();
    for slice in index.endpoint_slices(namespace, name) {
        // The slice port serving this Service port has the same name.
        let slice_port = slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == service_port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port);
        let Some(slice_port) = slice_port else { continue };
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if address.contains(':') {
                    endpoints.insert(format!("[{address}]:{slice_port}"));
                } else {
                    endpoints.insert(format!("{address}:{slice_port}"));
                }
            }
        }
    }
    let app_protocol = service_port.app_protocol.as_deref().unwrap_or("");
    let tls = backend_tls.is_some() || app_protocol == "https" || app_protocol == "kubernetes.io/wss";
    let tls_options = match tls {
        true => Some(upstream_tls(index, namespace, name, backend_tls.unwrap_or(&BackendTls::default()), field)?),
        false => None,
    };
    Ok(UpstreamGroup {
        name: format!("service:{namespace}/{name}:{}", service_port.port),
        weight,
        tls,
        host: None,
        path_prefix: String::new(),
        endpoints: endpoints.into_iter().collect(),
        tls_options,
        h2c: !tls && app_protocol == "kubernetes.io/h2c",
    })
}

/// Resolves a Service backend's TLS settings: the server name, the CA
/// bundle and the client certificate, from the route's namespace.
fn upstream_tls(
    index: &Index<'_>,
    namespace: &str,
    service: &str,
    tls: &BackendTls,
    field: &str,
) -> Result<UpstreamTls, Rejection> {
    let server_name = tls.sni.clone().unwrap_or_else(|| format!("{service}.{namespace}.svc"));
    let ca_pem = match &tls.ca {
        None => None,
        Some(ca) => {
            let (value, what) = match (&ca.secret_name, &ca.config_map_name) {
                (Some(secret), None) => (
                    index.secret(namespace, secret).and_then(|s| secret_value(s, &ca.key)),
                    format!("Secret {namespace}/{secret}"),
                ),
                (None, Some(map)) => (
                    index.config_map(namespace, map).and_then(|m| m.data.as_ref()?.get(&ca.key).cloned()),
                    format!("ConfigMap {namespace}/{map}"),
                ),
                _ => {
                    return Err(Rejection::invalid(
                        reason::INVALID_BACKEND,
                        format!("{field}.tls.ca must name exactly one of secretName and configMapName."),
                    ));
                }
            };
            let pem = value.ok_or_else(|| {
                Rejection::unresolved(
                    reason::SECRET_NOT_FOUND,
                    format!("{field}.tls.ca: {what} does not exist or has no key {}.", ca.key),
                )
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(Rejection::unresolved(
                    reason::INVALID_CERTIFICATE,
                    format!("{field}.tls.ca: {what} key {} is not a PEM certificate bundle.", ca.key),
                ));
            }
            Some(pem)
        }
    };
    let (client_cert_pem, client_key_pem) = match &tls.client_certificate_secret {
        None => (None, None),
        Some(secret) => {
            let cert =
                tls_secret(index, namespace, secret, Vec::new(), &format!("{field}.tls.clientCertificateSecret"))?;
            (Some(cert.cert_pem), Some(cert.key_pem))
        }
    };
    Ok(UpstreamTls { server_name, ca_pem, client_cert_pem, client_key_pem })
}

pub fn services(
    index: &Index<'_>,
    namespace: &str,
    backends: &[ServiceBackend],
) -> Result<Vec<UpstreamGroup>, Rejection> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            service_port(
                index,
                namespace,
                &b.name,
                PortRef::Number(i32::from(b.port)),
                b.weight,
                b.tls.as_ref(),
                &format!("spec.backend.services[{i}]"),
            )
        })
        .collect()
}

pub fn urls(backends: &[UrlBackend]) -> Result<Vec<UpstreamGroup>, Rejection> {
    // NB: sized up front (a collected `Result` starts at four slots): the
    // snapshot keeps this vector for as long as it is served.
    let mut groups = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        groups.push(url(i, b)?);
    }
    Ok(groups)
}

fn url(i: usize, b: &UrlBackend) -> Result<UpstreamGroup, Rejection> {
    {
        {
            let uri = check_url(&b.url).map_err(|e| {
                Rejection::invalid(reason::INVALID_BACKEND, format!("spec.backend.upstreams[{i}].url {e}."))
            })?;
            let tls = uri.scheme_str() == Some("https");
            let host = uri.host().unwrap_or_default().to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            // NB: http::Uri keeps IPv6 hosts in brackets, so this is a valid authority.
            let endpoint = format!("{host}:{port}");
            Ok(UpstreamGroup {
                name: b.url.clone(),
                weight: b.weight,
                tls,
                host: Some(match uri.port_u16() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.clone(),
                }),
                path_prefix: uri.path().trim_end_matches('/').to_owned(),
                endpoints: vec![endpoint],
                tls_options: None,
                h2c: false,
            })
        }
    }
}

pub fn ai(providers: &Providers, namespace: &str, ai: &AiBackend) -> Result<AiRoute, Rejection> {
    let resolve = |targets: &[crds::AiTarget], field: &str| -> Result<Vec<AiTarget>, Rejection> {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let id = format!("{namespace}/{}", t.provider);
                let Some(provider) = providers.accepted.get(&id) else {
                    let (why, what) = if providers.rejected.contains(&id) {
                        (reason::PROVIDER_NOT_ACCEPTED, "was not accepted (see its status)")
                    } else {
                        (reason::PROVIDER_NOT_FOUND, "does not exist")
                    };
                    return Err(Rejection::unresolved(why, format!("{field}[{i}].provider: AiProvider {id} {what}.")));
                };
                let model = provider
                    .models
                    .iter()
                    .find(|m| m.name == t.model || m.alias.as_deref() == Some(t.model.as_str()))
                    .ok_or_else(|| {
                        Rejection::unresolved(
                            reason::MODEL_NOT_FOUND,
                            format!("{field}[{i}].model: AiProvider {id} has no model or alias {:?}.", t.model),
                        )
                    })?;
                Ok(AiTarget { provider: id, model: model.name.clone(), weight: t.weight })
            })
            .collect()
    };
    let targets = resolve(&ai.targets, "spec.backend.ai.targets")?;
    if targets.is_empty() {
        return Err(Rejection::invalid(
            reason::INVALID_BACKEND,
            "spec.backend.ai.targets must list at least one model.",
        ));
    }
    let fallback = resolve(&ai.fallback, "spec.backend.ai.fallback")?;
    if let Some(prompt) = &ai.prompt
        && let Some(schema) = &prompt.input_schema
        && !schema.is_object()
    {
        return Err(Rejection::invalid(
            reason::INVALID_BACKEND,
            "spec.backend.ai.prompt.inputSchema must be a JSON Schema object.",
        ));
    }
    Ok(AiRoute { targets, fallback, prompt: ai.prompt.clone() })
}
