//! The `[http]` section: the OpenAI- and Ollama-compatible HTTP front end's address, its
//! API key's sources and its limits. Off unless `listen` (or `serve --http`) names an
//! address; a bare port listens on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `HOST:PORT`, `[IPv6]:PORT`, or a bare `PORT` (on 127.0.0.1); empty: no HTTP front end.
    pub listen: String,
    /// A file holding the API key clients must send (`Authorization: Bearer KEY`); mode
    /// 0600 or stricter. Required to listen on anything but loopback.
    pub api_key_file: PathBuf,
    /// The systemd credential holding the API key (`LoadCredential=http-api-key:...`),
    /// looked for before `api_key_file`.
    pub api_key_credential: String,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and its TLS handshake), and then
    /// its body.
    pub client_timeout_secs: u64,
    /// HTTPS: the server's certificate chain (PEM, leaf first); with `tls_key`.
    pub tls_cert: PathBuf,
    /// HTTPS: the certificate's private key (PEM).
    pub tls_key: PathBuf,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: String::new(),
            api_key_file: PathBuf::new(),
            api_key_credential: "http-api-key".into(),
            max_connections: 64,
            client_timeout_secs: 30,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl HttpSection {
    /// The address to listen on, `None` when the front end is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        parse_listen(&self.listen)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(1..=65536).contains(&self.max_connections) {
            return Err(invalid(
                "http.max_connections",
                "must be between 1 and 65536",
            ));
        }
        if !(1..=3600).contains(&self.client_timeout_secs) {
            return Err(invalid(
                "http.client_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return Err(invalid(
                "http.tls_cert",
                "give both http.tls_cert and http.tls_key, or neither",
            ));
        }
        Ok(())
    }
}

/// Parses `http.listen` (see [`HttpSection::listen`]).
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    // A host name: only `localhost` is resolved here (no DNS at start).
    if let Some(port) = text.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    Err(invalid(
        "http.listen",
        format!(
            "{text:?} is not an address to listen on: give PORT (loopback), IP:PORT, \
             [IPv6]:PORT or localhost:PORT"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let addr = |s: &str| parse_listen(s).unwrap().map(|a| a.to_string());
        assert_eq!(addr(""), None);
        assert_eq!(addr("8080").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(addr("localhost:9").as_deref(), Some("127.0.0.1:9"));
        assert_eq!(addr("0.0.0.0:11434").as_deref(), Some("0.0.0.0:11434"));
        assert_eq!(addr("[::1]:80").as_deref(), Some("[::1]:80"));
        let err = parse_listen("board.local:80").unwrap_err().to_string();
        assert!(
            err.starts_with("http.listen:") && err.contains("board.local"),
            "{err}"
        );
        assert!(
            parse_listen("99999")
                .unwrap_err()
                .to_string()
                .contains("99999")
        );
    }

    #[test]
    fn bounds_name_the_field() {
        let bad = |f: fn(&mut HttpSection)| {
            let mut s = HttpSection::default();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(|s| s.max_connections = 0).starts_with("http.max_connections:"));
        assert!(bad(|s| s.client_timeout_secs = 0).starts_with("http.client_timeout_secs:"));
        assert!(bad(|s| s.tls_cert = "c.pem".into()).contains("http.tls_key"));
        HttpSection::default().validate().unwrap();
    }
}
