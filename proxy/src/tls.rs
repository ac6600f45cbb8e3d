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
    /// Used when the client sends no SNI: the first certificate.
    fallback: Option<Arc<CertifiedKey>>,
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
            if out.fallback.is_none() {
                out.fallback = Some(key.clone());
            }
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

    /// The certificate for a server name.
    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else { return self.fallback.clone() };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, key)| key.clone())
    }

    /// Whether there is any certificate.
    pub fn is_empty(&self) -> bool {
        self.fallback.is_none()
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
/// time, so certificate changes need no listener restart.
#[derive(Debug)]
pub struct SnapshotResolver(pub Arc<Gateway>);

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.current.load();
        current.as_ref()?.certificates.find(hello.server_name())
    }
}

/// The server TLS config: SNI from the snapshot, ALPN h2 then http/1.1.
pub fn server_config(gateway: Arc<Gateway>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let mut config = builder.with_no_client_auth().with_cert_resolver(Arc::new(SnapshotResolver(gateway)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
