//! Step outputs: the records a step writes to `DAGU_OUTPUT_FILE` (`docs/dag-format.md`, "Step
//! outputs"), and JSON paths into an `output:` variable.
//!
//! Pure logic: no IO, tested without a runtime.

use std::collections::BTreeMap;

use dispatch_dag::{OutputDecl, OutputType};

/// Parses the output file of a successful attempt against the step's declarations: `name=value`
/// lines and `name<<DELIM` … `DELIM` blocks; every declared output exactly once, nothing
/// undeclared, `json` outputs valid JSON. The error says what is wrong, never a value.
pub(crate) fn parse_output_file(
    bytes: &[u8],
    decls: &[OutputDecl],
    max_size: u64,
) -> Result<BTreeMap<String, String>, String> {
    if bytes.len() as u64 > max_size {
        return Err(format!(
            "output file holds {} bytes, more than max_output_size ({max_size})",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "output file is not valid UTF-8")?;
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = text.split('\n').enumerate().peekable();
    let mut out = BTreeMap::new();
    while let Some((n, line)) = lines.next() {
        let line_no = n + 1;
        if line.is_empty() {
            // The text after the final newline is the one empty line that is allowed.
            if lines.peek().is_none() {
                break;
            }
            return Err(format!("output file line {line_no}: empty line"));
        }
        let heredoc = line
            .find("<<")
            .filter(|h| line.find('=').is_none_or(|eq| *h < eq));
        let (name, value) = if let Some(h) = heredoc {
            let name = &line[..h];
            let delim = &line[h + 2..];
            if !is_delimiter(delim) {
                return Err(format!(
                    "output file line {line_no}: invalid delimiter for `{name}` (expected [A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
            let mut body: Vec<&str> = Vec::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l == delim {
                    closed = true;
                    break;
                }
                body.push(l);
            }
            if !closed {
                return Err(format!(
                    "output file line {line_no}: `{name}<<{delim}` is not closed by a `{delim}` line"
                ));
            }
            (name, body.join("\n"))
        } else if let Some(eq) = line.find('=') {
            (&line[..eq], line[eq + 1..].to_owned())
        } else {
            return Err(format!(
                "output file line {line_no}: expected `name=value` or `name<<DELIMITER`"
            ));
        };
        let Some(decl) = decls.iter().find(|d| d.name == name) else {
            return Err(format!(
                "output file line {line_no}: output `{name}` is not declared in `outputs`"
            ));
        };
        if decl.kind == OutputType::Json
            && serde_json::from_str::<serde_json::Value>(&value).is_err()
        {
            return Err(format!(
                "output file line {line_no}: output `{name}` is declared `json` but is not valid JSON"
            ));
        }
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!(
                "output file line {line_no}: output `{name}` is written more than once"
            ));
        }
    }
    let missing: Vec<&str> = decls
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| !out.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "declared output{} not written to DAGU_OUTPUT_FILE: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(out)
}

fn is_delimiter(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The value at `path` (object keys, array indices) of the JSON text `json`: a string as is,
/// anything else as compact JSON; `None` when the text is not JSON or the path is not there.
pub(crate) fn json_path(json: &str, path: &[String]) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(json).ok()?;
    for segment in path {
        value = match value {
            serde_json::Value::Object(mut map) => map.remove(segment)?,
            serde_json::Value::Array(mut items) => {
                let i: usize = segment.parse().ok()?;
                if i >= items.len() {
                    return None;
                }
                items.swap_remove(i)
            }
            _ => return None,
        };
    }
    Some(json_text(&value))
}

/// A JSON value as text for the environment: a string as is, anything else as compact JSON.
pub(crate) fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, kind: OutputType) -> OutputDecl {
        OutputDecl {
            name: name.into(),
            kind,
        }
    }

    fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
        let decls = [
            decl("tag", OutputType::String),
            decl("meta", OutputType::Json),
        ];
        parse_output_file(text.as_bytes(), &decls, 1024)
    }

    #[test]
    fn records_single_and_multi_line() {
        let got = parse("tag=v1=x\nmeta<<JSON\n{\"a\":\n 1}\nJSON\n").unwrap();
        assert_eq!(got["tag"], "v1=x");
        assert_eq!(got["meta"], "{\"a\":\n 1}");
        let got = parse("meta={}\r\ntag=\r\n").unwrap();
        assert_eq!(got["tag"], "");
        let got = parse("tag<<EOF\n\nEOF\nmeta=[1]").unwrap();
        assert_eq!(got["tag"], "");
    }

    #[test]
    fn errors_name_the_problem_never_the_value() {
        let cases = [
            ("tag=a\n", "`meta`"),
            ("tag=a\nmeta=1\ntag=b\n", "more than once"),
            ("tag=a\nmeta=1\nother=x\n", "`other` is not declared"),
            ("tag=a\nmeta=not json\n", "not valid JSON"),
            ("tag=a\n\nmeta=1\n", "empty line"),
            ("tag<<EOF\nsecret value\n", "not closed"),
            ("tag<<1x\n", "invalid delimiter"),
            ("just text\n", "expected `name=value`"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("secret value"));
        }
        let e = parse_output_file(b"\xff", &[], 10).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        let e = parse_output_file(b"tag=12345", &[], 4).unwrap_err();
        assert!(e.contains("max_output_size"), "{e}");
    }

    #[test]
    fn json_paths() {
        let json = r#"{"data":{"id":7,"name":"x","tags":["a","b"]},"ok":true}"#;
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(json_path(json, &p("data.id")).as_deref(), Some("7"));
        assert_eq!(json_path(json, &p("data.name")).as_deref(), Some("x"));
        assert_eq!(json_path(json, &p("data.tags.1")).as_deref(), Some("b"));
        assert_eq!(
            json_path(json, &p("data.tags")).as_deref(),
            Some("[\"a\",\"b\"]")
        );
        assert_eq!(json_path(json, &p("ok")).as_deref(), Some("true"));
        assert_eq!(json_path(json, &p("data.missing")), None);
        assert_eq!(json_path(json, &p("data.tags.9")), None);
        assert_eq!(json_path("not json", &p("a")), None);
    }
}
