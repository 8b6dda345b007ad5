//! `parse_runtime_params` on arbitrary text must return `Ok` or a typed error, never panic; and
//! whatever it accepts must survive a rebuild with `quote` and a reparse unchanged. Separately,
//! `build_runtime_params` on arbitrary strings must parse back to exactly what went in.
#![no_main]

use std::collections::BTreeMap;

use dispatch_webhook_params::{
    build_runtime_params, parse_runtime_params, quote, Param, WEBHOOK_HEADERS, WEBHOOK_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    parse_is_stable(text);
    build_is_inverted(text);
});

fn parse_is_stable(text: &str) {
    let params = match parse_runtime_params(text) {
        Ok(params) => params,
        Err(err) => {
            assert!(err.offset() <= text.len(), "offset past input: {err:?}");
            // The message is shown to users; building it must not panic either.
            let _ = err.to_string();
            return;
        }
    };
    let rebuilt = params
        .iter()
        .map(|p| match &p.name {
            Some(name) => format!("{name}={}", quote(&p.value)),
            None => quote(&p.value),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let reparsed = parse_runtime_params(&rebuilt)
        .unwrap_or_else(|e| panic!("rebuilt line does not parse: {e:?}\nline: {rebuilt:?}"));
    assert_eq!(params, reparsed, "rebuilt line: {rebuilt:?}");
}

/// Splits the input at NUL bytes into payload, headers and `NAME\x01value` extras.
fn build_is_inverted(text: &str) {
    let mut parts = text.split('\0');
    let payload = parts.next().unwrap_or_default();
    let headers = parts.next().unwrap_or_default();
    let mut extras = BTreeMap::new();
    for part in parts {
        let (name, value) = part.split_once('\x01').unwrap_or((part, "x"));
        // `build_runtime_params` documents that callers pass identifier names.
        let valid_name = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid_name && name != WEBHOOK_PAYLOAD && name != WEBHOOK_HEADERS {
            extras.insert(name.to_owned(), value.to_owned());
        }
    }
    let line = build_runtime_params(payload, headers, &extras);
    let parsed = parse_runtime_params(&line)
        .unwrap_or_else(|e| panic!("built line does not parse: {e:?}\nline: {line:?}"));
    let or_object = |s: &str| {
        if s.is_empty() {
            "{}".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut want = vec![
        Param::named(WEBHOOK_PAYLOAD, or_object(payload)),
        Param::named(WEBHOOK_HEADERS, or_object(headers)),
    ];
    want.extend(
        extras
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| Param::named(n.as_str(), v.as_str())),
    );
    assert_eq!(parsed, want, "line: {line:?}");
}
