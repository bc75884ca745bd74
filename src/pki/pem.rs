//! PEM (RFC 7468) decoding and encoding for certificates, CSRs and keys.
//!
//! Text outside `-----BEGIN …-----` / `-----END …-----` blocks is ignored (files
//! written by openssl often carry "Bag Attributes" or comments); inside a block
//! only base64 is accepted. Encrypted PEM (RFC 1421 headers such as
//! `Proc-Type`) is refused: meshid never holds a passphrase. Decoded bodies are
//! kept in zeroizing buffers because the same parser reads private keys.

use base64::Engine as _;
use zeroize::Zeroizing;

/// Why a PEM document could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The input is not UTF-8 text.
    #[error("PEM input is not UTF-8 text")]
    NotText,
    /// A `-----BEGIN` line is not of the form `-----BEGIN <LABEL>-----`.
    #[error("malformed PEM line {line}: expected \"-----BEGIN <LABEL>-----\"")]
    BadBeginLine {
        /// 1-based line number.
        line: usize,
    },
    /// A block was opened and never closed.
    #[error("PEM block \"{label}\" has no \"-----END {label}-----\" line")]
    MissingEnd {
        /// The label of the unterminated block.
        label: String,
    },
    /// The END line names another label than the BEGIN line.
    #[error("PEM block \"{begin}\" is closed by \"-----END {end}-----\" at line {line}")]
    MismatchedEnd {
        /// The label of the BEGIN line.
        begin: String,
        /// The label of the END line.
        end: String,
        /// 1-based line number of the END line.
        line: usize,
    },
    /// A block carries RFC 1421 headers, which only encrypted keys use.
    #[error(
        "PEM block \"{label}\" has headers (line {line}); encrypted keys are not supported, \
         decrypt it first (e.g. `openssl pkey -in key.pem -out plain.pem`)"
    )]
    Headers {
        /// The block's label.
        label: String,
        /// 1-based line number of the header.
        line: usize,
    },
    /// The block body is not valid base64.
    #[error("PEM block \"{label}\" is not valid base64")]
    BadBase64 {
        /// The block's label.
        label: String,
    },
    /// The block body is empty.
    #[error("PEM block \"{label}\" is empty")]
    Empty {
        /// The block's label.
        label: String,
    },
}

/// One decoded PEM block.
pub struct PemBlock {
    /// The label, e.g. `CERTIFICATE`.
    pub label: String,
    /// The decoded body (zeroized on drop: the same parser reads keys).
    pub der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PemBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may be a private key: print its size only.
        write!(f, "PemBlock({}, {} bytes)", self.label, self.der.len())
    }
}

/// Whether `input` looks like PEM (first non-blank characters are `-----BEGIN`).
pub fn looks_like_pem(input: &[u8]) -> bool {
    let start = input.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|i| input[i..].starts_with(b"-----BEGIN"))
}

/// Decodes every PEM block in `text`, in order.
pub fn parse_blocks(text: &str) -> Result<Vec<PemBlock>, PemError> {
    let mut blocks = Vec::new();
    // (label, base64 body so far); the body is secret when the block is a key.
    let mut open: Option<(String, Zeroizing<String>)> = None;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        match open.take() {
            None => {
                if line.starts_with("-----BEGIN") {
                    let label = line
                        .strip_prefix("-----BEGIN ")
                        .and_then(|rest| rest.strip_suffix("-----"))
                        .filter(|label| !label.is_empty() && !label.contains('-'))
                        .ok_or(PemError::BadBeginLine { line: line_no })?;
                    open = Some((label.to_owned(), Zeroizing::new(String::new())));
                }
            }
            Some((label, mut body)) => {
                if let Some(rest) = line.strip_prefix("-----END ") {
                    let end = rest.strip_suffix("-----").unwrap_or(rest);
                    if end != label {
                        return Err(PemError::MismatchedEnd {
                            begin: label,
                            end: end.to_owned(),
                            line: line_no,
                        });
                    }
                    blocks.push(decode_body(label, &body)?);
                } else if line.starts_with("-----") {
                    return Err(PemError::MissingEnd { label });
                } else if line.contains(':') {
                    return Err(PemError::Headers {
                        label,
                        line: line_no,
                    });
                } else {
                    body.push_str(line);
                    open = Some((label, body));
                }
            }
        }
    }
    match open {
        Some((label, _)) => Err(PemError::MissingEnd { label }),
        None => Ok(blocks),
    }
}

/// Same as [`parse_blocks`], for bytes that should be UTF-8 text.
pub fn parse_blocks_bytes(input: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    parse_blocks(std::str::from_utf8(input).map_err(|_| PemError::NotText)?)
}

fn decode_body(label: String, body: &str) -> Result<PemBlock, PemError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| PemError::BadBase64 {
            label: label.clone(),
        })?;
    let der = Zeroizing::new(der);
    if der.is_empty() {
        return Err(PemError::Empty { label });
    }
    Ok(PemBlock { label, der })
}

/// Encodes `der` as one PEM block with 64-column lines and a final newline.
/// The result is zeroizing because callers use it for private keys too.
pub fn encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(
        b64.len() + b64.len() / 64 + 2 * label.len() + 40,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so any byte boundary is a char boundary.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_text_outside_blocks() {
        let der: Vec<u8> = (0u8..=200).collect();
        let pem = encode("CERTIFICATE", &der);
        let text = format!(
            "Bag Attributes\n  friendlyName: x\n{}\r\ntrailing words\n",
            pem.as_str()
        );
        let blocks = parse_blocks(&text).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[0].der.as_slice(), der.as_slice());
        assert!(pem.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn each_malformation_is_named() {
        let cases: &[(&str, &str)] = &[
            ("-----BEGIN X-----\nAAAA\n", "no \"-----END X-----\""),
            ("-----BEGIN X-----\nAAAA\n-----END Y-----\n", "closed by"),
            ("-----BEGIN X-----\n!!!!\n-----END X-----\n", "not valid base64"),
            ("-----BEGIN X-----\n-----END X-----\n", "is empty"),
            ("-----BEGIN X\nAAAA\n-----END X-----\n", "malformed PEM line 1"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "encrypted keys are not supported",
            ),
        ];
        for (input, want) in cases {
            let err = parse_blocks(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        assert_eq!(
            parse_blocks_bytes(&[0xff, 0xfe]).unwrap_err(),
            PemError::NotText
        );
    }

    #[test]
    fn detects_pem_by_its_first_line() {
        assert!(looks_like_pem(b"\n  -----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!looks_like_pem(&[0x30, 0x82, 0x01]));
        assert!(!looks_like_pem(b""));
    }
}
