//! JWT authentication over real sockets: tokens signed with RSA, ECDSA and
//! Ed25519 keys published as a JWKS document by a test issuer; every bad
//! token gets a 401 with a stable problem type and reaches no upstream.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "payments-api";
const RSA_PEM: &str = include_str!("data/jwt-test-rsa.pem");
const RSA_PUBLIC_PEM: &str = include_str!("data/jwt-test-rsa.pub.pem");
const RSA_N: &str = "kDAClHKPtAL8seQEDIQsInnIr56qS2fwibKeK5aOEC0R2CW_h-tcFc7sM2P9GX5m5-aekA-eIormsIVzXjEYrtJT-9imGf4n9icItyu6zZnlP1E22q8UqOg45qGa-QphX4PbiEbkYETfROjyeOBTkfBdid0Do9zTCxJZFkRCY0Nac7YlkUv72QKg-zkSpJAJB3z0F_oy6YfbXENlI5us2VvT8OQhZkmB3lHtur5TxiSFxxZ54sq1EkF3wCyJj5dGrI190FLmbIkZtqOMsIC3z7PLu-L87GlSmL_ZssR6Z8y8O7N9BvV0RjLUkYUtIDGhwU_TFK2LszdaJHAGXfJcaw";

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The issuer's signing keys, and the JWKS document that publishes them.
struct Keys {
    ec: (EncodingKey, serde_json::Value),
    ed: (EncodingKey, serde_json::Value),
    rsa: (EncodingKey, serde_json::Value),
}

impl Keys {
    fn new() -> Keys {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let point = ec.public_key_raw();
        let ec_jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65])});
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let ed_jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA",
            "x": b64url(ed.public_key_raw())});
        let rsa_jwk = serde_json::json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": RSA_N, "e": "AQAB"});
        Keys {
            ec: (EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC PEM"), ec_jwk),
            ed: (EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("Ed PEM"), ed_jwk),
            rsa: (EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("RSA PEM"), rsa_jwk),
        }
    }

    fn jwks(&self) -> String {
        serde_json::json!({"keys": [self.ec.1, self.ed.1, self.rsa.1]}).to_string()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn claims(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
    let mut claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "azp": "web-client", "sub": "user-42",
        "exp": now() + 300, "nbf": now() - 10})
    .as_object()
    .cloned()
    .expect("object");
    edit(&mut claims);
    serde_json::Value::Object(claims)
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("signed")
}

/// A JWKS server that counts its fetches and can be switched off.
struct Issuer {
    upstream: Upstream,
    fetches: Arc<AtomicUsize>,
    document: Arc<Mutex<Option<String>>>,
}

async fn issuer(document: String) -> Issuer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let document = Arc::new(Mutex::new(Some(document)));
    let (f, d) = (fetches.clone(), document.clone());
    let upstream = Upstream::start(move |_| {
        f.fetch_add(1, Ordering::SeqCst);
        match d.lock().expect("lock").clone() {
            Some(body) => Response::new(Full::new(Bytes::from(body))),
            None => {
                let mut down = Response::new(Full::new(Bytes::from_static(b"down")));
                *down.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                down
            }
        }
    })
    .await;
    Issuer { upstream, fetches, document }
}

fn platform(jwks: &str, upstream: &str, mode: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: {{ name: payments }}\nspec:\n  namespaces: [payments]\n  hostnames: [pay.test]\n  apps: [{{ name: console }}]\n---\napiVersion: sluice.dev/v1alpha1\nkind: Tenant\nmetadata: {{ name: shop }}\nspec:\n  namespaces: [shop]\n  apps: [{{ name: web, clientIds: [web-client] }}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: web-key, namespace: shop, labels: {{ sluice.dev/app: web }} }}\ntype: sluice.dev/api-key\nstringData: {{ api-key: sk-web }}\n---\napiVersion: sluice.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{ name: orders, namespace: payments }}\nspec:\n  hosts: [pay.test]\n  auth:\n    mode: {mode}\n    jwt:\n      issuer: {ISSUER}\n      jwksUri: {jwks}/jwks\n      audiences: [{AUDIENCE}]\n      claimHeaders: [{{ claim: sub, header: x-user }}]\n  backend: {{ upstreams: [{{ url: {upstream} }}] }}\n"
    )
}

async fn call(proxy: &Proxy, authorization: &[&str], extra: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(proxy.url("/orders")).header("host", "pay.test");
    for value in authorization {
        request = request.header("authorization", *value);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::new())).expect("request")).await
}

#[tokio::test]
async fn tokens_from_the_issuer_let_its_apps_in_with_every_key_type() {
    let keys = Keys::new();
    let jwks = issuer(keys.jwks()).await;
    let upstream = Upstream::named("orders").await;
    let proxy = Proxy::start(&platform(&jwks.upstream.url(), &upstream.url(), "Jwt"));
    let good = claims(|_| {});
    for (alg, kid, key) in [
        (Algorithm::ES256, "ec-1", &keys.ec.0),
        (Algorithm::EdDSA, "ed-1", &keys.ed.0),
        (Algorithm::RS256, "rsa-1", &keys.rsa.0),
    ] {
        let token = sign(alg, kid, key, &good);
        let answer = call(&proxy, &[&format!("Bearer {token}")], &[("x-user", "forged")]).await;
        assert_eq!(answer.status, 200, "{alg:?}: {}", answer.text());
        let seen = upstream.last();
        let h = |n: &str| seen.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(h("x-sluice-tenant").as_deref(), Some("shop"));
        assert_eq!(h("x-sluice-app").as_deref(), Some("web"));
        assert_eq!(h("x-sluice-auth").as_deref(), Some("jwt"));
        assert_eq!(h("x-user").as_deref(), Some("user-42"), "the claim, not the client's header");
        assert_eq!(h("authorization"), None, "the token is not forwarded");
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "the key set is fetched once and kept");

    // The issuer goes down: the keys held keep working.
    *jwks.document.lock().expect("lock") = None;
    let token = sign(Algorithm::ES256, "ec-1", &keys.ec.0, &good);
    assert_eq!(call(&proxy, &[&format!("Bearer {token}")], &[]).await.status, 200);
    // Tokens naming unknown key ids refetch the set at most once per
    // interval, however many arrive.
    for i in 0..20 {
        let token = sign(Algorithm::ES256, &format!("rotated-{i}"), &keys.ec.0, &good);
        let answer = call(&proxy, &[&format!("Bearer {token}")], &[]).await;
        assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (401, "invalid-token"));
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= 2, "{} fetches", jwks.fetches.load(Ordering::SeqCst));
}

#[tokio::test]
async fn every_bad_token_gets_a_401_of_its_own_and_reaches_no_upstream() {
    let keys = Keys::new();
    let jwks = issuer(keys.jwks()).await;
    let upstream = Upstream::named("orders").await;
    let proxy = Proxy::start(&platform(&jwks.upstream.url(), &upstream.url(), "Jwt"));
    let ec = |claims: &serde_json::Value| sign(Algorithm::ES256, "ec-1", &keys.ec.0, claims);
    let good = ec(&claims(|_| {}));
    let (head, rest) = good.split_once('.').expect("a JWT");
    let (payload, signature) = rest.split_once('.').expect("a JWT");
    let tampered_payload = b64url(claims(|c| drop(c.insert("azp".into(), "other".into()))).to_string().as_bytes());
    let none_head = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    // HS256 "signed" with the issuer's RSA public key as the secret: the
    // algorithm-confusion attack.
    let confused =
        sign(Algorithm::HS256, "rsa-1", &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()), &claims(|_| {}));
    let cases: Vec<(String, &str)> = vec![
        (ec(&claims(|c| drop(c.insert("exp".into(), (now() - 120).into())))), "token-expired"),
        (ec(&claims(|c| drop(c.insert("nbf".into(), (now() + 120).into())))), "token-not-yet-valid"),
        (ec(&claims(|c| drop(c.insert("aud".into(), "another-api".into())))), "invalid-audience"),
        (ec(&claims(|c| drop(c.insert("iss".into(), "https://evil.test".into())))), "invalid-issuer"),
        (ec(&claims(|c| drop(c.remove("exp")))), "invalid-token"),
        (format!("{none_head}.{payload}."), "invalid-token"),
        (confused, "unsupported-algorithm"),
        (format!("{head}.{tampered_payload}.{signature}"), "invalid-token"),
        (format!("{head}.{payload}.{}", "A".repeat(10_000)), "invalid-token"),
        ("abc.def.ghi".to_owned(), "invalid-token"),
    ];
    for (token, kind) in &cases {
        let answer = call(&proxy, &[&format!("Bearer {token}")], &[]).await;
        assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (401, *kind), "{token:.60}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"sluice\""));
    }
    let headers: [(&[&str], &str); 3] = [
        (&[], "missing-credentials"),
        (&["Basic d2ViOmtleQ=="], "invalid-authorization"),
        (&[&format!("Bearer {good}"), &format!("Bearer {good}")], "ambiguous-credentials"),
    ];
    for (authorization, kind) in headers {
        let answer = call(&proxy, authorization, &[]).await;
        assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (401, kind), "{authorization:?}");
    }
    // A valid token of a client that is no tenant's app: 403.
    let stranger = ec(&claims(|c| drop(c.insert("azp".into(), "stranger".into()))));
    let answer = call(&proxy, &[&format!("Bearer {stranger}")], &[]).await;
    assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (403, "unknown-client"));
    assert_eq!(upstream.hits(), 0, "no bad token reached the upstream");
    // And the good one does.
    assert_eq!(call(&proxy, &[&format!("Bearer {good}")], &[]).await.status, 200);
}

#[tokio::test]
async fn without_the_issuers_keys_nobody_gets_in_and_api_keys_still_work_where_allowed() {
    let keys = Keys::new();
    let jwks = issuer(keys.jwks()).await;
    *jwks.document.lock().expect("lock") = None;
    let upstream = Upstream::named("orders").await;
    let proxy = Proxy::start(&platform(&jwks.upstream.url(), &upstream.url(), "ApiKeyOrJwt"));
    let token = sign(Algorithm::ES256, "ec-1", &keys.ec.0, &claims(|_| {}));
    let answer = call(&proxy, &[&format!("Bearer {token}")], &[]).await;
    assert_eq!((answer.status.as_u16(), problem_type(&answer).as_str()), (503, "identity-provider-unavailable"));
    // ApiKeyOrJwt: an API key, in its header or as a bearer token.
    assert_eq!(call(&proxy, &[], &[("x-api-key", "sk-web")]).await.status, 200);
    assert_eq!(call(&proxy, &["Bearer sk-web"], &[]).await.status, 200);
    // The issuer is back: tokens work.
    *jwks.document.lock().expect("lock") = Some(keys.jwks());
    let mut status = 0;
    for _ in 0..40 {
        status = call(&proxy, &[&format!("Bearer {token}")], &[]).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the keys are fetched once the issuer answers");
}

#[tokio::test]
async fn keys_can_come_from_a_secret_instead_of_a_url() {
    let keys = Keys::new();
    let upstream = Upstream::named("orders").await;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: issuer-keys, namespace: payments }}\nstringData:\n  jwks.json: '{}'\n---\n",
        keys.jwks()
    );
    let yaml = platform("UNUSED", &upstream.url(), "Jwt")
        .replace("      jwksUri: UNUSED/jwks\n", "      jwksSecretRef: { name: issuer-keys }\n");
    assert!(yaml.contains("jwksSecretRef"), "{yaml}");
    let proxy = Proxy::start(&format!("{secret}{yaml}"));
    let token = sign(Algorithm::EdDSA, "ed-1", &keys.ed.0, &claims(|_| {}));
    let answer = call(&proxy, &[&format!("Bearer {token}")], &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let forged = sign(
        Algorithm::ES256,
        "ec-1",
        &EncodingKey::from_ec_pem(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key").serialize_pem().as_bytes(),
        )
        .expect("pem"),
        &claims(|_| {}),
    );
    let answer = call(&proxy, &[&format!("Bearer {forged}")], &[]).await;
    assert_eq!(
        (answer.status.as_u16(), problem_type(&answer).as_str()),
        (401, "invalid-token"),
        "another key's signature"
    );
}
