//! [`BearerToken`]: the one type a service-account token lives in, from the
//! moment it is read (a projected token file, an `authorization` header) to the
//! moment it is verified or sent.
//!
//! Owns the `authorization: Bearer <token>` format in both directions and the
//! token-file format; not what a token proves (the platform verifies it) nor
//! who may present one (the CA's `authn`, the agent's `attest`). Uses nothing
//! else in the crate.
//!
//! Rules enforced here (secrets): a token zeroizes its memory when dropped,
//! prints as `[redacted]`, cannot be cloned by accident (no `Clone`), and is
//! sent only as *sensitive* metadata, which tonic and hyper never log nor put
//! in an HPACK table. A token file may end in a newline (the kubelet's do
//! not, hand-written ones do); the header never carries it, since ztunnel and
//! Envoy reject a header with a trailing newline. Only visible ASCII without
//! spaces is a token: JWTs are base64url and dots.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::Request;
use zeroize::Zeroizing;

/// The metadata key (HTTP/2 header) a bearer token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The `authorization` value is not `Bearer <token>`.
    #[error("authorization metadata is not \"Bearer <token>\"")]
    NotBearer,
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the token file {path} is empty")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The token file holds characters a token cannot (spaces inside, control
    /// characters, non-ASCII): it could not be sent in a header.
    #[error("the token file {path} holds characters a token cannot (only visible ASCII)")]
    NotHeaderSafe {
        /// The file.
        path: PathBuf,
    },
}

/// A service-account token (a JWT). Zeroized on drop, redacted in `Debug`,
/// not `Clone`.
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    /// The token of an `authorization` value `Bearer <token>` (scheme
    /// case-insensitive, surrounding whitespace ignored).
    pub fn from_header(value: &str) -> Result<Self, TokenError> {
        let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        Self::checked(token.trim()).ok_or(TokenError::NotBearer)
    }

    /// The bearer token in a request's metadata: `None` when there is no
    /// `authorization` entry, an error when there is one that is not
    /// `Bearer <token>`.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Result<Self, TokenError>> {
        let value = metadata.get(AUTHORIZATION)?;
        Some(
            value
                .to_str()
                .map_err(|_| TokenError::NotBearer)
                .and_then(Self::from_header),
        )
    }

    /// Reads a token file (a projected service-account token). Re-read it on
    /// every use: the kubelet rotates it in place.
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_text(path, Zeroizing::new(text))
    }

    /// [`read_file`](Self::read_file) without blocking the runtime's thread.
    pub async fn read_file_async(path: &Path) -> Result<Self, TokenError> {
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| TokenError::Unreadable {
                    path: path.to_owned(),
                    source,
                })?;
        Self::from_file_text(path, Zeroizing::new(text))
    }

    fn from_file_text(path: &Path, text: Zeroizing<String>) -> Result<Self, TokenError> {
        // Rule: the trailing newline of a token file never reaches a header.
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::EmptyFile {
                path: path.to_owned(),
            });
        }
        Self::checked(token).ok_or_else(|| TokenError::NotHeaderSafe {
            path: path.to_owned(),
        })
    }

    /// Admits only visible ASCII without spaces: what a header value carries
    /// unchanged, and all a JWT is made of.
    fn checked(token: &str) -> Option<Self> {
        let visible = |b: u8| (0x21..=0x7e).contains(&b);
        (!token.is_empty() && token.bytes().all(visible))
            .then(|| Self(Zeroizing::new(token.to_owned())))
    }

    /// The token itself, for verification. Never log it.
    pub fn secret_str(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>` as sensitive metadata (never logged, never indexed
    /// by HPACK).
    pub fn to_header(&self) -> MetadataValue<Ascii> {
        let header = Zeroizing::new(format!("Bearer {}", self.secret_str()));
        // `checked` admitted only visible ASCII, which every header accepts.
        let mut value = match MetadataValue::try_from(header.as_str()) {
            Ok(value) => value,
            Err(_) => unreachable!("a checked token is visible ASCII"),
        };
        value.set_sensitive(true);
        value
    }

    /// Puts `authorization: Bearer <token>` on `request`.
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.to_header());
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    #[test]
    fn debug_never_shows_the_token() {
        let token = BearerToken::from_header(&format!("Bearer {JWT}")).expect("bearer");
        let shown = format!("{token:?} {:?}", Some(&token));
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_whitespace_ignored() {
        for header in [
            format!("Bearer {JWT}"),
            format!("bearer {JWT}"),
            format!("  BEARER   {JWT}  "),
        ] {
            let token = BearerToken::from_header(&header).expect("bearer");
            assert_eq!(token.secret_str(), JWT, "{header:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        for header in [
            format!("Basic {JWT}"),
            JWT.to_owned(),
            "Bearer".to_owned(),
            "Bearer    ".to_owned(),
            format!("Bearer {JWT} extra"),
            "Bearer caf\u{e9}".to_owned(),
            "Bearer a\tb".to_owned(),
        ] {
            assert!(
                matches!(
                    BearerToken::from_header(&header),
                    Err(TokenError::NotBearer)
                ),
                "{header:?} accepted"
            );
        }
    }

    #[test]
    fn metadata_without_authorization_has_no_token() {
        assert!(BearerToken::from_metadata(&MetadataMap::new()).is_none());
        let mut metadata = MetadataMap::new();
        metadata.insert(AUTHORIZATION, "Basic x".parse().expect("ascii"));
        assert!(matches!(
            BearerToken::from_metadata(&metadata),
            Some(Err(TokenError::NotBearer))
        ));
    }

    #[test]
    fn a_token_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{JWT}\n")).expect("write");
        let token = BearerToken::read_file(&path).expect("token");
        assert_eq!(token.secret_str(), JWT);
        let header = token.to_header();
        assert_eq!(header.to_str().expect("ascii"), format!("Bearer {JWT}"));
        assert!(header.is_sensitive());
    }

    #[test]
    fn bad_token_files_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n  \n").expect("write");
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words").expect("write");
        let missing = dir.path().join("missing");
        let err = BearerToken::read_file(&empty).expect_err("empty");
        assert!(matches!(err, TokenError::EmptyFile { .. }), "{err}");
        let err = BearerToken::read_file(&spaced).expect_err("spaced");
        assert!(matches!(err, TokenError::NotHeaderSafe { .. }), "{err}");
        let err = BearerToken::read_file(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn authorize_sets_the_header_once() {
        let token = BearerToken::from_header(&format!("Bearer {JWT}")).expect("bearer");
        let mut request = Request::new(());
        token.authorize(&mut request);
        token.authorize(&mut request);
        let values: Vec<_> = request.metadata().get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values.len(), 1);
    }
}
