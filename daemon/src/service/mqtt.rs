//! The MQTT connection: client options from the configuration (persistent session, manual
//! acknowledgements, raised packet size, last will, credentials) and TLS through rustls
//! with the `ring` provider (it cross-compiles to aarch64 without a C toolchain dance).

use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::{TlsConfiguration, Transport};
use secrecy::ExposeSecret;

use crate::config::Validated;

/// Why the MQTT connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, MqttSetupError> {
    std::fs::read(path).map_err(|e| MqttSetupError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The rustls client configuration of the main broker.
fn tls_config(v: &Validated) -> Result<rustls::ClientConfig, MqttSetupError> {
    let m = &v.config.mqtt;
    tls_client_config(&m.ca_file, &m.client_cert, &m.client_key)
}

/// A rustls client configuration: the CA file's certificates (empty path: the system's
/// roots), and a client certificate and key for mutual TLS (empty paths: none).
pub fn tls_client_config(
    ca_file: &std::path::Path,
    client_cert: &std::path::Path,
    client_key: &std::path::Path,
) -> Result<rustls::ClientConfig, MqttSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(MqttSetupError::Tls(
                "no system CA certificates found; set mqtt.ca_file".into(),
            ));
        }
    } else {
        let pem = read_pem("CA file", ca_file)?;
        for cert in rustls_pemfile::certs(&mut BufReader::new(&pem[..])) {
            let cert = cert.map_err(|e| MqttSetupError::File {
                what: "CA file",
                path: ca_file.display().to_string(),
                message: e.to_string(),
            })?;
            roots
                .add(cert)
                .map_err(|e| MqttSetupError::Tls(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(MqttSetupError::File {
                what: "CA file",
                path: ca_file.display().to_string(),
                message: "holds no PEM certificate".into(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    if client_cert.as_os_str().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let cert_pem = read_pem("client certificate", client_cert)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&cert_pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MqttSetupError::Tls(format!("client certificate: {e}")))?;
    let key_pem = read_pem("client key", client_key)?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
        .map_err(|e| MqttSetupError::Tls(format!("client key: {e}")))?
        .ok_or_else(|| MqttSetupError::Tls("the client key file holds no private key".into()))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| MqttSetupError::Tls(format!("client certificate and key: {e}")))
}

/// Client options: persistent session so QoS 1 requests survive reconnects, manual acks
/// (a request is acknowledged once accepted), the last will marking the device offline.
pub fn options(v: &Validated) -> Result<MqttOptions, MqttSetupError> {
    let m = &v.config.mqtt;
    let mut o = MqttOptions::new(v.client_id.clone(), v.broker.host.clone(), v.broker.port);
    o.set_keep_alive(Duration::from_secs(m.keep_alive_secs));
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(m.session_expiry_secs));
    o.set_max_packet_size(Some(m.max_packet_bytes));
    o.set_manual_acks(true);
    o.set_connection_timeout(10);
    o.set_last_will(LastWill::new(
        v.topics.status.clone(),
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if !m.username.is_empty() {
        let password = v
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .unwrap_or_default();
        o.set_credentials(m.username.clone(), password);
    }
    if v.broker.tls {
        let tls = tls_config(v)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(o)
}
