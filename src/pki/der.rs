//! Minimal DER reading and writing for the few structures no dependency
//! converts for us (SEC1 and PKCS#1 keys into PKCS#8), and for tests that
//! build malformed inputs by hand. Single-byte tags only; lengths up to 2^32.

/// Tag of an ASN.1 INTEGER.
pub(crate) const INTEGER: u8 = 0x02;
/// Tag of an ASN.1 BIT STRING.
pub(crate) const BIT_STRING: u8 = 0x03;
/// Tag of an ASN.1 OCTET STRING.
pub(crate) const OCTET_STRING: u8 = 0x04;
/// Tag of an ASN.1 NULL.
pub(crate) const NULL: u8 = 0x05;
/// Tag of an ASN.1 OBJECT IDENTIFIER.
pub(crate) const OID: u8 = 0x06;
/// Tag of an ASN.1 SEQUENCE.
pub(crate) const SEQUENCE: u8 = 0x30;
/// Tag of `[0]` constructed (context-specific).
pub(crate) const CONTEXT_0: u8 = 0xa0;

/// DER content of OID 1.2.840.10045.2.1 (id-ecPublicKey).
pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER content of OID 1.2.840.10045.3.1.7 (secp256r1 / P-256).
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER content of OID 1.3.132.0.34 (secp384r1 / P-384).
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER content of OID 1.2.840.113549.1.1.1 (rsaEncryption).
pub(crate) const OID_RSA_ENCRYPTION: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Reads one TLV from the front of `input`: `(tag, content, rest)`.
/// `None` on truncation, a multi-byte tag or a non-minimal/indefinite length.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        if len < 0x80 {
            return None;
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// Whether `input` is a sequence of TLVs in canonical DER: minimal lengths
/// ([`read_tlv`]), minimal INTEGERs, constructed contents canonical too, and,
/// with `bit_string_der`, BIT STRING contents (after the unused-bits byte,
/// which must be 0) canonical DER as well (PKCS#1 keys inside an SPKI).
pub(crate) fn is_canonical(mut input: &[u8], bit_string_der: bool) -> bool {
    while !input.is_empty() {
        let Some((tag, content, rest)) = read_tlv(input) else {
            return false;
        };
        let ok = match tag {
            INTEGER => match content {
                [] => false,
                [0x00, next, ..] => next & 0x80 != 0,
                [0xff, next, ..] => next & 0x80 == 0,
                _ => true,
            },
            BIT_STRING if bit_string_der => {
                matches!(content.split_first(), Some((0, inner)) if is_canonical(inner, false))
            }
            t if t & 0x20 != 0 => is_canonical(content, bit_string_der),
            _ => true,
        };
        if !ok {
            return false;
        }
        input = rest;
    }
    true
}

/// Reads one TLV that must have `tag`: `(content, rest)`.
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match read_tlv(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// Concatenates already-encoded TLVs.
pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_short_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let encoded = tlv(OCTET_STRING, &content);
            let (tag, got, rest) = read_tlv(&encoded).unwrap();
            assert_eq!((tag, got.len(), rest.len()), (OCTET_STRING, len, 0));
        }
    }

    #[test]
    fn refuses_truncated_and_non_minimal_lengths() {
        assert!(read_tlv(&[0x30, 0x05, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_none());
        assert!(read_tlv(&[0x30, 0x80]).is_none());
        assert!(expect(&[0x02, 0x01, 0x00], SEQUENCE).is_none());
    }
}
