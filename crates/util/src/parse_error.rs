//! Parse errors that never echo the input.
//!
//! A config parser's own message quotes the offending line, or the offending value, and config
//! files hold secrets (webhook secrets, license keys). [`describe_parse_error`] keeps what a user
//! needs to fix the file, the position and the reason, and drops the text itself.

use std::ops::Range;

/// `line L, column C: <reason>` for a parse error at byte range `span` of `text`, with the
/// offending value (and anything quoted from the input) replaced by `<value>`. `message` is the
/// parser's reason without its source excerpt (for `toml`, `Error::message()`).
pub fn describe_parse_error(text: &str, message: &str, span: Option<Range<usize>>) -> String {
    let reason = redact(message, text, span.clone());
    let Some(start) = span.map(|s| s.start) else {
        return reason;
    };
    match (position(text, start), key_before(text, start)) {
        (Some((line, column)), Some(key)) => {
            format!("line {line}, column {column}, key `{key}`: {reason}")
        }
        (Some((line, column)), None) => format!("line {line}, column {column}: {reason}"),
        (None, _) => reason,
    }
}

/// The key of a `key = value` line when `offset` lies in its value: a key names, it never holds
/// a secret, and it is what a reader looks for.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = before.rsplit('\n').next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    is_key_like(key.trim_matches('"')).then_some(key)
}

/// 1-based line and column (in characters) of byte `offset`.
fn position(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

/// The message with the span's text and every quoted fragment taken out. Parsers quote values
/// with backticks or double quotes (`invalid type: string "abc"`); key names they quote are
/// lost too, which costs little next to a leaked secret: the line and column still point there.
fn redact(message: &str, text: &str, span: Option<Range<usize>>) -> String {
    let mut out = message.to_owned();
    // A span that is a key (no `=` before it on its line), such as an unknown field, names; a span
    // in a value position is redacted whatever it looks like.
    let spanned = span.and_then(|s| {
        let is_value = key_before(text, s.start).is_some();
        text.get(s).filter(|t| is_value || !is_key_like(t.trim()))
    });
    if let Some(value) = spanned {
        let value = value.trim();
        if value.len() >= 2 {
            out = out.replace(value, "<value>");
            let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
            if unquoted.len() >= 2 {
                out = out.replace(unquoted, "<value>");
            }
        }
    }
    let mut cleaned = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open];
        let Some(len) = rest[open + 1..].find(char::from(quote)) else {
            break;
        };
        cleaned.push_str(&rest[..open]);
        let inner = &rest[open + 1..open + 1 + len];
        if inner == "<value>" || is_key_like(inner) {
            cleaned.push(char::from(quote));
            cleaned.push_str(inner);
            cleaned.push(char::from(quote));
        } else {
            cleaned.push_str("<value>");
        }
        rest = &rest[open + 2 + len..];
    }
    cleaned.push_str(rest);
    cleaned.replace('\n', " ").trim().to_owned()
}

/// Short identifiers (key names, type names) may stay: they name, they do not carry data.
fn is_key_like(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 40
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !text.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_line_and_column_and_drops_the_value() {
        let text = "a = 1\nsecret = 12345678\n";
        let at = text.find("12345678").unwrap();
        let out = describe_parse_error(
            text,
            "invalid type: integer `12345678`, expected a string",
            Some(at..at + 8),
        );
        assert_eq!(
            out,
            "line 2, column 10, key `secret`: invalid type: integer `<value>`, expected a string"
        );
    }

    #[test]
    fn quoted_fragments_that_are_not_plain_names_are_dropped() {
        let out = describe_parse_error(
            "x",
            "unknown field `pol_interval`, expected one of `poll_interval`, `home`; got \"s3cr3t value\"",
            None,
        );
        assert_eq!(
            out,
            "unknown field `pol_interval`, expected one of `poll_interval`, `home`; got <value>"
        );
        assert_eq!(
            describe_parse_error("x", "bad `abc123def`", None),
            "bad <value>"
        );
    }

    #[test]
    fn a_span_past_the_text_still_gives_the_reason() {
        assert_eq!(describe_parse_error("ab", "eof", Some(10..12)), "eof");
    }

    #[test]
    fn the_key_of_the_offending_value_is_named() {
        let text = "[hub]\nwebhook_secret = oops-unquoted\n";
        let at = text.find("oops").unwrap();
        assert_eq!(key_before(text, at), Some("webhook_secret"));
        assert_eq!(key_before(text, 2), None);
    }
}
