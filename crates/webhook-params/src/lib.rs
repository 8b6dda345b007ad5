//! The runtime-param string of a webhook-triggered run (`docs/protocol.md`): building it, parsing
//! it, and the Go-compatible quoting it relies on.
//!
//! A run's parameters travel as one line of `NAME="value"` pairs separated by single spaces:
//!
//! ```
//! use std::collections::BTreeMap;
//! use dispatch_webhook_params::{build_runtime_params, parse_runtime_params, Param};
//!
//! let extras = BTreeMap::from([("GITHUB_EVENT_NAME".to_string(), "push".to_string())]);
//! let line = build_runtime_params(r#"{"ref":"main"}"#, "", &extras);
//! assert_eq!(line, r#"WEBHOOK_PAYLOAD="{\"ref\":\"main\"}" WEBHOOK_HEADERS="{}" GITHUB_EVENT_NAME="push""#);
//! assert_eq!(parse_runtime_params(&line)?[2], Param::named("GITHUB_EVENT_NAME", "push"));
//! # Ok::<(), dispatch_webhook_params::ParseError>(())
//! ```
//!
//! Main items: [`quote`] (byte-identical to Go's `strconv.Quote`, so another implementation can
//! read what we write), [`build_runtime_params`], [`parse_runtime_params`] (its exact inverse, and
//! a reader for hand-written `NAME=value`, positional and backtick-quoted values), [`Param`] and
//! [`ParseError`].
//!
//! This crate is pure string handling: it does no IO and knows nothing about GitHub, DAGs or which
//! extras exist; the worker decides those.
//!
//! Printable runes are decided with Unicode 15.0.0, the version Go 1.21 and later use. A Go built
//! on another Unicode version differs only for code points assigned in one version and not the
//! other (Go keeps them raw where we escape them, or the reverse); both forms parse to the same
//! value.

mod print_table;

use std::collections::BTreeMap;

/// Name under which [`build_runtime_params`] passes the webhook body.
pub const WEBHOOK_PAYLOAD: &str = "WEBHOOK_PAYLOAD";
/// Name under which [`build_runtime_params`] passes the webhook headers (a JSON object).
pub const WEBHOOK_HEADERS: &str = "WEBHOOK_HEADERS";

/// The Unicode version whose general categories decide which runes [`quote`] keeps unescaped.
pub const UNICODE_VERSION: &str = print_table::UNICODE_VERSION;

/// One parsed parameter: `NAME=value` or, with `name == None`, a positional value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// The name before `=`, or `None` for a positional value.
    pub name: Option<String>,
    /// The value, unquoted.
    pub value: String,
}

impl Param {
    /// A named parameter.
    pub fn named(name: impl Into<String>, value: impl Into<String>) -> Self {
        Param {
            name: Some(name.into()),
            value: value.into(),
        }
    }

    /// A positional parameter.
    pub fn positional(value: impl Into<String>) -> Self {
        Param {
            name: None,
            value: value.into(),
        }
    }
}

/// Why a runtime-param string could not be parsed. Every variant names the byte offset in the
/// input where the problem starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A `"` or `` ` `` opened a value that never closes.
    #[error("unterminated {quote} quote opened at byte {offset}")]
    UnterminatedQuote {
        /// Offset of the opening quote.
        offset: usize,
        /// The quote character, `"` or `` ` ``.
        quote: char,
    },
    /// A backslash escape Go's `strconv.Unquote` would reject (unknown letter, short or bad
    /// hex/octal digits, a surrogate or out-of-range code point, `\'` inside double quotes).
    #[error("invalid escape sequence at byte {offset}")]
    InvalidEscape {
        /// Offset of the backslash.
        offset: usize,
    },
    /// A raw line feed inside a double-quoted value (it must be written `\n`).
    #[error("raw newline inside a double-quoted value at byte {offset}")]
    NewlineInQuote {
        /// Offset of the line feed.
        offset: usize,
    },
    /// `\xNN` or octal escapes in a double-quoted value spell bytes that are not UTF-8.
    #[error("quoted value starting at byte {offset} decodes to invalid utf-8")]
    InvalidUtf8 {
        /// Offset of the opening quote.
        offset: usize,
    },
    /// `=` with nothing before it.
    #[error("`=` without a parameter name at byte {offset}")]
    MissingName {
        /// Offset of the `=`.
        offset: usize,
    },
    /// The text before `=` is not a name (`[A-Za-z_][A-Za-z0-9_]*`).
    #[error("invalid parameter name at byte {offset}")]
    InvalidName {
        /// Offset of the name's first byte.
        offset: usize,
    },
    /// A quote inside an unquoted word, e.g. `A=x"y"` or `a"b"`.
    #[error("unexpected quote inside an unquoted value at byte {offset}")]
    UnexpectedQuote {
        /// Offset of the quote character.
        offset: usize,
    },
    /// Something other than whitespace right after a closing quote, e.g. `A="x"B="y"`.
    #[error("expected whitespace after the closing quote at byte {offset}")]
    MissingSeparator {
        /// Offset of the unexpected character.
        offset: usize,
    },
}

impl ParseError {
    /// The byte offset in the input where the problem starts.
    pub fn offset(&self) -> usize {
        match self {
            ParseError::UnterminatedQuote { offset, .. }
            | ParseError::InvalidEscape { offset }
            | ParseError::NewlineInQuote { offset }
            | ParseError::InvalidUtf8 { offset }
            | ParseError::MissingName { offset }
            | ParseError::InvalidName { offset }
            | ParseError::UnexpectedQuote { offset }
            | ParseError::MissingSeparator { offset } => *offset,
        }
    }
}

/// Reports whether Go's `strconv.IsPrint` (= `unicode.IsPrint`) holds for `c`: general categories
/// L, M, N, P, S, and the ASCII space.
pub fn is_print(c: char) -> bool {
    let c = u32::from(c);
    if c < 0x80 {
        return (0x20..0x7f).contains(&c);
    }
    print_table::PRINTABLE
        .binary_search_by(|&(start, end)| {
            if end < c {
                std::cmp::Ordering::Less
            } else if start > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Quotes `s` as a double-quoted string literal, byte-identical to Go's `strconv.Quote`.
///
/// `"` and `\` are backslashed; printable runes ([`is_print`]) are kept; `\a \b \f \n \r \t \v`
/// use their short escapes; other runes below U+0020 and U+007F become `\xNN`, other runes below
/// U+10000 `\uNNNN`, the rest `\UNNNNNNNN` (lowercase hex, as Go writes it).
///
/// ```
/// assert_eq!(dispatch_webhook_params::quote("a\"b\u{7f}\u{a0}é\u{1F600}\u{E0001}"),
///            r#""a\"b\x7f\u00a0é😀\U000e0001""#);
/// ```
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_quoted(&mut out, s);
    out
}

fn push_quoted(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_print(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c => {
                let code = u32::from(c);
                let (prefix, digits) = if code < 0x20 || code == 0x7f {
                    ("\\x", 2)
                } else if code < 0x10000 {
                    ("\\u", 4)
                } else {
                    ("\\U", 8)
                };
                out.push_str(prefix);
                for shift in (0..digits).rev() {
                    out.push(char::from(HEX[((code >> (4 * shift)) & 0xf) as usize]));
                }
            }
        }
    }
    out.push('"');
}

/// Builds the runtime-param string of a webhook run.
///
/// Order: [`WEBHOOK_PAYLOAD`], [`WEBHOOK_HEADERS`], then `extras` by name (a `BTreeMap` iterates
/// sorted). An empty `payload` or `headers` becomes `{}`; extras with empty values are left out.
/// Every value is written with [`quote`]; pairs are separated by one space.
///
/// Extra names are written as given: callers pass names matching `[A-Za-z_][A-Za-z0-9_]*` (the
/// worker's `GITHUB_*` set), which is what [`parse_runtime_params`] reads back.
pub fn build_runtime_params(
    payload: &str,
    headers: &str,
    extras: &BTreeMap<String, String>,
) -> String {
    fn or_empty_object(s: &str) -> &str {
        if s.is_empty() {
            "{}"
        } else {
            s
        }
    }
    let mut out = String::with_capacity(payload.len() + headers.len() + 64);
    let fixed = [
        (WEBHOOK_PAYLOAD, or_empty_object(payload)),
        (WEBHOOK_HEADERS, or_empty_object(headers)),
    ];
    let extras = extras
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name.as_str(), value.as_str()));
    for (index, (name, value)) in fixed.into_iter().chain(extras).enumerate() {
        if index > 0 {
            out.push(' ');
        }
        out.push_str(name);
        out.push('=');
        push_quoted(&mut out, value);
    }
    out
}

/// Parses a runtime-param string: the exact inverse of [`build_runtime_params`].
///
/// Items are separated by ASCII whitespace. Each item is `NAME=value` or a positional `value`;
/// a value is double-quoted (Go escapes, as `strconv.Unquote` reads them), backtick-quoted (raw,
/// taken verbatim up to the next backtick) or bare (up to the next whitespace; `NAME=` alone is an
/// empty value). A name matches `[A-Za-z_][A-Za-z0-9_]*`.
pub fn parse_runtime_params(input: &str) -> Result<Vec<Param>, ParseError> {
    Parser { input, pos: 0 }.parse_all()
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace()
}

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.pos).copied()
    }

    fn skip_separators(&mut self) {
        while self.peek().is_some_and(is_separator) {
            self.pos += 1;
        }
    }

    fn parse_all(mut self) -> Result<Vec<Param>, ParseError> {
        let mut params = Vec::new();
        self.skip_separators();
        while self.pos < self.input.len() {
            params.push(self.parse_item()?);
            match self.peek() {
                None => break,
                Some(b) if is_separator(b) => self.skip_separators(),
                Some(_) => {
                    return Err(ParseError::MissingSeparator { offset: self.pos });
                }
            }
        }
        Ok(params)
    }

    /// Parses one item; leaves `pos` at the byte after it.
    fn parse_item(&mut self) -> Result<Param, ParseError> {
        let start = self.pos;
        match self.peek() {
            Some(b'"' | b'`') => return Ok(Param::positional(self.parse_quoted()?)),
            Some(b'=') => return Err(ParseError::MissingName { offset: start }),
            _ => {}
        }
        // A word runs to whitespace, `=` or a quote; what stops it decides what it was.
        let word_end = self.input[start..]
            .bytes()
            .position(|b| is_separator(b) || matches!(b, b'=' | b'"' | b'`'))
            .map_or(self.input.len(), |n| start + n);
        self.pos = word_end;
        let word = &self.input[start..word_end];
        match self.peek() {
            None => Ok(Param::positional(word)),
            Some(b) if is_separator(b) => Ok(Param::positional(word)),
            Some(b'"' | b'`') => Err(ParseError::UnexpectedQuote { offset: word_end }),
            Some(_) => {
                // `=`: `word` is a name.
                if !is_name(word) {
                    return Err(ParseError::InvalidName { offset: start });
                }
                self.pos += 1;
                let value = match self.peek() {
                    Some(b'"' | b'`') => self.parse_quoted()?,
                    _ => self.parse_bare()?,
                };
                Ok(Param::named(word, value))
            }
        }
    }

    /// A bare value: everything up to whitespace; `=` is allowed inside (`URL=a?b=c`), quotes
    /// are not, since they almost always mean a mistyped quoted value.
    fn parse_bare(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        for (i, b) in self.input[start..].bytes().enumerate() {
            if is_separator(b) {
                self.pos = start + i;
                return Ok(self.input[start..self.pos].to_string());
            }
            if b == b'"' || b == b'`' {
                return Err(ParseError::UnexpectedQuote { offset: start + i });
            }
        }
        self.pos = self.input.len();
        Ok(self.input[start..].to_string())
    }

    /// A quoted value starting at `pos` (which holds `"` or `` ` ``).
    fn parse_quoted(&mut self) -> Result<String, ParseError> {
        let open = self.pos;
        let rest = &self.input[open + 1..];
        if self.peek() == Some(b'`') {
            let len = rest.find('`').ok_or(ParseError::UnterminatedQuote {
                offset: open,
                quote: '`',
            })?;
            self.pos = open + 1 + len + 1;
            return Ok(rest[..len].to_string());
        }
        let (value, consumed) = unquote_body(rest, open + 1).map_err(|err| match err {
            BodyError::Unterminated => ParseError::UnterminatedQuote {
                offset: open,
                quote: '"',
            },
            BodyError::InvalidUtf8 => ParseError::InvalidUtf8 { offset: open },
            BodyError::Parse(err) => err,
        })?;
        self.pos = open + 1 + consumed;
        Ok(value)
    }
}

enum BodyError {
    Unterminated,
    InvalidUtf8,
    Parse(ParseError),
}

/// Decodes the inside of a double-quoted value, `body` starting right after the opening quote
/// (at input offset `base`). Returns the value and the bytes consumed including the closing quote.
///
/// Go's `\xNN` and octal escapes denote bytes, not runes, so the value is assembled as bytes and
/// checked for UTF-8 at the end, exactly as Go's `Unquote` would then be checked by a `string`
/// consumer that needs valid text.
fn unquote_body(body: &str, base: usize) -> Result<(String, usize), BodyError> {
    let bytes = body.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    loop {
        // Copy the plain run up to the next byte that needs attention in one go.
        let run = bytes[i..]
            .iter()
            .position(|&b| matches!(b, b'"' | b'\\' | b'\n'))
            .ok_or(BodyError::Unterminated)?;
        out.extend_from_slice(&bytes[i..i + run]);
        i += run;
        match bytes[i] {
            b'"' => break,
            b'\n' => {
                return Err(BodyError::Parse(ParseError::NewlineInQuote {
                    offset: base + i,
                }))
            }
            _ => {
                let escape_at = base + i;
                let invalid = || BodyError::Parse(ParseError::InvalidEscape { offset: escape_at });
                let Some(&letter) = bytes.get(i + 1) else {
                    return Err(BodyError::Unterminated);
                };
                i += 2;
                let simple = match letter {
                    b'a' => Some(0x07),
                    b'b' => Some(0x08),
                    b'f' => Some(0x0c),
                    b'n' => Some(b'\n'),
                    b'r' => Some(b'\r'),
                    b't' => Some(b'\t'),
                    b'v' => Some(0x0b),
                    b'\\' => Some(b'\\'),
                    b'"' => Some(b'"'),
                    _ => None,
                };
                if let Some(byte) = simple {
                    out.push(byte);
                    continue;
                }
                match letter {
                    b'x' => {
                        let value = digits(bytes, i, 2, 16).ok_or_else(invalid)?;
                        i += 2;
                        out.push(value as u8);
                    }
                    b'0'..=b'7' => {
                        // Go: exactly three octal digits, the first already read, at most \377.
                        let value = digits(bytes, i - 1, 3, 8).ok_or_else(invalid)?;
                        if value > 0xff {
                            return Err(invalid());
                        }
                        i += 2;
                        out.push(value as u8);
                    }
                    b'u' | b'U' => {
                        let count = if letter == b'u' { 4 } else { 8 };
                        let value = digits(bytes, i, count, 16).ok_or_else(invalid)?;
                        i += count;
                        let c = char::from_u32(value).ok_or_else(invalid)?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(invalid()),
                }
            }
        }
    }
    let value = String::from_utf8(out).map_err(|_| BodyError::InvalidUtf8)?;
    Ok((value, i + 1))
}

/// Reads exactly `count` digits in `radix` at `bytes[at..]`.
fn digits(bytes: &[u8], at: usize, count: usize, radix: u32) -> Option<u32> {
    let slice = bytes.get(at..at + count)?;
    slice.iter().try_fold(0u32, |acc, &b| {
        let digit = char::from(b).to_digit(radix)?;
        Some(acc * radix + digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_disjoint() {
        let table = &print_table::PRINTABLE;
        for pair in table.windows(2) {
            assert!(pair[0].0 <= pair[0].1, "{pair:x?}");
            assert!(
                pair[0].1 + 1 < pair[1].0,
                "{pair:x?} not merged or overlapping"
            );
        }
        // The ASCII fast path must agree with the table on printable ASCII (space aside: Zs).
        for c in 0x21u32..0x7f {
            assert!(table.iter().any(|&(s, e)| (s..=e).contains(&c)), "{c:x}");
        }
    }

    #[test]
    fn escape_at_end_of_input_is_unterminated() {
        assert_eq!(
            parse_runtime_params("A=\"x\\"),
            Err(ParseError::UnterminatedQuote {
                offset: 2,
                quote: '"'
            })
        );
    }
}
