//! Integration tests for the runtime-param string: Go-exact quoting, the documented example, the
//! build/parse inverse, and typed errors for malformed input.

use std::collections::BTreeMap;

use dispatch_webhook_params::{
    build_runtime_params, parse_runtime_params, quote, Param, ParseError, UNICODE_VERSION,
};
use proptest::prelude::*;

/// Every expected output below was produced by Go's `strconv.Quote` (Go 1.19, Unicode 13), for
/// inputs whose category is the same in Unicode 13 and 15, except the rows marked "Unicode 15",
/// which follow Go 1.21+'s tables.
const QUOTE_CASES: &[(&str, &str)] = &[
    ("", r#""""#),
    ("hello, world", r#""hello, world""#),
    // C0 controls without a short escape, and DEL: \xNN, lowercase.
    ("\x00", r#""\x00""#),
    ("\x01", r#""\x01""#),
    ("\x1b[0m", r#""\x1b[0m""#),
    ("\x1f", r#""\x1f""#),
    ("\x7f", r#""\x7f""#),
    // The short escapes.
    ("\x07\x08\x0c\n\r\t\x0b", r#""\a\b\f\n\r\t\v""#),
    ("\"", r#""\"""#),
    ("\\", r#""\\""#),
    ("'`$", r#""'`$""#),
    // C1 controls, no-break space and soft hyphen: \uNNNN, not \xNN.
    ("\u{80}", r#""\u0080""#),
    ("\u{9f}", r#""\u009f""#),
    ("\u{a0}", r#""\u00a0""#),
    ("\u{ad}", r#""\u00ad""#),
    ("a\u{a0}b\tc", r#""a\u00a0b\tc""#),
    // Letters and combining marks (category M) are printable.
    ("é", "\"é\""),
    ("e\u{301}", "\"e\u{301}\""),
    ("\u{300}", "\"\u{300}\""),
    ("\u{20dd}", "\"\u{20dd}\""),
    ("\u{e0100}", "\"\u{e0100}\""),
    ("日本語", "\"日本語\""),
    // Line/paragraph separators, other spaces (Z*), format characters (Cf).
    ("\u{2028}", r#""\u2028""#),
    ("\u{2029}", r#""\u2029""#),
    ("\u{3000}", r#""\u3000""#),
    ("\u{1680}", r#""\u1680""#),
    ("\u{200b}", r#""\u200b""#),
    ("\u{200d}", r#""\u200d""#),
    ("\u{feff}", r#""\ufeff""#),
    ("\u{600}", r#""\u0600""#),
    (
        "\u{1f468}\u{200d}\u{1f469}",
        "\"\u{1f468}\\u200d\u{1f469}\"",
    ),
    // Non-characters, private use, unassigned.
    ("\u{fdd0}", r#""\ufdd0""#),
    ("\u{fffe}", r#""\ufffe""#),
    ("\u{ffff}", r#""\uffff""#),
    ("\u{e000}", r#""\ue000""#),
    ("\u{378}", r#""\u0378""#),
    ("\u{d7ff}", r#""\ud7ff""#),
    // Astral plane: printable kept, the rest \UNNNNNNNN.
    ("\u{1f600}", "\"\u{1f600}\""),
    ("\u{10000}", "\"\u{10000}\""),
    ("\u{1d11e}", "\"\u{1d11e}\""),
    ("\u{10ffff}", r#""\U0010ffff""#),
    ("\u{e0001}", r#""\U000e0001""#),
    ("\u{f0000}", r#""\U000f0000""#),
    ("\u{1fffe}", r#""\U0001fffe""#),
    // Valid UTF-8 that looks like an error: U+FFFD itself, and the last 2-byte code point.
    ("\u{fffd}", "\"\u{fffd}\""),
    ("\u{7ff}", "\"\u{7ff}\""),
    // Unicode 15: assigned there (So, Mn), so Go 1.21+ keeps them; Cf is still escaped.
    ("\u{1faf7}", "\"\u{1faf7}\""),
    ("\u{11f00}", "\"\u{11f00}\""),
    ("\u{13439}", r#""\U00013439""#),
    // Unassigned in Unicode 15.
    ("\u{1faf9}", r#""\U0001faf9""#),
    (
        r#"{"ref":"refs/heads/main"}"#,
        r#""{\"ref\":\"refs/heads/main\"}""#,
    ),
];

#[test]
fn quote_matches_go_strconv_quote() {
    assert_eq!(UNICODE_VERSION, "15.0.0");
    for (input, expected) in QUOTE_CASES {
        assert_eq!(quote(input), *expected, "quote({input:?})");
    }
}

#[test]
fn quote_cases_parse_back() {
    for (input, quoted) in QUOTE_CASES {
        let params = parse_runtime_params(&format!("X={quoted}")).unwrap();
        assert_eq!(params, [Param::named("X", *input)], "{quoted}");
    }
}

/// The example line of the runtime-param string in `docs/protocol.md`.
const EXAMPLE_LINE: &str = r#"WEBHOOK_PAYLOAD="{\"ref\":\"refs/heads/main\"}" WEBHOOK_HEADERS="{}" GITHUB_EVENT_NAME="push" GITHUB_REF="refs/heads/main""#;

#[test]
fn documented_example_is_built_byte_for_byte() {
    let extras = BTreeMap::from([
        ("GITHUB_REF".to_string(), "refs/heads/main".to_string()),
        ("GITHUB_EVENT_NAME".to_string(), "push".to_string()),
        // Empty extras are skipped.
        ("GITHUB_SHA".to_string(), String::new()),
    ]);
    let built = build_runtime_params(r#"{"ref":"refs/heads/main"}"#, "", &extras);
    assert_eq!(built, EXAMPLE_LINE);
}

#[test]
fn documented_example_parses() {
    assert_eq!(
        parse_runtime_params(EXAMPLE_LINE).unwrap(),
        [
            Param::named("WEBHOOK_PAYLOAD", r#"{"ref":"refs/heads/main"}"#),
            Param::named("WEBHOOK_HEADERS", "{}"),
            Param::named("GITHUB_EVENT_NAME", "push"),
            Param::named("GITHUB_REF", "refs/heads/main"),
        ]
    );
}

#[test]
fn build_orders_fixed_params_first_and_defaults_empty_json() {
    let extras = BTreeMap::from([
        ("A_FIRST".to_string(), "x y".to_string()),
        ("Z_LAST".to_string(), "\n".to_string()),
    ]);
    assert_eq!(
        build_runtime_params("", "", &extras),
        r#"WEBHOOK_PAYLOAD="{}" WEBHOOK_HEADERS="{}" A_FIRST="x y" Z_LAST="\n""#
    );
    assert_eq!(
        build_runtime_params("[1]", r#"{"X-GitHub-Event":["push"]}"#, &BTreeMap::new()),
        r#"WEBHOOK_PAYLOAD="[1]" WEBHOOK_HEADERS="{\"X-GitHub-Event\":[\"push\"]}""#
    );
}

#[test]
fn parser_reads_hand_written_forms() {
    let cases: &[(&str, &[Param])] = &[
        ("", &[]),
        (" \t\n ", &[]),
        (
            "A=1 B=two",
            &[Param::named("A", "1"), Param::named("B", "two")],
        ),
        (
            "  A=1\t\tB=2\n",
            &[Param::named("A", "1"), Param::named("B", "2")],
        ),
        ("A= B=x", &[Param::named("A", ""), Param::named("B", "x")]),
        ("A=", &[Param::named("A", "")]),
        ("_x9=ok", &[Param::named("_x9", "ok")]),
        (
            "URL=https://x.test/?a=b",
            &[Param::named("URL", "https://x.test/?a=b")],
        ),
        (
            "foo \"bar baz\" `qux`",
            &[
                Param::positional("foo"),
                Param::positional("bar baz"),
                Param::positional("qux"),
            ],
        ),
        (
            r#"A=`raw \n "x"` B="""#,
            &[Param::named("A", r#"raw \n "x""#), Param::named("B", "")],
        ),
        ("A=`multi\nline`", &[Param::named("A", "multi\nline")]),
        (
            r#"A="\u00e9\U0001f600\x41\101\a""#,
            &[Param::named("A", "é😀AA\x07")],
        ),
        // Byte escapes that together spell UTF-8, as Go's Unquote allows.
        (r#"A="\xc3\xa9\303\251""#, &[Param::named("A", "éé")]),
        // Raw control characters other than a line feed are accepted inside quotes, as in Go.
        ("A=\"a\tb\r\"", &[Param::named("A", "a\tb\r")]),
        ("A=a\u{3000}b", &[Param::named("A", "a\u{3000}b")]),
        ("é", &[Param::positional("é")]),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parse_runtime_params(input).as_deref(),
            Ok(*expected),
            "{input:?}"
        );
    }
}

#[test]
fn malformed_input_is_a_typed_error_with_offset() {
    use ParseError::*;
    let cases: &[(&str, ParseError)] = &[
        (
            r#"A="abc"#,
            UnterminatedQuote {
                offset: 2,
                quote: '"',
            },
        ),
        (
            "A=`abc",
            UnterminatedQuote {
                offset: 2,
                quote: '`',
            },
        ),
        (
            r#"X=1 "abc"#,
            UnterminatedQuote {
                offset: 4,
                quote: '"',
            },
        ),
        (
            r#"A="x\"#,
            UnterminatedQuote {
                offset: 2,
                quote: '"',
            },
        ),
        (
            r#"A="x\""#,
            UnterminatedQuote {
                offset: 2,
                quote: '"',
            },
        ),
        (r#"A="\q""#, InvalidEscape { offset: 3 }),
        (r#"A="\x4""#, InvalidEscape { offset: 3 }),
        (r#"A="\xZZ""#, InvalidEscape { offset: 3 }),
        (r#"A="\400""#, InvalidEscape { offset: 3 }),
        (r#"A="\08""#, InvalidEscape { offset: 3 }),
        (r#"A="\ud800""#, InvalidEscape { offset: 3 }),
        (r#"A="\u12""#, InvalidEscape { offset: 3 }),
        (r#"A="\U00110000""#, InvalidEscape { offset: 3 }),
        (r#"A="\'""#, InvalidEscape { offset: 3 }),
        (r#"B=1 A="日本\q""#, InvalidEscape { offset: 13 }),
        ("A=\"a\nb\"", NewlineInQuote { offset: 4 }),
        (r#"A="\xff""#, InvalidUtf8 { offset: 2 }),
        (r#"A="\xc3""#, InvalidUtf8 { offset: 2 }),
        ("=x", MissingName { offset: 0 }),
        ("A=1 =x", MissingName { offset: 4 }),
        ("1A=x", InvalidName { offset: 0 }),
        ("A=1 A-B=x", InvalidName { offset: 4 }),
        ("é=x", InvalidName { offset: 0 }),
        (r#"A=x"y""#, UnexpectedQuote { offset: 3 }),
        (r#"a"b""#, UnexpectedQuote { offset: 1 }),
        ("A=x`y`", UnexpectedQuote { offset: 3 }),
        (r#"A="x"B="y""#, MissingSeparator { offset: 5 }),
        ("A=`x`y", MissingSeparator { offset: 5 }),
        (r#""a""b""#, MissingSeparator { offset: 3 }),
    ];
    for (input, expected) in cases {
        let err = parse_runtime_params(input).expect_err(input);
        assert_eq!(&err, expected, "{input:?}");
        assert_eq!(err.offset(), expected.offset());
        // The message names the offset and nothing of the value.
        assert!(
            err.to_string()
                .contains(&format!("byte {}", expected.offset())),
            "{err}"
        );
    }
}

fn unicode_string(max_len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max_len).prop_map(String::from_iter)
}

fn extras() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,12}", unicode_string(24), 0..6)
}

/// Characters the grammar cares about, mixed with arbitrary ones, so the fuzzer reaches deep
/// into escapes and quotes rather than only producing bare words.
fn grammar_soup() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec!['"', '`', '\\', '=', ' ', '\t', '\n']),
        2 => prop::sample::select(vec!['x', 'u', 'U', '0', '3', '7', 'a', 'f', 'A', '_', 'n', '\'']),
    ];
    proptest::collection::vec(c, 0..48).prop_map(String::from_iter)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_inverts_build(payload in unicode_string(64), headers in unicode_string(32), extras in extras()) {
        let line = build_runtime_params(&payload, &headers, &extras);
        let or_empty = |s: &str| if s.is_empty() { "{}".to_string() } else { s.to_string() };
        let mut expected = vec![
            Param::named("WEBHOOK_PAYLOAD", or_empty(&payload)),
            Param::named("WEBHOOK_HEADERS", or_empty(&headers)),
        ];
        expected.extend(
            extras.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| Param::named(k.clone(), v.clone())),
        );
        prop_assert_eq!(parse_runtime_params(&line), Ok(expected));
    }

    #[test]
    fn quoted_values_round_trip_as_any_item(
        items in proptest::collection::vec(
            (proptest::option::of("[A-Za-z_][A-Za-z0-9_]{0,8}"), unicode_string(16), 0u8..3),
            0..6,
        ),
        separators in proptest::collection::vec("[ \t\n]{1,3}", 6),
    ) {
        let mut line = String::new();
        let mut expected = Vec::new();
        for (index, (name, value, style)) in items.into_iter().enumerate() {
            if index > 0 {
                line.push_str(&separators[index]);
            }
            if let Some(name) = &name {
                line.push_str(name);
                line.push('=');
            }
            match style {
                // Backticks cannot carry a backtick; fall back to Go quoting then.
                1 if !value.contains('`') => line.push_str(&format!("`{value}`")),
                _ => line.push_str(&quote(&value)),
            }
            expected.push(Param { name, value });
        }
        prop_assert_eq!(parse_runtime_params(&line), Ok(expected));
    }

    #[test]
    fn parse_never_panics(input in grammar_soup()) {
        if let Err(err) = parse_runtime_params(&input) {
            prop_assert!(err.offset() <= input.len());
            prop_assert!(input.is_char_boundary(err.offset()));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_unicode(input in unicode_string(64)) {
        if let Err(err) = parse_runtime_params(&input) {
            prop_assert!(input.is_char_boundary(err.offset()));
        }
    }

    #[test]
    fn parse_never_panics_on_damaged_builds(
        payload in unicode_string(24),
        cut in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec!['"', '`', '\\', '=', ' ', 'x']),
    ) {
        let line = build_runtime_params(&payload, "", &BTreeMap::new());
        let boundaries: Vec<usize> = line.char_indices().map(|(i, _)| i).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let mut removed = line.clone();
        removed.remove(at);
        let mut inserted = line.clone();
        inserted.insert(at, insert);
        for damaged in [removed, inserted] {
            if let Err(err) = parse_runtime_params(&damaged) {
                prop_assert!(damaged.is_char_boundary(err.offset()));
            }
        }
    }
}
