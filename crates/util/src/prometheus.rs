//! Writing the Prometheus text exposition format (version 0.0.4).
//!
//! A [`Text`] collects metric families: [`Text::family`] writes the `# HELP` / `# TYPE` header once,
//! [`Text::sample`] one line with its labels, escaped as the format requires.

use std::fmt::{Display, Write as _};

/// The type line of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.word()
        );
        self
    }

    /// One sample line: `name{label="value",...} value`.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(text));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value escaped for the text format (`\`, `"` and newlines).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escaped_labels() {
        let mut t = Text::new();
        t.family("jobs_total", Kind::Counter, "Jobs, by state.")
            .sample("jobs_total", &[("state", "queued")], 3)
            .sample("jobs_total", &[("state", "a\"b\\c\nd"), ("x", "y")], 1);
        t.single("up", Kind::Gauge, "Up.", 1.5);
        assert_eq!(
            t.finish(),
            "# HELP jobs_total Jobs, by state.\n# TYPE jobs_total counter\n\
             jobs_total{state=\"queued\"} 3\n\
             jobs_total{state=\"a\\\"b\\\\c\\nd\",x=\"y\"} 1\n\
             # HELP up Up.\n# TYPE up gauge\nup 1.5\n"
        );
    }
}
