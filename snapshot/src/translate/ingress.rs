//! Standard `networking.k8s.io/v1` Ingresses of Sluice's classes: each
//! path becomes a plain route (no auth, default policies).

use crds::{AuthMode, LifecycleState, PathMatchType, Visibility};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use super::backends::{self, PortRef};
use super::index::{Age, Index, names};
use super::routes::{compile_hosts, compile_path, prefix_match, tls_secret};
use super::tenants::Tenancy;
use super::{Candidate, Output};
use crate::model::{Access, AuthPolicy, Backend, Match, Route, TrafficPolicy};
use crate::status::{ObjectRef, Rejection, reason};

/// Whether an Ingress is Sluice's. Its class (`spec.ingressClassName`, or
/// the legacy `kubernetes.io/ingress.class` annotation) is `sluice`, or
/// names an IngressClass whose controller is Sluice's; an Ingress with no
/// class is Sluice's when one of Sluice's IngressClasses is the cluster's
/// default (`ingressclass.kubernetes.io/is-default-class: "true"`).
pub fn is_ours(ingress: &Ingress, classes: &[IngressClass]) -> bool {
    let ours =
        |c: &&IngressClass| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(crds::INGRESS_CONTROLLER);
    let class = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let annotation =
        ingress.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/ingress.class")).map(String::as_str);
    match class.or(annotation) {
        Some(name) => {
            name == crds::INGRESS_CLASS || classes.iter().filter(ours).any(|c| c.metadata.name.as_deref() == Some(name))
        }
        None => classes.iter().filter(ours).any(|c| {
            c.metadata.annotations.as_ref().and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
                == Some(&"true".to_owned())
        }),
    }
}

pub fn translate(index: &Index<'_>, tenancy: &Tenancy, out: &mut Output) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for ingress in index.ingresses.iter().filter(|i| is_ours(i, index.ingress_classes)) {
        let (namespace, name) = names(&ingress.metadata);
        let object = ObjectRef::new("Ingress", namespace, name);
        match compile(index, tenancy, ingress, &object) {
            Ok(mut c) => candidates.append(&mut c),
            Err(rejection) => out.reject(&object, ingress.metadata.generation, rejection),
        }
    }
    candidates
}

fn compile(
    index: &Index<'_>,
    tenancy: &Tenancy,
    ingress: &Ingress,
    object: &ObjectRef,
) -> Result<Vec<Candidate>, Rejection> {
    let (namespace, _) = names(&ingress.metadata);
    let Some(spec) = ingress.spec.as_ref() else {
        return Err(Rejection::invalid(reason::INVALID, "spec is missing."));
    };
    let tenant = tenancy.owner(namespace).map(|t| t.name.clone());
    let mut routes: Vec<(Vec<String>, Match, Backend)> = Vec::new();
    for (r, rule) in spec.rules.as_deref().unwrap_or_default().iter().enumerate() {
        let hosts = compile_hosts(rule.host.as_slice(), &format!("spec.rules[{r}].host"))?;
        tenancy.check_hosts(namespace, &hosts, &format!("spec.rules[{r}].host"))?;
        let paths = rule.http.as_ref().map(|h| h.paths.as_slice()).unwrap_or_default();
        for (p, path) in paths.iter().enumerate() {
            let field = format!("spec.rules[{r}].http.paths[{p}]");
            let kind = match path.path_type.as_str() {
                "Exact" => PathMatchType::Exact,
                "Prefix" | "ImplementationSpecific" => PathMatchType::PathPrefix,
                other => {
                    return Err(Rejection::invalid(
                        reason::INVALID,
                        format!("{field}.pathType {other:?} is not Exact, Prefix or ImplementationSpecific."),
                    ));
                }
            };
            let value = path.path.clone().unwrap_or_else(|| "/".to_owned());
            let m = Match {
                path_type: kind,
                path: compile_path(kind, &value, &format!("{field}.path"))?,
                ..prefix_match("/")
            };
            let backend = compile_backend(index, namespace, &path.backend, &format!("{field}.backend"))?;
            routes.push((hosts.clone(), m, backend));
        }
    }
    if let Some(default) = &spec.default_backend {
        let backend = compile_backend(index, namespace, default, "spec.defaultBackend")?;
        if tenant.is_some() {
            tenancy.check_hosts(namespace, &[], "spec.defaultBackend (which serves every host)")?;
        }
        routes.push((Vec::new(), prefix_match("/"), backend));
    }
    if routes.is_empty() {
        return Err(Rejection::invalid(reason::INVALID, "spec has no rules with paths and no defaultBackend."));
    }
    let mut certificates = Vec::new();
    for (i, tls) in spec.tls.as_deref().unwrap_or_default().iter().enumerate() {
        let Some(secret) = &tls.secret_name else { continue };
        let hosts = compile_hosts(tls.hosts.as_deref().unwrap_or_default(), &format!("spec.tls[{i}].hosts"))?;
        // A certificate may only be brought for hosts this namespace may serve.
        if !hosts.is_empty() {
            tenancy.check_hosts(namespace, &hosts, &format!("spec.tls[{i}].hosts"))?;
        }
        certificates.push(tls_secret(index, namespace, secret, hosts, &format!("spec.tls[{i}].secretName"))?);
    }
    let age = Age::of(&ingress.metadata);
    let count = routes.len();
    Ok(routes
        .into_iter()
        .enumerate()
        .map(|(i, (hosts, m, backend))| Candidate {
            route: Route {
                id: format!("ingress:{}#{i}", object.key()),
                source: object.clone(),
                tenant: tenant.clone(),
                version: None,
                lifecycle: LifecycleState::Published,
                visibility: Visibility::Private,
                hosts,
                matches: vec![m],
                auth: AuthPolicy {
                    mode: AuthMode::None,
                    api_key_header: "x-api-key".to_owned(),
                    api_key_query: None,
                    jwt: None,
                    jwks: None,
                },
                access: Access::default(),
                backend,
                traffic: default_traffic(),
                request_transform: None,
                response_transform: None,
                rate_limit: None,
                cache: None,
                cors: None,
                websocket: true,
                merge_slashes: true,
            },
            age: age.clone(),
            generation: ingress.metadata.generation,
            // The certificates travel with the last route of the Ingress.
            certificates: if i + 1 == count { std::mem::take(&mut certificates) } else { Vec::new() },
            warning: None,
        })
        .collect())
}

fn compile_backend(
    index: &Index<'_>,
    namespace: &str,
    backend: &IngressBackend,
    field: &str,
) -> Result<Backend, Rejection> {
    let Some(service) = &backend.service else {
        return Err(Rejection::invalid(
            reason::INVALID_BACKEND,
            format!("{field}.resource is not supported; use {field}.service."),
        ));
    };
    let port = match &service.port {
        Some(p) => match (&p.number, &p.name) {
            (Some(n), _) => PortRef::Number(*n),
            (None, Some(n)) => PortRef::Name(n),
            (None, None) => {
                return Err(Rejection::invalid(
                    reason::INVALID_BACKEND,
                    format!("{field}.service.port needs a number or name."),
                ));
            }
        },
        None => return Err(Rejection::invalid(reason::INVALID_BACKEND, format!("{field}.service.port is required."))),
    };
    let group = backends::service_port(index, namespace, &service.name, port, 1, None, &format!("{field}.service"))?;
    Ok(Backend::Upstreams { groups: vec![group] })
}

fn default_traffic() -> TrafficPolicy {
    let t = crds::Timeouts::default();
    TrafficPolicy {
        load_balancer: crds::LoadBalancerPolicy::RoundRobin,
        hash_header: None,
        connect_timeout_ms: t.connect.millis().unwrap_or(5_000),
        request_timeout_ms: t.request.millis().unwrap_or(30_000),
        idle_timeout_ms: t.idle.millis().unwrap_or(90_000),
        retries: None,
        passive_health: None,
    }
}
