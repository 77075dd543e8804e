//! The HTTP API key: loaded once at start from a systemd credential or a mode 0600 file
//! (the same rules as the cloud token, [`crate::cloud::secrets`]), held zeroized, never
//! logged, compared in constant time (SHA-256 digests of both sides, so neither the
//! content nor the length leaks through timing).

use axum::http::{HeaderMap, header};
use ring::digest::{SHA256, digest};
use secrecy::ExposeSecret;

use crate::cloud::secrets::{ApiToken, SecretError, TokenSource, TokenSources, load_token};
use crate::config::HttpSection;

/// The key clients must present.
#[derive(Debug)]
pub struct ApiKey {
    token: ApiToken,
    pub source: TokenSource,
}

impl ApiKey {
    /// The configured key: `Ok(None)` when no source is configured or present (the
    /// credential is looked for only under systemd; a configured file must be usable).
    pub fn load(http: &HttpSection) -> Result<Option<ApiKey>, SecretError> {
        let sources = TokenSources {
            credential: http.api_key_credential.clone(),
            file: http.api_key_file.clone(),
            env: String::new(),
        };
        match load_token(&sources) {
            Ok(loaded) => Ok(Some(ApiKey {
                token: loaded.token,
                source: loaded.source,
            })),
            Err(SecretError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the request carries this key: `Authorization: Bearer KEY` (OpenAI's SDKs,
    /// Ollama's clients with headers) or `x-api-key: KEY`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(presented) = presented else {
            return false;
        };
        let want = digest(&SHA256, self.token.expose_secret().as_bytes());
        let got = digest(&SHA256, presented.trim().as_bytes());
        #[allow(deprecated)]
        ring::constant_time::verify_slices_are_equal(want.as_ref(), got.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(text: &str) -> ApiKey {
        ApiKey {
            token: ApiToken::from_string(text.to_string()).unwrap(),
            source: TokenSource::File("k".into()),
        }
    }

    #[test]
    fn only_the_key_is_admitted() {
        let k = key("s3cret-key");
        let with = |name: &'static str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(value).unwrap());
            k.admits(&h)
        };
        assert!(with("authorization", "Bearer s3cret-key"));
        assert!(with("x-api-key", "s3cret-key"));
        assert!(!with("authorization", "Bearer s3cret-kez"));
        assert!(!with("authorization", "Bearer s3cret-key-and-more"));
        assert!(!with("authorization", "Basic s3cret-key"));
        assert!(!k.admits(&HeaderMap::new()));
        assert!(!format!("{k:?}").contains("s3cret"), "never printed");
    }

    #[test]
    fn a_configured_file_must_be_private() {
        let dir = std::env::temp_dir().join(format!("spillway-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "abc\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let http = HttpSection {
            api_key_file: file.clone(),
            api_key_credential: String::new(),
            ..HttpSection::default()
        };
        let err = ApiKey::load(&http).unwrap_err();
        assert!(
            matches!(err, SecretError::Insecure { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = ApiKey::load(&http).unwrap().expect("a key");
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert!(k.admits(&h));
        let none = HttpSection {
            api_key_credential: String::new(),
            ..HttpSection::default()
        };
        assert!(ApiKey::load(&none).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
