//! Secret masking: every secret value in text the executor writes (step logs, the copies of
//! `stdout`/`stderr`, outputs kept in the run record) is replaced by [`MASK`].
//!
//! Pure logic: no IO, tested without a runtime.

use std::sync::Arc;

/// What a secret value is replaced with.
pub const MASK: &str = "*******";

/// The secret values of one run, longest first (so that a secret that contains another is
/// masked whole). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Arc<Vec<Vec<u8>>>);

impl Secrets {
    /// Empty values are left out: there is nothing to hide in them.
    pub fn new(values: impl IntoIterator<Item = String>) -> Secrets {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::into_bytes)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Secrets(Arc::new(values))
    }

    /// True when there is no value to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn longest(&self) -> usize {
        self.0.first().map_or(0, Vec::len)
    }

    /// The secret that starts at `text[at..]`, if any (the longest one).
    fn at(&self, text: &[u8], at: usize) -> Option<usize> {
        self.0
            .iter()
            .find(|s| text[at..].starts_with(s))
            .map(Vec::len)
    }

    /// `text` with every secret value replaced.
    pub fn mask_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        let (mut out, rest) = self.mask_from(text.as_bytes(), text.len());
        out.extend_from_slice(rest);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Masks the occurrences that start before `scan_end` in `text`; returns the text up to
    /// where the scan stopped (masked) and the rest, not looked at.
    fn mask_from<'t>(&self, text: &'t [u8], scan_end: usize) -> (Vec<u8>, &'t [u8]) {
        let mut out = Vec::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while i < scan_end.min(text.len()) {
            match self.at(text, i) {
                Some(len) => {
                    out.extend_from_slice(&text[copied..i]);
                    out.extend_from_slice(MASK.as_bytes());
                    i += len;
                    copied = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&text[copied..i.min(text.len())]);
        (out, &text[i.min(text.len())..])
    }
}

/// Masks a byte stream that arrives in chunks: a secret split across two chunks is still
/// masked (the longest one, as in one piece), because the last `longest - 1` bytes are held
/// back until the next chunk (or the end) shows whether a secret starts there.
#[derive(Debug)]
pub struct Masker {
    secrets: Secrets,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker of `secrets` at the start of a stream.
    pub fn new(secrets: Secrets) -> Masker {
        Masker {
            secrets,
            pending: Vec::new(),
        }
    }

    /// The bytes that can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        self.pending.extend_from_slice(chunk);
        // Every secret that starts before `scan_end` lies wholly in what has arrived.
        let scan_end = self
            .pending
            .len()
            .saturating_sub(self.secrets.longest() - 1);
        let (mut out, rest) = self.secrets.mask_from(&self.pending, scan_end);
        // Of the rest, only what may still become a secret waits for the next chunk: a line
        // that ends a chunk (a step that prints and then waits) is written at once.
        let mut i = 0;
        while i < rest.len() {
            let tail = &rest[i..];
            if self
                .secrets
                .0
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                break;
            }
            match self.secrets.at(rest, i) {
                Some(len) => {
                    out.extend_from_slice(MASK.as_bytes());
                    i += len;
                }
                None => {
                    out.push(rest[i]);
                    i += 1;
                }
            }
        }
        self.pending = rest[i..].to_vec();
        out
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let pending = std::mem::take(&mut self.pending);
        let (mut out, rest) = self.secrets.mask_from(&pending, pending.len());
        out.extend_from_slice(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new([
            "hunter2".to_owned(),
            "hunter2-long".to_owned(),
            String::new(),
        ])
    }

    #[test]
    fn mask_table() {
        let cases = [
            ("no secret here", "no secret here"),
            ("pw=hunter2;", "pw=*******;"),
            ("hunter2hunter2", "**************"),
            ("a hunter2-long b", "a ******* b"),
            ("hunter", "hunter"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(secrets().mask_str(input), want, "{input:?}");
        }
        assert_eq!(Secrets::new([String::new()]).mask_str("x"), "x");
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked() {
        let text = b"before hunter2 middle hunter2-long after hunter";
        let want = secrets().mask_str(std::str::from_utf8(text).unwrap());
        // Every way of cutting the stream in two and in single bytes gives the same text.
        for cut in 0..=text.len() {
            let mut m = Masker::new(secrets());
            let mut out = m.push(&text[..cut]);
            out.extend(m.push(&text[cut..]));
            out.extend(m.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
        }
        let mut m = Masker::new(secrets());
        let mut out = Vec::new();
        for b in text {
            out.extend(m.push(&[*b]));
        }
        out.extend(m.finish());
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn only_what_may_become_a_secret_waits_for_the_next_chunk() {
        let mut m = Masker::new(secrets());
        assert_eq!(m.push(b"line\n"), b"line\n");
        assert_eq!(m.push(b"x hunt"), b"x ");
        assert_eq!(m.push(b"er2"), b"");
        assert_eq!(m.push(b"-lo"), b"");
        assert_eq!(m.push(b"w\n"), b"*******-low\n");
        assert_eq!(m.finish(), b"");
    }

    #[test]
    fn without_secrets_chunks_pass_at_once() {
        let mut m = Masker::new(Secrets::default());
        assert_eq!(m.push(b"abc"), b"abc");
        assert!(m.finish().is_empty());
    }
}
