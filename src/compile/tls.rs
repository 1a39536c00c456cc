//! `[server.tls]` (the listeners' certificate) and the CA files of TLS upstreams.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{read_regular, ConfigError, LoadedConfig};
use crate::snapshot::ServerTls;

pub fn server_tls(loaded: &LoadedConfig) -> Result<Option<ServerTls>, ConfigError> {
    let Some(t) = &loaded.config.server.tls else {
        return Ok(None);
    };
    let (cert, key) = (
        loaded.resolve(&t.get_ref().cert),
        loaded.resolve(&t.get_ref().key),
    );
    let certified = load_certified_key(&cert, &key).map_err(|m| {
        loaded
            .source
            .error(Some(t.span()), format!("server.tls: {m}"))
    })?;
    Ok(Some(ServerTls {
        cert,
        key,
        certified,
    }))
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(p) = rustls::crypto::CryptoProvider::get_default() {
        return p.clone();
    }
    // The same provider Pingora's listeners install; whoever is first wins, the other is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let (cert_s, key_s) = (cert.display(), key.display());
    let read = |p: &Path| read_regular(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot load {cert_s}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_s} holds no certificate (PEM expected)"));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_s} holds no usable private key (PEM expected): {e}"))?;
    let signing = crypto_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("unusable private key in {key_s}: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key_s} does not match {cert_s}: {e}"))?;
    Ok(Arc::new(certified))
}

/// CA certificates from a PEM file, each checked before use.
pub fn load_ca(path: &Path) -> Result<Arc<[CertificateDer<'static>]>, String> {
    let pem = read_regular(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
    }
    Ok(Arc::from(certs))
}
