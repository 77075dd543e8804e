//! One configured endpoint parsed into what a connection needs: scheme, host, port, the
//! `Host` header, the request path and the TLS server name. Parsing refuses what cannot be a
//! router's base URL (credentials in the authority, a query, whitespace), naming the
//! problem; the `[cloud]` settings use it to validate `endpoints`, the transport to
//! connect.

use hyper::Uri;
use hyper::header::HeaderValue;
use rustls::pki_types::ServerName;

/// A parsed endpoint: where to connect and what to send.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// As configured, without a trailing slash.
    pub(crate) base_url: String,
    pub(crate) model: String,
    /// `base_url (model)`, for messages.
    pub(crate) label: String,
    pub(crate) tls: bool,
    /// Host name or IP address to connect to (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) host_header: HeaderValue,
    /// `/v1/chat/completions`.
    pub(crate) path: String,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl Target {
    /// Parses `scheme://host[:port][/path]`; the message says what is wrong.
    pub(crate) fn parse(base_url: &str, model: &str) -> Result<Target, String> {
        if base_url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err("contains whitespace or a control character".into());
        }
        let trimmed = base_url.trim_end_matches('/');
        if trimmed.contains(['?', '#']) {
            return Err("must not have a query or fragment".into());
        }
        let uri: Uri = trimmed
            .parse()
            .map_err(|e| format!("{trimmed:?} is not a URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "{trimmed:?} must start with https:// (or http:// for a router on the LAN)"
                ));
            }
        };
        let auth = uri
            .authority()
            .ok_or_else(|| format!("{trimmed:?} has no host"))?;
        if auth.as_str().contains('@') {
            return Err(
                "must not hold credentials (user:password@); the token has its own settings".into(),
            );
        }
        let host = auth.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() {
            return Err(format!("{trimmed:?} has no host"));
        }
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let server_name = if tls {
            Some(
                ServerName::try_from(bare.to_string())
                    .map_err(|_| format!("{bare:?} is not a valid host name or IP address"))?,
            )
        } else {
            None
        };
        let host_header = HeaderValue::from_str(auth.as_str())
            .map_err(|_| format!("{:?} is not a valid host", auth.as_str()))?;
        let path = format!("{}/chat/completions", uri.path().trim_end_matches('/'));
        Ok(Target {
            base_url: trimmed.to_string(),
            model: model.to_string(),
            label: format!("{trimmed} ({model})"),
            tls,
            host: bare.to_string(),
            port,
            host_header,
            path,
            server_name,
        })
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://router.huggingface.co/v1/", "m:fastest").unwrap();
        assert!(t.tls);
        assert_eq!(t.base_url, "https://router.huggingface.co/v1");
        assert_eq!((t.host.as_str(), t.port), ("router.huggingface.co", 443));
        assert_eq!(t.host_header, "router.huggingface.co");
        assert_eq!(t.path, "/v1/chat/completions");
        assert_eq!(t.label, "https://router.huggingface.co/v1 (m:fastest)");

        let t = Target::parse("http://[::1]:8080", "m").unwrap();
        assert!(!t.tls && t.server_name.is_none());
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.host_header, "[::1]:8080");
        assert_eq!(t.path, "/chat/completions");

        let t = Target::parse("https://127.0.0.1:4443/api/v1", "m").unwrap();
        assert_eq!(
            t.server_name,
            Some(ServerName::try_from("127.0.0.1").unwrap())
        );
        assert_eq!(t.path, "/api/v1/chat/completions");

        for (bad, want) in [
            ("router.huggingface.co/v1", "is not a URL"),
            ("ftp://x/v1", "must start with https://"),
            ("https://user:pw@x/v1", "must not hold credentials"),
            ("https://x/v1?key=1", "must not have a query or fragment"),
            ("https://x/v1#f", "must not have a query or fragment"),
            (
                "https://x /v1",
                "contains whitespace or a control character",
            ),
            ("https:///v1", "is not a URL"),
            ("", "is not a URL"),
        ] {
            let err = Target::parse(bad, "m").unwrap_err();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }
}
