//! The local token issuer: what `meshid token issue` signs service-account tokens with.
//!
//! Owns the issuer's ES256 (P-256) key in `<data dir>/token-issuer-key.pem`
//! (PKCS#8 PEM, mode 0600) and its public JWKS in
//! `<data dir>/token-issuer-jwks.json`, which is all the CA needs to read
//! ([`load_verifier`]). Tokens are shaped exactly like kubelet-projected
//! Kubernetes tokens, so the same verifier serves both.
//!
//! Rules enforced: the private key lives only in a zeroizing buffer with a
//! redacted `Debug`, is created once (create-if-absent, so two processes
//! starting together agree on one key) and written owner-only; tokens are
//! returned as `Zeroizing<String>`, never logged, and carry no trailing newline
//! (a token file ending in a newline breaks ztunnel's header).

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig, DEFAULT_LEEWAY, SUBJECT_PREFIX};

/// The issuer of local tokens: Kubernetes' default service-account issuer.
pub const LOCAL_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The private key's file name in the data directory.
pub const KEY_FILE: &str = "token-issuer-key.pem";
/// The public JWKS's file name in the data directory.
pub const JWKS_FILE: &str = "token-issuer-jwks.json";

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
/// DER SubjectPublicKeyInfo header for a P-256 key (id-ecPublicKey, prime256v1),
/// followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// What can go wrong with the local token issuer: its key files, or a token
/// request. Kept apart from [`crate::platform::PlatformError`], which is about
/// facts (verifying tokens, reading manifests), not about minting tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The issuer's key file (or JWKS file) cannot be used.
    #[error("token issuer key {}: {reason}", path.display())]
    Key {
        /// The key (or JWKS) file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS holds no key tokens can be verified with, or cannot be encoded.
    #[error("unusable JWKS: {reason}")]
    Jwks {
        /// What is wrong with it.
        reason: String,
    },
    /// A token cannot be issued as asked (bad name, TTL or audience).
    #[error("cannot issue token: {reason}")]
    InvalidRequest {
        /// Which field is wrong.
        reason: String,
    },
    /// The system random generator failed (no key, token id or uid can be made).
    #[error("the system random generator failed")]
    Random,
}

impl IssuerError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The issuer's PKCS#8 private key: zeroized on drop, never printed, not `Clone`.
struct IssuerKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuerKey([redacted])")
    }
}

/// Signs Kubernetes-shaped service-account tokens with the local issuer key.
pub struct TokenIssuer {
    key: IssuerKey,
    kid: String,
    jwks: JwkSet,
    rng: SystemRandom,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &LOCAL_ISSUER)
            .field("kid", &self.kid)
            .field("key", &self.key)
            .finish()
    }
}

/// What to put in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod `(name, uid)` the token is bound to, as kubelet binds projected tokens.
    pub pod: Option<(String, String)>,
    /// The node `(name, uid)` the token is bound to (uid optional locally).
    pub node: Option<(String, Option<String>)>,
    /// `aud`; at least one (the CA accepts `istio-ca` by default).
    pub audiences: Vec<String>,
    /// Lifetime from `now`; must be positive.
    pub ttl: time::Duration,
}

impl TokenIssuer {
    /// Loads the issuer key from `data_dir`, or creates it (and the directory)
    /// on first use. The JWKS file is (re)written whenever it does not match the key.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IssuerError> {
        crate::secret_file::ensure_private_dir(data_dir)
            .map_err(|e| IssuerError::io(data_dir, e))?;
        let key_path = data_dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let pkcs8 = match read_secret(&key_path) {
            Ok(pem) => {
                warn_if_readable_by_others(&key_path);
                parse_pem(&pem, &key_path)?
            }
            Err(e) if e.kind() == ErrorKind::NotFound => create_key(&key_path, &rng)?,
            Err(e) => return Err(IssuerError::io(&key_path, e)),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| IssuerError::Key {
                path: key_path.clone(),
                reason: format!("not a PKCS#8 P-256 private key: {e}"),
            })?;
        let (kid, jwks) = public_jwks(pair.public_key().as_ref(), &key_path)?;
        let jwks_path = data_dir.join(JWKS_FILE);
        let json = serde_json::to_vec_pretty(&jwks).map_err(|e| IssuerError::Jwks {
            reason: e.to_string(),
        })?;
        if fs::read(&jwks_path).ok().as_deref() != Some(json.as_slice()) {
            write_public_unique(&jwks_path, &json, &rng)?;
        }
        Ok(Self {
            key: IssuerKey(pkcs8),
            kid,
            jwks,
            rng,
        })
    }

    /// The key ID: base64url SHA-256 of the DER public key, as Kubernetes derives it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public keys, as written to [`JWKS_FILE`].
    pub fn jwks(&self) -> JwkSet {
        self.jwks.clone()
    }

    /// A verifier for this issuer's tokens (issuer [`LOCAL_ISSUER`], default leeway).
    pub fn verifier(&self) -> JwtVerifier {
        local_verifier(self.jwks.clone())
    }

    /// Signs a token for `req`, valid from `now` for `req.ttl`, shaped like a
    /// projected Kubernetes token. No trailing newline.
    pub fn issue(
        &self,
        req: &TokenRequest,
        now: OffsetDateTime,
    ) -> Result<Zeroizing<String>, IssuerError> {
        let bad = |reason: String| IssuerError::InvalidRequest { reason };
        SpiffeId::for_service_account(
            &TrustDomain::default(),
            &req.namespace,
            &req.service_account,
        )
        .map_err(|e| bad(e.to_string()))?;
        if req.audiences.is_empty() || req.audiences.iter().any(String::is_empty) {
            return Err(bad("at least one non-empty audience is required".into()));
        }
        if req.ttl <= time::Duration::ZERO {
            return Err(bad(format!("ttl must be positive, not {}", req.ttl)));
        }
        let exp = now
            .checked_add(req.ttl)
            .ok_or_else(|| bad(format!("ttl {} is too long", req.ttl)))?;
        if matches!(&req.pod, Some((name, uid)) if name.is_empty() || uid.is_empty()) {
            return Err(bad("a pod binding needs both a name and a uid".into()));
        }
        if matches!(&req.node, Some((name, _)) if name.is_empty()) {
            return Err(bad("a node binding needs a name".into()));
        }
        let sa_uid = service_account_uid(&req.namespace, &req.service_account);
        let claims = Claims {
            aud: &req.audiences,
            exp: exp.unix_timestamp(),
            iat: now.unix_timestamp(),
            iss: LOCAL_ISSUER,
            jti: random_uuid(&self.rng)?,
            kubernetes: KubernetesClaim {
                namespace: &req.namespace,
                node: req.node.as_ref().map(|(name, uid)| ObjectRef {
                    name,
                    uid: uid.as_deref(),
                }),
                pod: req.pod.as_ref().map(|(name, uid)| ObjectRef {
                    name,
                    uid: Some(uid),
                }),
                serviceaccount: ObjectRef {
                    name: &req.service_account,
                    uid: Some(&sa_uid),
                },
            },
            nbf: now.unix_timestamp(),
            sub: format!("{SUBJECT_PREFIX}{}:{}", req.namespace, req.service_account),
        };
        let header = serde_json::json!({ "alg": "ES256", "kid": self.kid });
        let mut token = Zeroizing::new(String::with_capacity(1024));
        token.push_str(&b64_json(&header)?);
        token.push('.');
        token.push_str(&b64_json(&claims)?);
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.key.0, &self.rng)
                .map_err(|e| bad(format!("issuer key unusable: {e}")))?;
        let signature = pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| bad("signing failed".into()))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}

/// Reads only the JWKS file in `data_dir` (no private key): what the CA trusts.
pub fn load_verifier(data_dir: &Path) -> Result<JwtVerifier, IssuerError> {
    let path = data_dir.join(JWKS_FILE);
    let bytes = fs::read(&path).map_err(|e| IssuerError::io(&path, e))?;
    let jwks: JwkSet = serde_json::from_slice(&bytes).map_err(|e| IssuerError::Key {
        path: path.clone(),
        reason: format!("not a JWKS: {e}"),
    })?;
    let verifier = local_verifier(jwks);
    if verifier.key_count() == 0 {
        return Err(IssuerError::Jwks {
            reason: format!("{} holds no RS256 or ES256 key", path.display()),
        });
    }
    Ok(verifier)
}

fn local_verifier(jwks: JwkSet) -> JwtVerifier {
    JwtVerifier::new(JwtVerifierConfig {
        issuer: Some(LOCAL_ISSUER.to_owned()),
        jwks,
        leeway: DEFAULT_LEEWAY,
    })
}

/// Generates a key and installs it at `path` unless another process got there
/// first (hard link: create-if-absent), in which case that key is used.
fn create_key(path: &Path, rng: &SystemRandom) -> Result<Zeroizing<Vec<u8>>, IssuerError> {
    let doc =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).map_err(|_| {
            IssuerError::Key {
                path: path.to_owned(),
                reason: "key generation failed".into(),
            }
        })?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    let pem = to_pem(&pkcs8);
    let tmp = sibling(path, &format!(".{KEY_FILE}.new-{}", random_uuid(rng)?));
    crate::secret_file::write_secret(&tmp, pem.as_bytes()).map_err(|e| IssuerError::io(&tmp, e))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the local token issuer key");
            Ok(pkcs8)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let pem = read_secret(path).map_err(|e| IssuerError::io(path, e))?;
            parse_pem(&pem, path)
        }
        Err(e) => Err(IssuerError::io(path, e)),
    }
}

fn b64_json<T: Serialize>(value: &T) -> Result<String, IssuerError> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|e| IssuerError::InvalidRequest {
            reason: e.to_string(),
        })
}

/// `secret_file::write_public` under a unique temporary name, then renamed:
/// its own temporary name is per process, and threads of one process may
/// start issuers on the same directory together.
fn write_public_unique(path: &Path, bytes: &[u8], rng: &SystemRandom) -> Result<(), IssuerError> {
    let tmp = sibling(path, &format!(".{JWKS_FILE}.new-{}", random_uuid(rng)?));
    let result =
        crate::secret_file::write_public(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| IssuerError::io(path, e))
}

fn sibling(path: &Path, name: &str) -> PathBuf {
    path.with_file_name(name)
}

fn read_secret(path: &Path) -> std::io::Result<Zeroizing<String>> {
    fs::read_to_string(path).map(Zeroizing::new)
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "token issuer key is readable by others; chmod 600 it");
        }
    }
}

fn to_pem(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut pem = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    pem.push_str(PEM_BEGIN);
    for (i, c) in b64.chars().enumerate() {
        if i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push('\n');
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn parse_pem(pem: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, IssuerError> {
    let bad = |reason: &str| IssuerError::Key {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let start = pem
        .find(PEM_BEGIN)
        .ok_or_else(|| bad("no \"BEGIN PRIVATE KEY\" block (PKCS#8 PEM expected)"))?;
    let body = &pem[start + PEM_BEGIN.len()..];
    let end = body
        .find(PEM_END)
        .ok_or_else(|| bad("no \"END PRIVATE KEY\" line"))?;
    let b64 = Zeroizing::new(
        body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>(),
    );
    STANDARD
        .decode(b64.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| bad("the PEM body is not base64"))
}

/// The kid (base64url SHA-256 of the DER SubjectPublicKeyInfo) and the JWKS for a P-256 point.
fn public_jwks(point: &[u8], path: &Path) -> Result<(String, JwkSet), IssuerError> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(IssuerError::Key {
            path: path.to_owned(),
            reason: "public key is not an uncompressed P-256 point".into(),
        });
    }
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
    let jwks = serde_json::json!({ "keys": [{
        "use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }]});
    let jwks = serde_json::from_value(jwks).map_err(|e| IssuerError::Jwks {
        reason: e.to_string(),
    })?;
    Ok((kid, jwks))
}

/// A random (version 4) UUID, for `jti` and temporary names.
fn random_uuid(rng: &SystemRandom) -> Result<String, IssuerError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| IssuerError::Random)?;
    Ok(format_uuid(bytes, 0x40))
}

/// A stable UUID-shaped uid for a local service account (version 5 style: hashed name).
fn service_account_uid(namespace: &str, service_account: &str) -> String {
    let name = format!("meshid.io/serviceaccount\0{namespace}\0{service_account}");
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    format_uuid(bytes, 0x50)
}

fn format_uuid(mut b: [u8; 16], version: u8) -> String {
    b[6] = (b[6] & 0x0f) | version;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Claims in Kubernetes' order (alphabetical, as the API server emits them).
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a [String],
    exp: i64,
    iat: i64,
    iss: &'a str,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim<'a>,
    nbf: i64,
    sub: String,
}

#[derive(Serialize)]
struct KubernetesClaim<'a> {
    namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<ObjectRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<ObjectRef<'a>>,
    serviceaccount: ObjectRef<'a>,
}

#[derive(Serialize)]
struct ObjectRef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

#[cfg(test)]
mod tests;
