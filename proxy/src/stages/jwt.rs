//! JSON Web Tokens: `Authorization: Bearer TOKEN` signed by the route's
//! issuer with an asymmetric algorithm (RS256/384/512, PS256/384/512,
//! ES256/384, EdDSA; never `none`, never an HMAC, so a public key can never
//! be used as a shared secret), with its issuer, audience, `exp` and `nbf`
//! checked (30 s of leeway). The token's client (`azp`, then `client_id`,
//! or the route's claim) must be an app of a tenant (`apps[].clientIds`):
//! that app is the caller. On `ApiKeyOrJwt` routes a bearer token that is
//! not a JWT, or a key in the route's header, is taken as an API key.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, header, request};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::Flow;
use super::auth::ApiKeyAuth;
use crate::errors::ProxyError;
use crate::exchange::{AuthMethod, Caller, Exchange};
use crate::jwks::JwksSource;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN: usize = 8 * 1024;
/// Clock skew allowed on `exp` and `nbf`, seconds.
const LEEWAY: u64 = 30;

const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

type AppNames = (Arc<str>, Arc<str>, Arc<str>);

/// Apps by OAuth client id, for the whole snapshot.
#[derive(Debug, Default)]
pub struct ClientIndex {
    /// Client id -> (tenant, app, `tenant/app`).
    by_client: HashMap<String, AppNames>,
}

impl ClientIndex {
    /// Indexes every tenant's apps by their client ids.
    pub fn new(snapshot: &snapshot::Snapshot) -> ClientIndex {
        let mut by_client = HashMap::new();
        for tenant in &snapshot.tenants {
            let name: Arc<str> = Arc::from(tenant.name.as_str());
            for app in &tenant.apps {
                let app_name: Arc<str> = Arc::from(app.name.as_str());
                let id: Arc<str> = Arc::from(format!("{name}/{app_name}"));
                for client in &app.client_ids {
                    by_client.insert(client.clone(), (name.clone(), app_name.clone(), id.clone()));
                }
            }
        }
        ClientIndex { by_client }
    }
}

/// Verifies JWTs (and API keys too, on `ApiKeyOrJwt` routes).
#[derive(Debug)]
pub struct JwtAuth {
    issuer: String,
    audiences: Vec<String>,
    client_claim: Option<String>,
    claim_headers: Vec<(String, HeaderName)>,
    forward_authorization: bool,
    jwks: Arc<JwksSource>,
    clients: Arc<ClientIndex>,
    api_keys: Option<ApiKeyAuth>,
}

impl JwtAuth {
    pub fn new(
        jwt: &crds::JwtAuth,
        jwks: Arc<JwksSource>,
        clients: &Arc<ClientIndex>,
        api_keys: Option<ApiKeyAuth>,
    ) -> Self {
        JwtAuth {
            issuer: jwt.issuer.clone(),
            audiences: jwt.audiences.clone(),
            client_claim: jwt.client_id_claim.clone(),
            claim_headers: jwt
                .claim_headers
                .iter()
                .filter_map(|m| {
                    Some((m.claim.clone(), HeaderName::from_bytes(m.header.to_ascii_lowercase().as_bytes()).ok()?))
                })
                .collect(),
            forward_authorization: jwt.forward_authorization,
            jwks,
            clients: clients.clone(),
            api_keys,
        }
    }

    pub async fn on_request(&self, ex: &mut Exchange, req: &mut request::Parts) -> Result<Flow, ProxyError> {
        let invalid = |kind: &'static str, detail: &str| ProxyError::Unauthorized { kind, detail: detail.into() };
        let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            if let Some(keys) = &self.api_keys {
                return keys.on_request(ex, req);
            }
            if req.headers.contains_key(header::AUTHORIZATION) {
                return Err(invalid("ambiguous-credentials", "send one Authorization header, not several"));
            }
            return Err(invalid("missing-credentials", "this API needs a token: send \"Authorization: Bearer TOKEN\""));
        };
        let Some(token) = super::auth::bearer(value.as_bytes()) else {
            return Err(invalid(
                "invalid-authorization",
                "the Authorization header is not \"Bearer\" followed by a token",
            ));
        };
        let is_jwt = token.iter().filter(|&&b| b == b'.').count() == 2;
        if !is_jwt && let Some(keys) = &self.api_keys {
            return keys.on_request(ex, req);
        }
        if token.len() > MAX_TOKEN {
            return Err(invalid("invalid-token", "the token is larger than this gateway accepts"));
        }
        let token = std::str::from_utf8(token).map_err(|_| invalid("invalid-token", "the token is not a JWT"))?;
        let head =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("invalid-token", "the token is not a JWT"))?;
        if !ALLOWED.contains(&head.alg) {
            return Err(invalid(
                "unsupported-algorithm",
                "the token's algorithm is not one this API accepts (RS, PS, ES or EdDSA)",
            ));
        }
        let keys = self
            .jwks
            .keys(head.kid.as_deref())
            .await
            .map_err(|e| ProxyError::IdentityUnavailable { detail: e.to_string() })?;
        let jwk = match &head.kid {
            Some(kid) => keys.find(kid),
            None => keys
                .keys
                .iter()
                .find(|k| k.common.key_algorithm.is_none_or(|a| a.to_string() == format!("{:?}", head.alg))),
        }
        .ok_or_else(|| invalid("invalid-token", "no signing key of the issuer matches the token"))?;
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{:?}", head.alg)
        {
            return Err(invalid("invalid-token", "the token's algorithm is not its key's"));
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| invalid("invalid-token", "the issuer's key cannot verify it"))?;
        let mut validation = Validation::new(head.alg);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => invalid("token-expired", "the token has expired"),
                    ErrorKind::ImmatureSignature => invalid("token-not-yet-valid", "the token is not valid yet"),
                    ErrorKind::InvalidAudience => invalid("invalid-audience", "the token is not for this API"),
                    ErrorKind::InvalidIssuer => invalid("invalid-issuer", "the token is not from this API's issuer"),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        invalid("invalid-token", &format!("the token has no {claim:?} claim"))
                    }
                    _ => invalid("invalid-token", "the token's signature or content is not valid"),
                }
            })?;
        let claims = data.claims;
        let client = match &self.client_claim {
            Some(claim) => claims.get(claim),
            None => claims.get("azp").or_else(|| claims.get("client_id")),
        }
        .and_then(serde_json::Value::as_str);
        let Some((tenant, app, id)) = client.and_then(|c| self.clients.by_client.get(c)) else {
            return Err(ProxyError::Forbidden {
                kind: "unknown-client",
                detail: "the token's client is not an app of any tenant".into(),
            });
        };
        let subject = claims.get("sub").and_then(serde_json::Value::as_str).map(|s| Arc::from(&s[..s.len().min(128)]));
        ex.caller = Some(Arc::new(Caller::new(tenant.clone(), app.clone(), id.clone(), subject, AuthMethod::Jwt)));
        for (claim, name) in &self.claim_headers {
            let value = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => HeaderValue::from_str(s).ok(),
                Some(serde_json::Value::Number(n)) => HeaderValue::from_str(&n.to_string()).ok(),
                Some(serde_json::Value::Bool(b)) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
                _ => None,
            };
            match value {
                Some(value) => req.headers.insert(name.clone(), value),
                // NB: a client's own copy never stands in for a claim.
                None => req.headers.remove(name),
            };
        }
        if !self.forward_authorization {
            req.headers.remove(header::AUTHORIZATION);
        }
        Ok(Flow::Continue)
    }
}
