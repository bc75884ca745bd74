//! Plug-in CA: files written by an operator (Istio `cacerts`, or a
//! cert-manager secret), checked rule by rule before the CA signs anything.

use time::OffsetDateTime;

use super::facts::CertFacts;
use super::source::{Files, Origin};
use super::{Authority, AuthorityConfig, AuthorityError};
use crate::time::Clock;

/// Longest chain followed from the signing certificate to a root.
const MAX_CHAIN_DEPTH: usize = 8;

const ISTIO_LAYOUT: &str =
    "Istio cacerts layout: ca-cert.pem, ca-key.pem and root-cert.pem are required, \
                            cert-chain.pem is optional";
const CERT_MANAGER_LAYOUT: &str = "cert-manager layout: tls.crt, tls.key and ca.crt are required";

/// Which files hold what (names within the directory or Secret).
struct Layout {
    /// Signing certificate first, possibly followed by its chain.
    cert: &'static str,
    key: &'static str,
    /// Intermediates (may also repeat the signing certificate or the root).
    chain: Option<&'static str>,
    roots: &'static str,
}

impl Layout {
    fn detect(files: Files<'_>) -> Result<Self, AuthorityError> {
        let (layout, name) = if files.has("ca-cert.pem") || files.has("ca-key.pem") {
            (
                Layout {
                    cert: "ca-cert.pem",
                    key: "ca-key.pem",
                    // Empty, as Istio writes it for a root that signs, means none.
                    chain: Some("cert-chain.pem")
                        .filter(|name| files.has(name) && !files.is_blank(name)),
                    roots: "root-cert.pem",
                },
                ISTIO_LAYOUT,
            )
        } else if files.has("tls.crt") || files.has("tls.key") {
            (
                Layout {
                    cert: "tls.crt",
                    key: "tls.key",
                    chain: None,
                    roots: "ca.crt",
                },
                CERT_MANAGER_LAYOUT,
            )
        } else {
            return Err(AuthorityError::NoPluginFiles {
                store: files.label(),
            });
        };
        for file in [layout.cert, layout.key, layout.roots] {
            if !files.has(file) {
                return Err(AuthorityError::MissingFile {
                    path: files.origin(file),
                    layout: name,
                });
            }
        }
        Ok(layout)
    }
}

pub(super) fn load(
    files: Files<'_>,
    cfg: &AuthorityConfig,
    clock: &dyn Clock,
) -> Result<Authority, AuthorityError> {
    let layout = Layout::detect(files)?;
    let now = clock.now();

    let key = files.read_key(layout.key)?;
    let mut pool = parse_all(files, layout.cert)?;
    let signing = pool.remove(0);
    if let Some(chain) = layout.chain {
        pool.extend(parse_all(files, chain)?);
    }
    let roots_origin = files.origin(layout.roots);
    let roots = parse_all(files, layout.roots)?;

    // Rule: the roots are self-signed CAs, currently valid.
    for root in &roots {
        root.check_self_signed()?;
        root.check_valid_at(now)?;
    }
    // Rule: the key belongs to the signing certificate.
    if !signing.has_public_key(&key.public_key_der()) {
        return Err(AuthorityError::KeyMismatch {
            key: files.origin(layout.key),
            cert: files.origin(layout.cert),
        });
    }
    // Rule: the signing certificate is a CA allowed to sign, currently valid.
    signing.check_can_sign(true)?;
    signing.check_valid_at(now)?;

    // Rule: signature by signature up to a root in the roots file.
    let (intermediates, root) = build_path(&signing, &pool, &roots, &roots_origin, now)?;
    // Rule: every CA's pathLenConstraint allows the intermediate CAs below it.
    let ladder = std::iter::once(&signing)
        .chain(intermediates.iter().copied())
        .chain([root]);
    for (below, ca) in ladder.enumerate() {
        if let Some(limit) = ca.path_len {
            if (limit as usize) < below {
                return Err(AuthorityError::PathLenExceeded {
                    path: ca.path.clone(),
                    subject: ca.subject.clone(),
                    limit,
                    below,
                });
            }
        }
    }

    let signer_is_root = roots.iter().any(|r| r.der == signing.der);
    let chain = if signer_is_root {
        Vec::new()
    } else {
        std::iter::once(&signing)
            .chain(intermediates.iter().copied())
            .map(|c| c.der.clone())
            .collect()
    };
    Authority::assemble(
        key,
        &files.origin(layout.key),
        signing,
        chain,
        roots,
        cfg,
        clock,
    )
}

fn parse_all(files: Files<'_>, name: &'static str) -> Result<Vec<CertFacts>, AuthorityError> {
    let origin = files.origin(name);
    files
        .read_certs(name)?
        .into_iter()
        .map(|der| CertFacts::parse(der, &origin))
        .collect()
}

/// Walks from `signing` up through `pool` until a certificate is issued by a
/// root, checking each signature. Returns the intermediates above `signing`
/// (in order) and the root reached.
fn build_path<'a>(
    signing: &'a CertFacts,
    pool: &'a [CertFacts],
    roots: &'a [CertFacts],
    roots_path: &Origin,
    now: OffsetDateTime,
) -> Result<(Vec<&'a CertFacts>, &'a CertFacts), AuthorityError> {
    // cert-chain.pem often repeats the signing certificate and the root.
    let mut used: Vec<bool> = pool.iter().map(|c| c.der == signing.der).collect();
    let mut path = Vec::new();
    let mut current = signing;
    loop {
        let broken = |reason: String| AuthorityError::ChainBroken {
            path: current.path.clone(),
            subject: current.subject.clone(),
            roots: roots_path.clone(),
            reason,
        };
        let mut failure = None;
        for root in roots.iter().filter(|r| r.subject_raw == current.issuer_raw) {
            match current.signed_by(&root.spki_raw, true) {
                Ok(()) => return Ok((path, root)),
                Err(reason) => {
                    failure = Some(format!(
                        "issuer \"{}\" found in the roots but {reason}",
                        root.subject
                    ))
                }
            }
        }
        if current.is_self_issued() {
            return Err(broken(failure.unwrap_or_else(|| {
                "it is self-signed but not one of the roots".to_owned()
            })));
        }
        if path.len() >= MAX_CHAIN_DEPTH {
            return Err(broken(format!(
                "no root within {MAX_CHAIN_DEPTH} certificates"
            )));
        }
        let mut next = None;
        for (i, candidate) in pool.iter().enumerate() {
            if used[i] || candidate.subject_raw != current.issuer_raw {
                continue;
            }
            match current.signed_by(&candidate.spki_raw, true) {
                Ok(()) => {
                    next = Some(i);
                    break;
                }
                Err(reason) => {
                    failure = Some(format!(
                        "issuer \"{}\" found in {} but {reason}",
                        candidate.subject, candidate.path
                    ))
                }
            }
        }
        let Some(i) = next else {
            return Err(broken(failure.unwrap_or_else(|| {
                format!(
                    "its issuer \"{}\" is neither in the chain nor among the roots",
                    current.issuer
                )
            })));
        };
        used[i] = true;
        let ca = &pool[i];
        // Rule: every intermediate is a CA, currently valid.
        ca.check_can_sign(false)?;
        ca.check_valid_at(now)?;
        path.push(ca);
        current = ca;
    }
}
