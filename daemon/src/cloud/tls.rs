//! The TLS client configuration for the cloud endpoints: the configured CA file (bounded,
//! PEM) or the system's roots, rustls with the `ring` provider (no aws-lc, so it
//! cross-compiles without cmake), ALPN offering HTTP/1.1 only.

use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsConnector;

use super::config::CloudConfigError;

/// Largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// The TLS connector: the configured CA file, or the system's roots; ring as the crypto
/// provider (no aws-lc, so it cross-compiles without cmake); ALPN offering HTTP/1.1 only.
pub(crate) fn tls_connector(ca_file: &Path) -> Result<TlsConnector, CloudConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            // A malformed system certificate is skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(CloudConfigError::Tls(
                "no system CA certificates found; install ca-certificates or set cloud.ca_file"
                    .into(),
            ));
        }
    } else {
        let ca_err = |message: String| CloudConfigError::CaFile {
            path: ca_file.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(ca_file).map_err(|e| ca_err(e.to_string()))?;
        let mut pem = Vec::new();
        file.take(MAX_CA_FILE_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(|e| ca_err(e.to_string()))?;
        if pem.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(ca_err(format!("larger than {MAX_CA_FILE_BYTES} bytes")));
        }
        for cert in rustls_pemfile::certs(&mut BufReader::new(&pem[..])) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ca_err("holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
