//! Bearer-token access control for REST and gRPC.
//!
//! Tokens come from a file (`--auth-token-file`), one per line: `NAME SCOPES TOKEN`, where
//! SCOPES is `inference`, `admin` or both comma-separated (admin includes inference). Only
//! SHA-256 digests of the tokens are kept; a presented token is hashed and compared with every
//! digest in constant time, so neither timing nor length says which token nearly matched.
//! Tokens are never logged: only the token's NAME is.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a request asks to do, from the least to the most guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The dashboard's page and scripts: static, holding no data, always served.
    Page,
    /// Liveness and readiness (server and model): what load balancers and Kubernetes probe.
    Health,
    /// Prometheus metrics.
    Metrics,
    /// Inference and model metadata.
    Inference,
    /// Repository load/unload/index, the prediction log, feedback and quality.
    Admin,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path}, line {line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("token file {0} holds no tokens")]
    Empty(String),
}

struct Token {
    name: String,
    digest: [u8; 32],
    admin: bool,
}

/// The tokens and which endpoints stay open without one.
pub struct Auth {
    tokens: Vec<Token>,
    public: HashSet<Access>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("Auth").field("tokens", &names).field("public", &self.public).finish()
    }
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Auth {
    /// Reads a token file; `public` lists what needs no token (`Health`, `Metrics`).
    pub fn from_file(path: &Path, public: &[Access]) -> Result<Self, AuthError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: shown.clone(), source })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o004 != 0
            {
                tracing::warn!(path = %shown, "the token file is readable by every user; chmod 600 it");
            }
        }
        Self::parse(&text, &shown, public)
    }

    /// Parses the token file's text (`source` names it in errors).
    pub fn parse(text: &str, source: &str, public: &[Access]) -> Result<Self, AuthError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |message: String| AuthError::Line { path: source.into(), line: i + 1, message };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scopes, token] = fields[..] else {
                return Err(fail(format!(
                    "expected `NAME SCOPES TOKEN` (three fields separated by spaces), found {} field(s)",
                    fields.len()
                )));
            };
            let mut admin = false;
            for scope in scopes.split(',') {
                match scope {
                    "inference" => {}
                    "admin" => admin = true,
                    other => return Err(fail(format!("unknown scope '{other}' (use inference, admin)"))),
                }
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(fail(format!(
                    "token '{name}' is shorter than {MIN_TOKEN_CHARS} characters (try `openssl rand -hex 32`)"
                )));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(fail(format!("the name '{name}' is used twice")));
            }
            let digest = digest(token.as_bytes());
            if tokens.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
                return Err(fail(format!("token '{name}' repeats an earlier token")));
            }
            tokens.push(Token { name: name.into(), digest, admin });
        }
        if tokens.is_empty() {
            return Err(AuthError::Empty(source.into()));
        }
        Ok(Auth { tokens, public: public.iter().copied().collect() })
    }

    /// Checks the `authorization` header for `access`: Ok with the token's name (or `None`
    /// for a public endpoint), else the refusal.
    pub fn check(&self, authorization: Option<&HeaderValue>, access: Access) -> Result<Option<&str>, Refusal> {
        if access == Access::Page || self.public.contains(&access) {
            return Ok(None);
        }
        let Some(value) = authorization else {
            return Err(Refusal::Unauthenticated("this endpoint needs a bearer token (Authorization: Bearer <token>)"));
        };
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .ok_or(Refusal::Unauthenticated("the Authorization header must be `Bearer <token>`"))?;
        let presented = digest(presented.trim_ascii());
        // Compare with every token, without stopping at a match.
        let mut found: Option<&Token> = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&presented)) {
                found = Some(token);
            }
        }
        let token = found.ok_or(Refusal::Unauthenticated("the bearer token is not valid"))?;
        match access {
            Access::Admin | Access::Metrics if !token.admin => {
                Err(Refusal::Forbidden(format!("token '{}' has no admin scope, which this endpoint needs", token.name)))
            }
            _ => Ok(Some(&token.name)),
        }
    }
}

/// The tokens of a file, re-read when the file changes (rotation without a restart: a
/// Kubernetes Secret volume swaps the file in place). A changed file that does not parse keeps
/// the tokens in use and logs why.
pub struct TokenFile {
    path: std::path::PathBuf,
    public: Vec<Access>,
    current: std::sync::RwLock<Arc<Auth>>,
    /// SHA-256 of the file's bytes when last read: enough to notice a change without keeping
    /// the tokens' plain text in memory.
    seen: std::sync::Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the file now; an error here stops kiln from starting.
    pub fn open(path: &Path, public: &[Access]) -> Result<Self, AuthError> {
        let auth = Auth::from_file(path, public)?;
        let seen = std::fs::read(path).ok().map(|bytes| digest(&bytes));
        Ok(TokenFile {
            path: path.to_path_buf(),
            public: public.to_vec(),
            current: std::sync::RwLock::new(Arc::new(auth)),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// [`Auth::check`] against the tokens in use (under the read lock: no reference count
    /// touched per request).
    pub fn check(&self, authorization: Option<&HeaderValue>, access: Access) -> Result<(), Refusal> {
        let auth = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = auth.check(authorization, access)?;
        if let Some(client) = client {
            tracing::trace!(client, "authorized");
        }
        Ok(())
    }

    /// Re-reads the file if its contents changed; returns whether new tokens took effect.
    pub fn reload_if_changed(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            tracing::warn!(path = %self.path.display(), "cannot read the token file; keeping the tokens in use");
            return false;
        };
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = digest(text.as_bytes());
        if *seen == Some(now) {
            return false;
        }
        *seen = Some(now);
        match Auth::parse(&text, &self.path.display().to_string(), &self.public) {
            Ok(auth) => {
                let names: Vec<&str> = auth.tokens.iter().map(|t| t.name.as_str()).collect();
                tracing::info!(tokens = ?names, "token file reloaded");
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(auth);
                true
            }
            Err(e) => {
                tracing::error!("token file changed but is not valid ({e}); keeping the tokens in use");
                false
            }
        }
    }

    /// Checks the file every `interval` until the task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let file = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let watched = file.clone();
                let _ = tokio::task::spawn_blocking(move || watched.reload_if_changed()).await;
            }
        })
    }
}

/// A refused request: 401/UNAUTHENTICATED or 403/PERMISSION_DENIED.
#[derive(Debug)]
pub enum Refusal {
    Unauthenticated(&'static str),
    Forbidden(String),
}

/// The access a REST path needs.
pub fn rest_access(path: &str) -> Access {
    // Segments on the stack (this runs on every request); no guarded or public route has more
    // than six, so a longer path needs the inference scope at least.
    let mut buffer = [""; 8];
    let mut count = 0;
    for segment in path.trim_matches('/').split('/') {
        if count == buffer.len() {
            return Access::Inference;
        }
        buffer[count] = segment;
        count += 1;
    }
    match buffer[..count] {
        [""] | ["ui", _] => Access::Page,
        ["v2", "health", ..] => Access::Health,
        ["v2", "models", _, "ready"] | ["v2", "models", _, "versions", _, "ready"] => Access::Health,
        ["metrics"] => Access::Metrics,
        ["v2", "repository", ..] | ["v1", "predictions", ..] | ["v1", "feedback"] => Access::Admin,
        ["v1", "models", _, "quality"] => Access::Admin,
        ["v1", "collections", _, "points", ..] => Access::Admin,
        _ => Access::Inference,
    }
}

/// The access a gRPC method path (`/package.Service/Method`) needs.
pub fn grpc_access(path: &str) -> Access {
    match path.trim_start_matches('/').split_once('/') {
        Some(("grpc.health.v1.Health", _)) => Access::Health,
        Some(("inference.GRPCInferenceService", method)) => match method {
            "ServerLive" | "ServerReady" | "ModelReady" => Access::Health,
            "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Access::Admin,
            _ => Access::Inference,
        },
        _ => Access::Inference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# clients\nfrontend inference 0123456789abcdef0123\nops admin fedcba9876543210fedc\n";

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
    }

    #[test]
    fn scopes_and_public_endpoints() {
        let auth = Auth::parse(FILE, "tokens", &[Access::Health]).expect("parses");
        assert!(matches!(auth.check(None, Access::Health), Ok(None)));
        assert!(matches!(auth.check(None, Access::Inference), Err(Refusal::Unauthenticated(_))));
        let front = bearer("0123456789abcdef0123");
        assert_eq!(auth.check(Some(&front), Access::Inference).expect("allowed"), Some("frontend"));
        let Err(Refusal::Forbidden(m)) = auth.check(Some(&front), Access::Admin) else { panic!("admin refused") };
        assert!(m.contains("frontend"), "{m}");
        let ops = bearer("fedcba9876543210fedc");
        assert_eq!(auth.check(Some(&ops), Access::Admin).expect("allowed"), Some("ops"));
        assert_eq!(auth.check(Some(&ops), Access::Inference).expect("admin includes inference"), Some("ops"));
        assert!(auth.check(Some(&bearer("0123456789abcdef012")), Access::Inference).is_err());
        let basic = HeaderValue::from_static("Basic Zm9vOmJhcg==");
        assert!(matches!(auth.check(Some(&basic), Access::Inference), Err(Refusal::Unauthenticated(_))));
    }

    #[test]
    fn a_changed_token_file_replaces_the_tokens_and_a_broken_one_does_not() {
        let dir = std::env::temp_dir().join(format!("kiln-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tokens");
        std::fs::write(&path, FILE).expect("write");
        let file = TokenFile::open(&path, &[]).expect("opens");
        let front = bearer("0123456789abcdef0123");
        assert!(file.check(Some(&front), Access::Inference).is_ok());
        assert!(!file.reload_if_changed(), "unchanged");
        std::fs::write(&path, "next inference abcdefabcdefabcdefabcdef\n").expect("write");
        assert!(file.reload_if_changed());
        assert!(file.check(Some(&front), Access::Inference).is_err());
        assert!(file.check(Some(&bearer("abcdefabcdefabcdefabcdef")), Access::Inference).is_ok());
        std::fs::write(&path, "broken\n").expect("write");
        assert!(!file.reload_if_changed());
        assert!(file.check(Some(&bearer("abcdefabcdefabcdefabcdef")), Access::Inference).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_token_file_keeps_no_token_in_plain_form() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, FILE).expect("write");
        let file = TokenFile::open(&path, &[]).expect("opens");
        // What it keeps to notice changes: a digest of the file, not the file.
        let kept = format!("{:?}", file.seen.lock().expect("lock"));
        assert!(!kept.contains("0123456789abcdef0123"), "{kept}");
        assert!(!format!("{:?}", file.current.read().expect("lock")).contains("0123456789abcdef0123"));
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let err = Auth::parse("a inference short\n", "t", &[]).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("shorter than 16"), "{err}");
        let err = Auth::parse("\na root 0123456789abcdef0123\n", "t", &[]).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("unknown scope 'root'"), "{err}");
        let err = Auth::parse("a inference\n", "t", &[]).unwrap_err().to_string();
        assert!(err.contains("NAME SCOPES TOKEN"), "{err}");
        let err = Auth::parse("# nothing\n", "t", &[]).unwrap_err().to_string();
        assert!(err.contains("no tokens"), "{err}");
        let twice = "a inference 0123456789abcdef0123\nb admin 0123456789abcdef0123\n";
        assert!(Auth::parse(twice, "t", &[]).unwrap_err().to_string().contains("repeats"));
    }

    #[test]
    fn routes_map_to_access() {
        assert_eq!(rest_access("/v2/health/ready"), Access::Health);
        assert_eq!(rest_access("/v2/models/fraud/ready"), Access::Health);
        assert_eq!(rest_access("/v2/models/fraud/infer"), Access::Inference);
        assert_eq!(rest_access("/v2/repository/models/fraud/load"), Access::Admin);
        assert_eq!(rest_access("/v1/predictions/abc"), Access::Admin);
        assert_eq!(rest_access("/v1/models/fraud/quality"), Access::Admin);
        assert_eq!(rest_access("/metrics"), Access::Metrics);
        assert_eq!(rest_access("/nowhere"), Access::Inference);
        assert_eq!(rest_access("/"), Access::Page);
        assert_eq!(rest_access("/ui/app.js"), Access::Page);
        assert_eq!(rest_access("/v1/dashboard/models"), Access::Inference);
        assert_eq!(rest_access("/v2/repository/models/m/load"), Access::Admin);
        assert_eq!(rest_access("/a/b/c/d/e/f/g/h/i/j"), Access::Inference);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/ModelInfer"), Access::Inference);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/RepositoryModelLoad"), Access::Admin);
        assert_eq!(grpc_access("/grpc.health.v1.Health/Check"), Access::Health);
    }
}
