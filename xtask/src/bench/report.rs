//! Rows of the bench: what a group measured, its target, and how it is shown and stored.

use serde_json::{json, Value};

/// A bound a value must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Target {
    /// value ≤ bound
    AtMost(f64),
    /// value < bound
    Below(f64),
    /// value ≥ bound
    AtLeast(f64),
}

impl Target {
    fn holds(self, value: f64) -> bool {
        match self {
            Target::AtMost(bound) => value <= bound,
            Target::Below(bound) => value < bound,
            Target::AtLeast(bound) => value >= bound,
        }
    }

    /// `<= 25`, `< 1`, `>= 500`.
    fn describe(self) -> String {
        let (op, bound) = match self {
            Target::AtMost(b) => ("<=", b),
            Target::Below(b) => ("<", b),
            Target::AtLeast(b) => (">=", b),
        };
        format!("{op} {}", number(bound))
    }
}

/// One row of the results.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric {
    pub(crate) name: String,
    /// `None` when it could not be measured.
    pub(crate) value: Option<f64>,
    pub(crate) unit: String,
    /// Rows without a target are context for the ones with one.
    pub(crate) target: Option<Target>,
    pub(crate) note: Option<String>,
}

impl Metric {
    /// A measured value without a target.
    pub(crate) fn info(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Metric {
        Metric {
            name: name.into(),
            value: Some(value),
            unit: unit.into(),
            target: None,
            note: None,
        }
    }

    /// A row with a target and no value yet: what a group promises to report.
    pub(crate) fn promised(name: &str, unit: &str, target: Target) -> Metric {
        Metric {
            name: name.to_owned(),
            value: None,
            unit: unit.to_owned(),
            target: Some(target),
            note: None,
        }
    }

    /// A row without a target and no value yet: a figure a group promises to report, as a
    /// measurement to read rather than a bound to meet.
    pub(crate) fn measurement(name: &str, unit: &str) -> Metric {
        Metric {
            name: name.to_owned(),
            value: None,
            unit: unit.to_owned(),
            target: None,
            note: None,
        }
    }

    /// This promised row with its measured value.
    pub(crate) fn measured(mut self, value: f64) -> Metric {
        self.value = Some(value);
        self
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Metric {
        self.note = Some(note.into());
        self
    }

    pub(crate) fn with_note_if_empty(self, note: &str) -> Metric {
        if self.note.is_some() {
            self
        } else {
            self.with_note(note)
        }
    }

    /// A row that was not measured fails, with or without a target; a measured row without a
    /// target has no verdict.
    pub(crate) fn pass(&self) -> Option<bool> {
        let Some(value) = self.value else {
            return Some(false);
        };
        let target = self.target?;
        Some(value.is_finite() && target.holds(value))
    }
}

/// `rows` plus every promised row it lacks, as unmeasured with `reason`. A measured row that
/// lacks the promised target gets it, so a group cannot drop a target by accident.
pub(crate) fn complete(mut rows: Vec<Metric>, promised: Vec<Metric>, reason: &str) -> Vec<Metric> {
    for promise in promised {
        match rows.iter_mut().find(|r| r.name == promise.name) {
            Some(row) => {
                if row.target.is_none() {
                    row.target = promise.target;
                }
            }
            None => rows.push(promise.with_note(reason)),
        }
    }
    rows
}

/// A number with as many decimals as its size deserves.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// The results as one plain-text table; the notes column is last because it is the widest.
pub(crate) fn table(metrics: &[Metric]) -> String {
    let header = ["metric", "value", "unit", "target", "pass", "note"];
    let rows: Vec<[String; 6]> = metrics
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.value.map_or_else(|| "-".to_owned(), number),
                m.unit.clone(),
                m.target.map(Target::describe).unwrap_or_default(),
                match m.pass() {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
                m.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let text = format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        text.trim_end().to_owned()
    };
    let mut out = vec![line(header)];
    out.push(line(
        widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in &rows {
        out.push(line(row.each_ref().map(String::as_str)));
    }
    out.join("\n")
}

/// `[{name, value, unit, target, pass, note?}]`; `value` is null (and `pass` false) when not
/// measured, `target` and `pass` are null on measured rows without a target.
pub(crate) fn to_json(metrics: &[Metric]) -> Value {
    Value::Array(
        metrics
            .iter()
            .map(|m| {
                let mut row = json!({
                    "name": m.name,
                    "value": m.value.filter(|v| v.is_finite()),
                    "unit": m.unit,
                    "target": m.target.map(Target::describe),
                    "pass": m.pass(),
                });
                if let Some(note) = &m.note {
                    row["note"] = json!(note);
                }
                row
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_compare_with_their_own_operator() {
        let cases = [
            (Target::AtMost(25.0), 25.0, true),
            (Target::AtMost(25.0), 25.1, false),
            (Target::Below(1.0), 0.99, true),
            (Target::Below(1.0), 1.0, false),
            (Target::AtLeast(500.0), 500.0, true),
            (Target::AtLeast(500.0), 499.9, false),
        ];
        for (target, value, pass) in cases {
            let row = Metric::promised("m", "ms", target).measured(value);
            assert_eq!(row.pass(), Some(pass), "{target:?} vs {value}");
        }
    }

    #[test]
    fn unmeasured_or_nan_fails_and_context_rows_have_no_verdict() {
        assert_eq!(
            Metric::promised("m", "ms", Target::AtMost(5.0)).pass(),
            Some(false)
        );
        assert_eq!(
            Metric::promised("m", "ms", Target::AtLeast(0.0))
                .measured(f64::NAN)
                .pass(),
            Some(false)
        );
        assert_eq!(Metric::info("m", 1.0, "ms").pass(), None);
        assert_eq!(Metric::measurement("m", "ms").pass(), Some(false));
        assert_eq!(Metric::measurement("m", "ms").measured(2.0).pass(), None);
    }

    #[test]
    fn complete_adds_missing_promises_and_keeps_targets() {
        let rows = vec![
            Metric::info("a", 1.0, "ms"),
            Metric::info("context", 2.0, "ms"),
        ];
        let promised = vec![
            Metric::promised("a", "ms", Target::AtMost(2.0)),
            Metric::promised("b", "ms", Target::AtMost(2.0)),
        ];
        let done = complete(rows, promised, "not measured: boom");
        assert_eq!(done.len(), 3);
        assert_eq!(done[0].pass(), Some(true));
        assert_eq!(done[1].pass(), None);
        assert_eq!(done[2].name, "b");
        assert_eq!(done[2].pass(), Some(false));
        assert_eq!(done[2].note.as_deref(), Some("not measured: boom"));
    }

    #[test]
    fn json_rows_have_the_documented_shape() {
        let rows = vec![
            Metric::promised("p50", "ms", Target::AtMost(25.0)).measured(3.25),
            Metric::promised("rss", "MiB", Target::AtMost(20.0)).with_note("not measured: x"),
            Metric::info("samples", 200.0, "count"),
        ];
        let json = to_json(&rows);
        assert_eq!(
            json,
            json!([
                {"name": "p50", "value": 3.25, "unit": "ms", "target": "<= 25", "pass": true},
                {"name": "rss", "value": null, "unit": "MiB", "target": "<= 20", "pass": false,
                 "note": "not measured: x"},
                {"name": "samples", "value": 200.0, "unit": "count", "target": null, "pass": null},
            ])
        );
    }

    #[test]
    fn table_aligns_columns_and_marks_failures() {
        let rows = vec![
            Metric::promised("dispatch_latency_p50_ms", "ms", Target::AtMost(25.0)).measured(3.25),
            Metric::promised("throughput", "jobs/s", Target::AtLeast(500.0)).measured(412.7),
            Metric::promised("noop", "ms", Target::AtMost(5.0)).with_note("not measured: later"),
            Metric::info("samples", 200.0, "count"),
        ];
        let text = table(&rows);
        let expected = "\
metric                   value  unit    target  pass  note
-----------------------  -----  ------  ------  ----  -------------------
dispatch_latency_p50_ms   3.25  ms      <= 25   yes
throughput                 413  jobs/s  >= 500  NO
noop                         -  ms      <= 5    NO    not measured: later
samples                    200  count";
        assert_eq!(text, expected);
    }

    #[test]
    fn numbers_keep_meaningful_decimals() {
        for (value, shown) in [
            (0.01234, "0.012"),
            (4.256, "4.26"),
            (412.7, "413"),
            (2.0, "2"),
            (-0.5, "-0.500"),
        ] {
            assert_eq!(number(value), shown, "{value}");
        }
    }
}
