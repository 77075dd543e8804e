//! HTTPS for the HTTP front end: the certificate chain and private key from PEM files
//! (`http.tls_cert`, `http.tls_key`), TLS 1.2 and 1.3 with rustls' `ring` provider.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::HttpSetupError;

/// Reads a PEM file, naming it in the error.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, HttpSetupError> {
    std::fs::read(path).map_err(|e| HttpSetupError::Tls(format!("{what} {}: {e}", path.display())))
}

/// The acceptor for `cert` (the server's chain, leaf first) and `key`.
pub(super) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, HttpSetupError> {
    let tls = |m: String| HttpSetupError::Tls(m);
    let cert_pem = read_pem("http.tls_cert", cert)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&cert_pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("http.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls(format!(
            "http.tls_cert {} holds no certificate",
            cert.display()
        )));
    }
    let key_pem = read_pem("http.tls_key", key)?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
        .map_err(|e| tls(format!("http.tls_key {}: {e}", key.display())))?
        .ok_or_else(|| {
            tls(format!(
                "http.tls_key {} holds no private key",
                key.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(format!("http.tls_cert and http.tls_key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
