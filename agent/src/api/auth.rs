//! Bearer-token authentication of the agent's API calls (`--grpc-token-file`).
//!
//! The token is read once at start. Every call to `invariant.v1.AgentService` must carry
//! `authorization: Bearer <token>`; the standard health and reflection services stay
//! open, so probes and tools work without it. The token never appears in logs, errors or
//! `Debug` output, and is compared in time that does not depend on where it differs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A bearer token (its `Debug` never shows it).
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read --grpc-token-file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error(
        "--grpc-token-file {} is empty: write the token into it (any printable text without spaces)",
        .path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The token could not be sent in an HTTP header.
    #[error(
        "--grpc-token-file {} holds characters that cannot be sent in an HTTP header \
         (spaces, control characters or non-ASCII): use printable ASCII only",
        .path.display()
    )]
    Unusable {
        /// The file.
        path: PathBuf,
    },
}

impl Token {
    /// Reads the token from `path`, trimmed of surrounding whitespace.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        // A client sends it as `Bearer <token>` in one header value.
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Unusable {
                path: path.to_path_buf(),
            });
        }
        Ok(Token(token.into()))
    }

    /// Whether `presented` is this token, in time that depends only on this token's
    /// length, not on where the two differ.
    fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        let mut difference = u8::from(presented.len() != expected.len());
        for (i, e) in expected.iter().enumerate() {
            difference |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(difference) == 0
    }
}

/// Checks the bearer token of every call it intercepts (no token configured: lets all
/// through).
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    token: Option<Token>,
}

impl BearerAuth {
    /// Requires `token` when given.
    pub fn new(token: Option<Token>) -> Self {
        BearerAuth { token }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| bearer(v.as_bytes()));
        if presented.is_some_and(|p| token.matches(p)) {
            return Ok(request);
        }
        tracing::debug!(
            peer = ?request.remote_addr(),
            token_sent = presented.is_some(),
            "refused an API call without the right bearer token"
        );
        Err(Status::unauthenticated(
            "missing or wrong bearer token: this agent was started with --grpc-token-file; \
             send `authorization: Bearer <token>` metadata with that token \
             (invariant-agent client commands: pass --token-file FILE)",
        ))
    }
}

/// The token of an `authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        Token::read(&path).unwrap()
    }

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        auth.call(request).map(|_| ())
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut auth = BearerAuth::new(Some(token("  s3cret-token\n")));
        assert!(call(&mut auth, Some("Bearer s3cret-token")).is_ok());
        assert!(call(&mut auth, Some("bearer s3cret-token")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-token2"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
            Some("Bearer "),
        ] {
            let e = call(&mut auth, wrong).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{wrong:?}");
            assert!(!e.message().contains("s3cret"), "{}", e.message());
        }
        assert!(call(&mut BearerAuth::default(), None).is_ok());
        assert_eq!(format!("{:?}", token("abc")), "Token(<redacted>)");
    }

    #[test]
    fn unusable_token_files_are_refused_with_the_flag_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = Token::read(&empty).unwrap_err().to_string();
        assert!(
            e.contains("--grpc-token-file") && e.contains("empty"),
            "{e}"
        );
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words").unwrap();
        assert!(matches!(
            Token::read(&spaced),
            Err(TokenError::Unusable { .. })
        ));
        let missing = Token::read(&dir.path().join("missing")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read --grpc-token-file")
        );
    }
}
