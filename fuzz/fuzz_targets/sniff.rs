//! Fuzzes first-bytes sniffing (`meshid::proxy::sniff::sniff`): it must never
//! panic, must decide once `SNIFF_BYTES` bytes are in, and a decision must
//! never change as more bytes arrive (every prefix is undecided or agrees).

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshid::proxy::sniff::{sniff, Sniffed, SNIFF_BYTES};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if data.len() >= SNIFF_BYTES {
        assert_ne!(
            verdict,
            Sniffed::NeedMore,
            "undecided after {SNIFF_BYTES} bytes"
        );
    }
    for end in 0..data.len().min(SNIFF_BYTES + 1) {
        let earlier = sniff(&data[..end]);
        assert!(
            earlier == Sniffed::NeedMore || earlier == verdict,
            "prefix of {end} bytes said {earlier:?}, the whole input {verdict:?}"
        );
    }
});
