//! TLS for client connections: certificates from the snapshot, chosen by
//! SNI (exact host, then the longest wildcard), with ALPN h2 and http/1.1.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::state::Gateway;

/// Certificates of one snapshot, by host.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".suffix", key)`, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// Certificates that could not be loaded: `secret: reason`.
    pub errors: Vec<String>,
}

impl Certificates {
    /// Parses every certificate; one that does not parse is reported in
    /// `errors` and skipped.
    pub fn new(certificates: &[snapshot::Certificate]) -> Certificates {
        let mut out = Certificates::default();
        for cert in certificates {
            let key = match certified_key(&cert.cert_pem, cert.key_pem.expose()) {
                Ok(key) => Arc::new(key),
                Err(e) => {
                    out.errors.push(format!("{}: {e}", cert.secret));
                    continue;
                }
            };
            for host in &cert.hosts {
                match host.strip_prefix('*') {
                    Some(suffix) => out.wildcard.push((suffix.to_owned(), key.clone())),
                    None => {
                        out.exact.entry(host.clone()).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        out.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        out
    }

    /// The certificate for a server name. NB: a client without SNI gets
    /// none here (see [`SnapshotResolver`] for the configured default
    /// host): never some tenant's certificate by accident.
    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, key)| key.clone())
    }

    /// Whether the certificate served for `server_name` is the one for
    /// `host` (the request's host is covered by the connection's
    /// certificate).
    pub fn same_certificate(&self, server_name: Option<&str>, host: &str) -> bool {
        match (self.find(server_name), self.find(Some(host))) {
            (Some(served), Some(wanted)) => Arc::ptr_eq(&served, &wanted),
            _ => false,
        }
    }

    /// Whether there is any certificate.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let signing = any_supported_type(&key).map_err(|e| format!("tls.key is not a supported key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Picks the certificate from whatever snapshot is installed at handshake
/// time, so certificate changes need no listener restart. A client without
/// SNI gets the default host's certificate if one is configured; without
/// one, or for a name no route claims, the handshake is refused.
#[derive(Debug)]
pub struct SnapshotResolver {
    gateway: Arc<Gateway>,
    default_host: Option<String>,
}

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.gateway.current.load();
        let name = hello.server_name().or(self.default_host.as_deref());
        current.as_ref()?.certificates.find(name)
    }
}

/// The server TLS config: SNI from the snapshot, ALPN h2 then http/1.1,
/// session resumption by tickets (rotated every 6 hours) and by id.
pub fn server_config(
    gateway: Arc<Gateway>,
    default_host: Option<String>,
) -> Result<Arc<rustls::ServerConfig>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let default_host = default_host.map(|h| h.to_ascii_lowercase());
    let mut config =
        builder.with_no_client_auth().with_cert_resolver(Arc::new(SnapshotResolver { gateway, default_host }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(std::io::Error::other)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Limits;

    #[test]
    fn session_tickets_are_on() {
        let config = server_config(Gateway::new(Limits::default(), "test"), None).expect("config");
        assert!(config.ticketer.enabled());
    }
}
