//! CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), the checksum used by zlib, PNG and gzip.
//!
//! Written here rather than pulled in as a dependency because it is twenty lines and the journal only
//! needs to detect torn and flipped bytes, not to be fast on gigabytes.

const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 { POLY ^ (c >> 1) } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Continues a CRC over `bytes`; start with `0` and feed chunks in order.
pub(crate) fn update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::update;

    #[test]
    fn matches_published_check_values() {
        // The standard "check" value of CRC-32/ISO-HDLC, plus zlib's results for two short inputs.
        assert_eq!(update(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(update(0, b""), 0);
        assert_eq!(update(0, b"a"), 0xE8B7_BE43);
        assert_eq!(
            update(0, b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn chunked_equals_whole() {
        let data = b"durable tracked jobs";
        let (a, b) = data.split_at(7);
        assert_eq!(update(update(0, a), b), update(0, data));
    }
}
