//! `preconditions`, `continue_on`, `retry_policy` and `repeat_policy`.

use super::{join, Cx, Entry, KeySet};
use crate::refs::Rewriter;
use crate::yaml::{Kind, Node};
use crate::{
    Backoff, ConditionCheck, ContinueOn, DagError, Expected, Precondition, RepeatMode,
    RepeatPolicy, RetryPolicy,
};

const CONDITION_KEYS: KeySet<'static> = KeySet {
    known: &["condition", "command", "expected", "negate", "eval"],
    refused: &[],
};

const CONTINUE_ON_KEYS: KeySet<'static> = KeySet {
    known: &["failure", "skipped", "exit_code", "output", "mark_success"],
    refused: &[],
};

const RETRY_KEYS: KeySet<'static> = KeySet {
    known: &[
        "limit",
        "interval_sec",
        "backoff",
        "max_interval_sec",
        "exit_code",
    ],
    refused: &[],
};

const REPEAT_KEYS: KeySet<'static> = KeySet {
    known: &[
        "repeat",
        "interval_sec",
        "limit",
        "backoff",
        "max_interval_sec",
        "condition",
        "expected",
        "exit_code",
    ],
    refused: &[],
};

/// `expected` text: `re:` starts a regular expression.
pub(super) fn expected(text: &str) -> Expected {
    match text.strip_prefix("re:") {
        Some(pattern) => Expected::Regex(pattern.to_owned()),
        None => Expected::Literal(text.to_owned()),
    }
}

impl Cx<'_> {
    fn nonblank(&self, key: &str, e: &Entry<'_>) -> Result<String, DagError> {
        match self.string(key, e)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(self.err(Some(e.line), format!("key `{key}`: must not be empty"))),
        }
    }

    /// `preconditions`: a command string, or a list of command strings and maps with
    /// `condition` (or the legacy `command`), `expected`, `negate`, or `eval` with `expected`.
    pub(super) fn preconditions(
        &self,
        key: &str,
        e: &Entry<'_>,
        rw: &mut Rewriter<'_, '_>,
    ) -> Vec<Precondition> {
        let items: Vec<&Node> = match &e.value.kind {
            _ if e.value.is_null() => return Vec::new(),
            Kind::Seq(items) => items.iter().collect(),
            Kind::Scalar { .. } => vec![e.value],
            Kind::Map(_) => {
                self.push(self.type_err(e.line, key, "a command or a list of conditions", e.value));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item_key = if matches!(e.value.kind, Kind::Seq(_)) {
                format!("{key}[{i}]")
            } else {
                key.to_owned()
            };
            let line = item.line.max(e.line);
            match &item.kind {
                Kind::Scalar { value, .. } if !item.is_null() && !value.trim().is_empty() => {
                    if let Some(text) = self.rewrite_field(&item_key, line, value, rw) {
                        out.push(Precondition {
                            check: ConditionCheck::Command(text),
                            negate: false,
                        });
                    }
                }
                Kind::Map(_) => {
                    if let Some(p) = self.condition_entry(&item_key, item, line, rw) {
                        out.push(p);
                    }
                }
                _ => self.report(
                    Some(line),
                    format!(
                        "key `{item_key}`: expected a non-empty command or a map with `condition`, found {}",
                        item.describe()
                    ),
                ),
            }
        }
        out
    }

    fn condition_entry(
        &self,
        key: &str,
        node: &Node,
        line: usize,
        rw: &mut Rewriter<'_, '_>,
    ) -> Option<Precondition> {
        let entries = self.entries(node, key, line, &CONDITION_KEYS)?;
        let mut condition = None;
        let mut eval = None;
        let mut expected_text = None;
        let mut negate = false;
        for f in &entries {
            let k = join(key, f.key);
            match f.key {
                "condition" | "command" => {
                    if condition.is_some() {
                        self.report(
                            Some(f.line),
                            format!(
                                "key `{k}`: `condition` and `command` are the same key; write one"
                            ),
                        );
                        continue;
                    }
                    condition = self
                        .ok(self.nonblank(&k, f))
                        .and_then(|t| self.rewrite_field(&k, f.line, &t, rw));
                }
                "eval" => {
                    eval = self
                        .ok(self.nonblank(&k, f))
                        .and_then(|t| self.rewrite_field(&k, f.line, &t, rw));
                }
                "expected" => expected_text = self.ok(self.nonblank(&k, f)),
                _ => negate = self.ok(self.boolean(&k, f)).unwrap_or(false),
            }
        }
        let has = |k: &str| entries.iter().any(|f| f.key == k);
        let check = match (
            has("condition") || has("command"),
            has("eval"),
            expected_text,
        ) {
            (true, true, _) => {
                self.report(
                    Some(line),
                    format!("key `{key}`: `eval` and `condition` exclude each other"),
                );
                return None;
            }
            (false, true, None) => {
                self.report(Some(line), format!("key `{key}.eval`: needs `expected`"));
                return None;
            }
            (false, false, _) => {
                self.report(Some(line), format!("key `{key}`: needs `condition`"));
                return None;
            }
            (true, false, None) => ConditionCheck::Command(condition?),
            (true, false, Some(x)) => ConditionCheck::Match {
                condition: condition?,
                expected: expected(&x),
            },
            (false, true, Some(x)) => ConditionCheck::Eval {
                eval: eval?,
                expected: expected(&x),
            },
        };
        Some(Precondition { check, negate })
    }

    /// `continue_on`: `skipped` / `failed`, or a map of `failure`, `skipped`, `exit_code`,
    /// `output`, `mark_success`.
    pub(super) fn continue_on(&self, key: &str, e: &Entry<'_>) -> ContinueOn {
        let mut out = ContinueOn::default();
        match &e.value.kind {
            _ if e.value.is_null() => {}
            Kind::Scalar { value, .. } => match value.as_str() {
                "skipped" => out.skipped = true,
                "failed" | "failure" => out.failure = true,
                other => self.report(
                    Some(e.line),
                    format!("key `{key}`: expected `skipped`, `failed` or a map, found `{other}`"),
                ),
            },
            Kind::Map(_) => {
                for c in self
                    .entries(e.value, key, e.line, &CONTINUE_ON_KEYS)
                    .unwrap_or_default()
                {
                    let k = join(key, c.key);
                    match c.key {
                        "failure" => out.failure = self.ok(self.boolean(&k, &c)).unwrap_or(false),
                        "skipped" => out.skipped = self.ok(self.boolean(&k, &c)).unwrap_or(false),
                        "mark_success" => {
                            out.mark_success = self.ok(self.boolean(&k, &c)).unwrap_or(false)
                        }
                        "exit_code" => {
                            out.exit_code = self.ok(self.exit_codes(&k, &c)).unwrap_or_default()
                        }
                        _ => {
                            out.output = self
                                .ok(self.strings(&k, &c))
                                .unwrap_or_default()
                                .iter()
                                .map(|s| expected(s))
                                .collect()
                        }
                    }
                }
            }
            Kind::Seq(_) => {
                self.push(self.type_err(e.line, key, "`skipped`, `failed` or a map", e.value))
            }
        }
        out
    }

    fn backoff(&self, key: &str, e: &Entry<'_>) -> Result<Option<Backoff>, DagError> {
        match &e.value.kind {
            _ if e.value.is_null() => Ok(None),
            Kind::Scalar { value, plain: true } => match value.as_str() {
                "true" | "True" | "TRUE" => Ok(Some(Backoff(2.0))),
                "false" | "False" | "FALSE" => Ok(None),
                text => match text.parse::<f64>() {
                    Ok(0.0) => Ok(None),
                    Ok(m) if m.is_finite() && m > 1.0 => Ok(Some(Backoff(m))),
                    _ => Err(self.err(
                        Some(e.line),
                        format!("key `{key}`: expected true, false or a multiplier above 1.0, found `{text}`"),
                    )),
                },
            },
            _ => Err(self.type_err(e.line, key, "true, false or a number", e.value)),
        }
    }

    /// `retry_policy`: `limit` (required), `interval_sec`, `backoff`, `max_interval_sec`,
    /// `exit_code`.
    pub(super) fn retry_policy(&self, key: &str, e: &Entry<'_>) -> Option<RetryPolicy> {
        if e.value.is_null() {
            return None;
        }
        let entries = self.entries(e.value, key, e.line, &RETRY_KEYS)?;
        let mut policy = RetryPolicy {
            limit: 0,
            interval_sec: 0,
            backoff: None,
            max_interval_sec: None,
            exit_code: Vec::new(),
        };
        let mut has_limit = false;
        for f in &entries {
            let k = join(key, f.key);
            match f.key {
                "limit" => {
                    has_limit = true;
                    policy.limit = self
                        .ok(self.uint_at(&k, f.line, f.value, true))
                        .flatten()
                        .unwrap_or(0)
                }
                "interval_sec" => {
                    policy.interval_sec = self
                        .ok(self.uint_at(&k, f.line, f.value, true))
                        .flatten()
                        .unwrap_or(0)
                }
                "backoff" => policy.backoff = self.ok(self.backoff(&k, f)).flatten(),
                "max_interval_sec" => {
                    policy.max_interval_sec = self.ok(self.uint(&k, f)).flatten().filter(|&v| v > 0)
                }
                _ => policy.exit_code = self.ok(self.exit_codes(&k, f)).unwrap_or_default(),
            }
        }
        if !has_limit {
            self.report(Some(e.line), format!("key `{key}`: needs `limit`"));
            return None;
        }
        Some(policy)
    }

    /// `repeat_policy`: `repeat` (`true`, `while`, `until`), `condition` + `expected`,
    /// `exit_code`, `interval_sec`, `limit`, `backoff`, `max_interval_sec`.
    pub(super) fn repeat_policy(
        &self,
        key: &str,
        e: &Entry<'_>,
        rw: &mut Rewriter<'_, '_>,
    ) -> Option<RepeatPolicy> {
        if e.value.is_null() {
            return None;
        }
        let entries = self.entries(e.value, key, e.line, &REPEAT_KEYS)?;
        let mut mode = None;
        let mut disabled = false;
        let mut condition = None;
        let mut expected_text = None;
        let mut policy = RepeatPolicy {
            mode: RepeatMode::While,
            condition: None,
            exit_code: Vec::new(),
            interval_sec: 0,
            limit: None,
            backoff: None,
            max_interval_sec: None,
        };
        for f in &entries {
            let k = join(key, f.key);
            match f.key {
                "repeat" => match &f.value.kind {
                    Kind::Scalar { value, .. } => match value.as_str() {
                        "true" | "True" | "TRUE" | "while" => mode = Some(RepeatMode::While),
                        "until" => mode = Some(RepeatMode::Until),
                        "false" | "False" | "FALSE" => disabled = true,
                        other => self.report(
                            Some(f.line),
                            format!(
                                "key `{k}`: expected true, `while` or `until`, found `{other}`"
                            ),
                        ),
                    },
                    _ => self.push(self.type_err(f.line, &k, "true, `while` or `until`", f.value)),
                },
                "condition" => {
                    condition = self
                        .ok(self.nonblank(&k, f))
                        .and_then(|t| self.rewrite_field(&k, f.line, &t, rw))
                }
                "expected" => expected_text = self.ok(self.nonblank(&k, f)),
                "exit_code" => {
                    policy.exit_code = self.ok(self.exit_codes(&k, f)).unwrap_or_default()
                }
                "interval_sec" => {
                    policy.interval_sec = self
                        .ok(self.uint_at(&k, f.line, f.value, true))
                        .flatten()
                        .unwrap_or(0)
                }
                "limit" => match self.ok(self.uint_at(&k, f.line, f.value, true)).flatten() {
                    Some(0) => self.report(Some(f.line), format!("key `{k}`: must be at least 1")),
                    limit => policy.limit = limit,
                },
                "backoff" => policy.backoff = self.ok(self.backoff(&k, f)).flatten(),
                _ => {
                    policy.max_interval_sec = self.ok(self.uint(&k, f)).flatten().filter(|&v| v > 0)
                }
            }
        }
        if disabled {
            return None;
        }
        if expected_text.is_some() && condition.is_none() {
            self.report(
                Some(e.line),
                format!("key `{key}.expected`: needs `condition`"),
            );
        }
        // Dagu's inference when `repeat` is left out: a condition with `expected` repeats until
        // it matches; anything else repeats while it holds.
        policy.mode = mode.unwrap_or(if expected_text.is_some() {
            RepeatMode::Until
        } else {
            RepeatMode::While
        });
        policy.condition = condition.map(|c| match &expected_text {
            Some(x) => ConditionCheck::Match {
                condition: c,
                expected: expected(x),
            },
            None => ConditionCheck::Command(c),
        });
        if policy.mode == RepeatMode::Until
            && policy.condition.is_none()
            && policy.exit_code.is_empty()
        {
            self.report(
                Some(e.line),
                format!("key `{key}`: `repeat: until` needs `condition` or `exit_code`"),
            );
        }
        Some(policy)
    }
}
