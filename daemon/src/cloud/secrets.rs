//! The cloud API token: where it comes from and how it is held.
//!
//! Sources, in order ([`load_token`]):
//! 1. a systemd credential, `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=` or
//!    `LoadCredentialEncrypted=` in the unit): the best place, readable only by the service;
//! 2. a file, refused if its group or others have any access to it (the error names the file
//!    and its mode), so a token cannot be left world-readable by mistake;
//! 3. an environment variable, with a warning: the environment is inherited by child
//!    processes, shows in `/proc/<pid>/environ` and cannot be wiped from inside the process.
//!
//! A configured file that cannot be used is an error rather than a reason to fall through to
//! the environment: the operator asked for that file, and silently using another token would
//! hide the mistake.
//!
//! The token lives in a [`SecretString`] (zeroized on drop) inside [`ApiToken`], whose
//! `Debug` prints `[redacted]` and which has no `Display`. Read buffers holding the token are
//! zeroized too. Errors describe files, modes and reasons, never the content.

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// Largest token file read (real tokens are tens of bytes).
pub const MAX_TOKEN_FILE_BYTES: usize = 8 << 10;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// An API token. Prints as `ApiToken([redacted])`; the text is reachable only through
/// [`ExposeSecret::expose_secret`].
pub struct ApiToken(SecretString);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken([redacted])")
    }
}

impl ExposeSecret<str> for ApiToken {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl ApiToken {
    /// Validates and wraps a token, wiping `text` afterwards. Surrounding whitespace (a
    /// trailing newline in a file) is dropped; what remains must be visible ASCII, since it
    /// goes into an HTTP header.
    pub fn from_string(text: String) -> Result<ApiToken, SecretError> {
        let text = Zeroizing::new(text);
        Self::from_str_in(&text, "the token")
    }

    fn from_str_in(text: &str, origin: &str) -> Result<ApiToken, SecretError> {
        let t = text.trim();
        let malformed = |reason: &'static str| SecretError::Malformed {
            origin: origin.to_string(),
            reason,
        };
        if t.is_empty() {
            return Err(malformed("it is empty"));
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(malformed("it is longer than 4096 bytes"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed(
                "it holds spaces, line breaks, control or non-ASCII characters",
            ));
        }
        Ok(ApiToken(SecretString::from(t)))
    }
}

/// Where to look for the token; empty fields are skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSources {
    /// systemd credential name.
    pub credential: String,
    /// Token file.
    pub file: PathBuf,
    /// Environment variable name.
    pub env: String,
}

/// Where a token was found (for the startup log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Credential { name: String, path: PathBuf },
    File(PathBuf),
    Env(String),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Credential { name, path } => {
                write!(f, "systemd credential {name} ({})", path.display())
            }
            TokenSource::File(p) => write!(f, "file {}", p.display()),
            TokenSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A token and where it came from.
#[derive(Debug)]
pub struct LoadedToken {
    pub token: ApiToken,
    pub source: TokenSource,
}

/// Why no token could be loaded. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("no API token found (tried: {tried})")]
    NotFound { tried: String },
    #[error("credential name {name:?} is not a plain file name")]
    BadCredentialName { name: String },
    #[error("cannot read the token {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token {what} {path} is not a regular file")]
    NotRegularFile { what: &'static str, path: PathBuf },
    #[error(
        "token file {path} is accessible to its group or others (mode {mode:04o}); \
         refusing it: chmod 600 it (or use a systemd credential)"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("token {what} {path} is larger than {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: usize,
    },
    #[error("{origin} is not a usable API token: {reason}")]
    Malformed {
        origin: String,
        reason: &'static str,
    },
}

/// Loads the token from the first source that has one, reading the process environment.
pub fn load_token(sources: &TokenSources) -> Result<LoadedToken, SecretError> {
    load_token_with(sources, |name| std::env::var_os(name))
}

/// [`load_token`] with the environment supplied by `env` (tests cannot safely change the
/// process environment while other threads run).
pub fn load_token_with(
    sources: &TokenSources,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<LoadedToken, SecretError> {
    let mut tried = Vec::new();
    if !sources.credential.is_empty() {
        let name = &sources.credential;
        if name.contains('/') || name == "." || name == ".." {
            return Err(SecretError::BadCredentialName { name: name.clone() });
        }
        match env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            None => tried.push(format!(
                "systemd credential {name} (CREDENTIALS_DIRECTORY unset)"
            )),
            Some(dir) => {
                let path = Path::new(&dir).join(name);
                if path.exists() {
                    // systemd makes the directory and file private to the service; no mode
                    // check, since it may legitimately give the file 0440 to the group.
                    let token = read_token_file(&path, "credential", false)?;
                    return Ok(LoadedToken {
                        token,
                        source: TokenSource::Credential {
                            name: name.clone(),
                            path,
                        },
                    });
                }
                tried.push(format!("systemd credential {}", path.display()));
            }
        }
    }
    if !sources.file.as_os_str().is_empty() {
        let token = read_token_file(&sources.file, "file", true)?;
        return Ok(LoadedToken {
            token,
            source: TokenSource::File(sources.file.clone()),
        });
    }
    if !sources.env.is_empty() {
        let var = &sources.env;
        match env(var) {
            Some(value) => {
                let value =
                    Zeroizing::new(value.into_string().map_err(|_| SecretError::Malformed {
                        origin: format!("environment variable {var}"),
                        reason: "it is not valid UTF-8",
                    })?);
                let token = ApiToken::from_str_in(&value, &format!("environment variable {var}"))?;
                tracing::warn!(
                    variable = %var,
                    "cloud API token taken from the environment; prefer a systemd credential \
                     or a mode 0600 file: the environment is inherited by child processes \
                     and visible in /proc"
                );
                return Ok(LoadedToken {
                    token,
                    source: TokenSource::Env(var.clone()),
                });
            }
            None => tried.push(format!("environment variable {var}")),
        }
    }
    if tried.is_empty() {
        tried.push("no source configured".into());
    }
    Err(SecretError::NotFound {
        tried: tried.join(", "),
    })
}

/// Reads a token file: a regular file, at most [`MAX_TOKEN_FILE_BYTES`], and (when
/// `private`) with no access for group or others. The checks use the opened file's metadata,
/// so the file checked is the file read.
fn read_token_file(
    path: &Path,
    what: &'static str,
    private: bool,
) -> Result<ApiToken, SecretError> {
    let read_err = |source| SecretError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO put there by mistake must not hang the daemon's start.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretError::NotRegularFile {
            what,
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(SecretError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    let too_large = || SecretError::TooLarge {
        what,
        path: path.to_path_buf(),
        limit: MAX_TOKEN_FILE_BYTES,
    };
    if meta.len() > MAX_TOKEN_FILE_BYTES as u64 {
        return Err(too_large());
    }
    // Capacity for the whole bounded read up front: a growing Vec would leave copies of the
    // token in freed memory that Zeroizing cannot reach.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_FILE_BYTES + 1));
    file.by_ref()
        .take(MAX_TOKEN_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() > MAX_TOKEN_FILE_BYTES {
        return Err(too_large());
    }
    let origin = format!("the content of {what} {}", path.display());
    let text = std::str::from_utf8(&buf).map_err(|_| SecretError::Malformed {
        origin: origin.clone(),
        reason: "it is not valid UTF-8",
    })?;
    ApiToken::from_str_in(text, &origin)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    const TOKEN: &str = "hf_SeCrEtToKeN0123456789abcdef";

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "spillway-secrets-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn file(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn sources(credential: &str, file: &Path, env: &str) -> TokenSources {
        TokenSources {
            credential: credential.into(),
            file: file.to_path_buf(),
            env: env.into(),
        }
    }

    #[test]
    fn systemd_credential_comes_first() {
        let dir = TempDir::new();
        dir.file("hf-token", format!("{TOKEN}\n").as_bytes(), 0o400);
        let other = dir.file("token", b"hf_other", 0o600);
        let env = |name: &str| match name {
            "CREDENTIALS_DIRECTORY" => Some(dir.0.clone().into_os_string()),
            "HF_TOKEN" => Some("hf_env".into()),
            _ => None,
        };
        let got = load_token_with(&sources("hf-token", &other, "HF_TOKEN"), env).unwrap();
        assert_eq!(got.token.expose_secret(), TOKEN);
        assert_eq!(
            got.source.to_string(),
            format!(
                "systemd credential hf-token ({})",
                dir.0.join("hf-token").display()
            )
        );
        // Without the credential in the directory, the file is next.
        let got = load_token_with(&sources("absent", &other, "HF_TOKEN"), env).unwrap();
        assert_eq!(got.token.expose_secret(), "hf_other");
        assert_eq!(got.source, TokenSource::File(other));
    }

    #[test]
    fn a_readable_file_is_refused_naming_file_and_mode() {
        let dir = TempDir::new();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let p = dir.file(&format!("t{mode:o}"), TOKEN.as_bytes(), mode);
            let err = load_token_with(&sources("", &p, "HF_TOKEN"), |_| Some("hf_env".into()))
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SecretError::Insecure { .. }), "{msg}");
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
        }
        let p = dir.file("ok", format!("  {TOKEN}\r\n").as_bytes(), 0o600);
        let got = load_token_with(&sources("", &p, ""), no_env).unwrap();
        assert_eq!(got.token.expose_secret(), TOKEN);
    }

    #[test]
    fn files_must_be_regular_bounded_and_one_token() {
        let dir = TempDir::new();
        let err = load_token_with(&sources("", &dir.0, ""), no_env).unwrap_err();
        assert!(matches!(err, SecretError::NotRegularFile { .. }), "{err}");
        let big = dir.file("big", &vec![b'a'; MAX_TOKEN_FILE_BYTES + 1], 0o600);
        let err = load_token_with(&sources("", &big, ""), no_env).unwrap_err();
        assert!(matches!(err, SecretError::TooLarge { .. }), "{err}");
        for bad in [
            &b""[..],
            b" \n",
            b"hf_a\nhf_b",
            b"hf a",
            b"hf_\x01",
            b"hf_\xc3\xa9",
            b"\xff",
        ] {
            let p = dir.file("bad", bad, 0o600);
            let err = load_token_with(&sources("", &p, ""), no_env).unwrap_err();
            assert!(
                matches!(err, SecretError::Malformed { .. }),
                "{bad:?}: {err}"
            );
        }
        let missing = dir.0.join("missing");
        let err =
            load_token_with(&sources("", &missing, "HF_TOKEN"), |_| Some("x".into())).unwrap_err();
        assert!(matches!(err, SecretError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn environment_is_the_last_resort_and_warns() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let logs = logs.clone();
                move || LogWriter(logs.clone())
            })
            .with_ansi(false)
            .finish();
        let got = tracing::subscriber::with_default(subscriber, || {
            load_token_with(&sources("hf-token", Path::new(""), "HF_TOKEN"), |n| {
                (n == "HF_TOKEN").then(|| OsString::from(TOKEN))
            })
        })
        .unwrap();
        assert_eq!(got.token.expose_secret(), TOKEN);
        assert_eq!(got.source, TokenSource::Env("HF_TOKEN".into()));
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("HF_TOKEN"), "{text}");
        assert!(!text.contains(TOKEN), "{text}");
    }

    #[test]
    fn nothing_found_says_what_was_tried() {
        let err = load_token_with(&sources("hf-token", Path::new(""), "HF_TOKEN"), no_env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no API token found (tried: systemd credential hf-token (CREDENTIALS_DIRECTORY \
             unset), environment variable HF_TOKEN)"
        );
        let err = load_token_with(&TokenSources::default(), no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no API token found (tried: no source configured)"
        );
        let err = load_token_with(&sources("../x", Path::new(""), ""), no_env).unwrap_err();
        assert!(
            matches!(err, SecretError::BadCredentialName { .. }),
            "{err}"
        );
    }

    struct LogWriter(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for LogWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The token must not show through any formatting of the holder or of any error, even
    /// errors raised by files and variables that contain it.
    #[test]
    fn the_token_never_prints() {
        let dir = TempDir::new();
        let mut shown: Vec<String> = Vec::new();
        let mut show = |what: &dyn fmt::Debug, display: Option<&dyn fmt::Display>| {
            shown.push(format!("{what:?}"));
            shown.push(format!("{what:#?}"));
            if let Some(d) = display {
                shown.push(format!("{d}"));
                shown.push(format!("{d:#}"));
            }
        };

        let token = ApiToken::from_string(TOKEN.to_string()).unwrap();
        show(&token, None);
        let p = dir.file("good", TOKEN.as_bytes(), 0o600);
        let loaded = load_token_with(&sources("", &p, ""), no_env).unwrap();
        show(&loaded, None);
        show(&loaded.source, Some(&loaded.source));

        // One of each error, each raised with the token in reach.
        let insecure = dir.file("open", TOKEN.as_bytes(), 0o644);
        let big = dir.file("big", TOKEN.repeat(1000).as_bytes(), 0o600);
        let two = dir.file("two", format!("{TOKEN}\n{TOKEN}").as_bytes(), 0o600);
        let spaced = format!("{TOKEN} {TOKEN}");
        let errors: Vec<SecretError> = vec![
            load_token_with(&sources("", &insecure, ""), no_env).unwrap_err(),
            load_token_with(&sources("", &big, ""), no_env).unwrap_err(),
            load_token_with(&sources("", &two, ""), no_env).unwrap_err(),
            load_token_with(&sources("", &dir.0, ""), no_env).unwrap_err(),
            load_token_with(&sources("", &dir.0.join("missing"), ""), no_env).unwrap_err(),
            load_token_with(&sources("", Path::new(""), "V"), |_| {
                Some(spaced.clone().into())
            })
            .unwrap_err(),
            load_token_with(&sources("", Path::new(""), "V"), |_| {
                use std::os::unix::ffi::OsStrExt;
                let mut b = TOKEN.as_bytes().to_vec();
                b.push(0xff);
                Some(OsStr::from_bytes(&b).to_os_string())
            })
            .unwrap_err(),
            ApiToken::from_string(spaced.clone()).unwrap_err(),
            load_token_with(&sources("a/b", Path::new(""), ""), no_env).unwrap_err(),
            load_token_with(&sources("x", Path::new(""), "V"), no_env).unwrap_err(),
        ];
        let kinds: std::collections::BTreeSet<_> = errors
            .iter()
            .map(std::mem::discriminant)
            .map(|d| format!("{d:?}"))
            .collect();
        assert_eq!(
            kinds.len(),
            7,
            "every SecretError variant is covered: {errors:?}"
        );
        for e in &errors {
            show(e, Some(e));
        }
        for s in &shown {
            assert!(!s.contains(TOKEN), "token printed: {s}");
            // Not even a telling fragment.
            assert!(!s.contains(&TOKEN[3..15]), "token fragment printed: {s}");
        }
        assert!(shown.iter().any(|s| s.contains("[redacted]")));
    }
}
