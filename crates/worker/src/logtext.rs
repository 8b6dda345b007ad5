//! A step log file as the text the hub gets: its bytes with every secret masked, then decoded as
//! UTF-8 (an invalid byte sequence becomes U+FFFD). Pure logic, no IO.
//!
//! The text depends only on the bytes, never on how they were cut into reads: a secret split
//! across two reads is still masked (the masker holds back what could be the start of one) and
//! a character split across two reads is decoded whole (its first bytes are held back). So the
//! text of a file read again from its start after a restart is the same text, and the hub's
//! offsets in it still hold.

use dispatch_executor::{Masker, Secrets};

/// Turns the bytes of one log file, in order, into its upload text.
#[derive(Debug)]
pub(crate) struct StreamText {
    masker: Masker,
    /// Masked bytes that may be the start of a character whose rest has not been read yet.
    undecoded: Vec<u8>,
}

impl StreamText {
    pub(crate) fn new(secrets: Secrets) -> StreamText {
        StreamText {
            masker: Masker::new(secrets),
            undecoded: Vec::new(),
        }
    }

    /// The text the next `bytes` of the file add (some of it may come with later bytes).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        let masked = self.masker.push(bytes);
        self.decode(&masked, false)
    }

    /// The rest of the text once the file has ended.
    pub(crate) fn finish(&mut self) -> String {
        let masked = self.masker.finish();
        self.decode(&masked, true)
    }

    fn decode(&mut self, bytes: &[u8], at_end: bool) -> String {
        self.undecoded.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.undecoded;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // A character cut by the end of what arrived: wait for its rest.
                        None if !at_end => {
                            rest = after;
                            break;
                        }
                        None => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &[];
                            break;
                        }
                    }
                }
            }
        }
        self.undecoded = rest.to_vec();
        out
    }
}

/// The largest character boundary of `text` at or below `at`.
pub(crate) fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(["hunter2".to_owned(), "lic-key-123".to_owned()])
    }

    fn whole(bytes: &[u8]) -> String {
        let mut s = StreamText::new(secrets());
        let mut out = s.push(bytes);
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn the_text_does_not_depend_on_how_the_file_was_read() {
        let mut bytes = "pw hunter2 é ✓ lic-key-123 end".as_bytes().to_vec();
        bytes.extend_from_slice(b"\xff\ntail \xe2\x9c");
        let want = whole(&bytes);
        assert!(
            !want.contains("hunter2") && !want.contains("lic-key-123"),
            "{want}"
        );
        assert!(want.contains("é ✓") && want.contains('\u{FFFD}'), "{want}");
        for cut in 0..=bytes.len() {
            for second in cut..=bytes.len() {
                let mut s = StreamText::new(secrets());
                let mut got = s.push(&bytes[..cut]);
                got.push_str(&s.push(&bytes[cut..second]));
                got.push_str(&s.push(&bytes[second..]));
                got.push_str(&s.finish());
                assert_eq!(got, want, "cut at {cut} and {second}");
            }
        }
    }

    #[test]
    fn floor_boundary_never_splits_a_character() {
        assert_eq!(floor_boundary("aé", 2), 1);
        assert_eq!(floor_boundary("aé", 3), 3);
        assert_eq!(floor_boundary("aé", 99), 3);
    }
}
