//! Check-run request bodies across a job's life: `queued` when the job is stored, `in_progress`
//! when a scheduler accepts it (with a "Cancel" button), `completed` at finish with a conclusion
//! and an output.
//!
//! Result status → conclusion:
//!
//! | result status | conclusion |
//! | --- | --- |
//! | `succeeded` | `success` |
//! | `partially_succeeded` | `neutral` |
//! | `failed` | `failure` |
//! | `aborted` | `cancelled` |
//! | `rejected` | `failure`, the reason in the output |
//! | anything else | `neutral` |
//!
//! `rejected` is `failure` rather than `action_required`: the hub rejects a job nobody could take
//! or one too large to hand out, and no button on GitHub fixes either; `action_required` promises
//! an action on the details page, and GitHub requires a `details_url` for it. `failure` blocks a
//! required check the same way and the output says why.

use serde_json::{json, Map, Value};

use super::time::format_utc;

/// GitHub's limit on a check run output's `summary` and on its `text`, in characters.
pub(crate) const OUTPUT_LIMIT: usize = 65_535;

/// Output titles are kept to this many characters (GitHub shows one line).
pub(crate) const TITLE_LIMIT: usize = 200;

/// The identifier of the "Cancel" requested action.
pub(crate) const CANCEL_ACTION: &str = "cancel";

/// The conclusion of a completed check run for a result status word.
pub(crate) fn conclusion(result_status: &str) -> &'static str {
    match result_status {
        "succeeded" => "success",
        "failed" | "rejected" => "failure",
        "aborted" => "cancelled",
        _ => "neutral",
    }
}

/// What every body of one job's check run repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckRun<'a> {
    /// The binding's check name.
    pub name: &'a str,
    pub head_sha: &'a str,
    /// The job id.
    pub external_id: &'a str,
    /// The job's page on the hub.
    pub details_url: &'a str,
}

impl CheckRun<'_> {
    fn body(&self, status: &str) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("name".into(), self.name.into());
        body.insert("head_sha".into(), self.head_sha.into());
        body.insert("external_id".into(), self.external_id.into());
        if !self.details_url.is_empty() {
            body.insert("details_url".into(), self.details_url.into());
        }
        body.insert("status".into(), status.into());
        body
    }

    /// Created when the job is stored.
    pub fn queued(&self) -> Value {
        let mut body = self.body("queued");
        body.insert(
            "output".into(),
            json!({"title": "Queued", "summary": "Waiting for a scheduler to take the job."}),
        );
        Value::Object(body)
    }

    /// When a scheduler accepts the job: started, and cancellable from GitHub.
    pub fn in_progress(&self, machine: &str, started_ms: i64) -> Value {
        let mut body = self.body("in_progress");
        let machine = cell(machine);
        body.insert("started_at".into(), format_utc(started_ms).into());
        body.insert(
            "output".into(),
            json!({
                "title": cut(&format!("Running on {machine}"), TITLE_LIMIT),
                "summary": format!("Accepted by `{machine}`; the run has started."),
            }),
        );
        body.insert(
            "actions".into(),
            json!([{"label": "Cancel", "description": "Stop this run", "identifier": CANCEL_ACTION}]),
        );
        Value::Object(body)
    }

    /// At finish: the conclusion and an output with the result.
    pub fn completed(&self, done: &Completion<'_>) -> Value {
        let mut body = self.body("completed");
        body.insert("conclusion".into(), conclusion(done.result_status).into());
        body.insert("completed_at".into(), format_utc(done.finished_ms).into());
        let first_line = done.summary.lines().find(|l| !l.trim().is_empty());
        let title = match (done.result_status, first_line) {
            ("rejected", Some(reason)) => format!("Rejected: {}", reason.trim()),
            _ => format!("{}: {}", done.dag, done.result_status),
        };
        let mut output = Map::new();
        output.insert("title".into(), cut(&title, TITLE_LIMIT).into());
        output.insert("summary".into(), done.markdown().into());
        if !done.log_tail.is_empty() {
            let text = format!("```\n{}\n```", tail(done.log_tail, OUTPUT_LIMIT - 8));
            output.insert("text".into(), text.into());
        }
        body.insert("output".into(), Value::Object(output));
        // The button goes away with the run.
        body.insert("actions".into(), json!([]));
        Value::Object(body)
    }
}

/// A finished job, for its completed check run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Completion<'a> {
    pub dag: &'a str,
    pub result_status: &'a str,
    /// The scheduler's summary.
    pub summary: &'a str,
    /// The machine that ran it (empty if none accepted it).
    pub machine: &'a str,
    /// When a scheduler accepted it, if one did.
    pub started_ms: Option<i64>,
    pub finished_ms: i64,
    /// The end of the failing step's log, when the scheduler sent one.
    pub log_tail: &'a str,
}

impl Completion<'_> {
    /// The output summary: a table (DAG, server, result, duration), then the scheduler's summary.
    fn markdown(&self) -> String {
        let server = if self.machine.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", cell(self.machine))
        };
        let duration = self.started_ms.map_or_else(
            || "—".to_owned(),
            |start| duration((self.finished_ms - start).max(0)),
        );
        let mut out = format!(
            "| DAG | Server | Result | Duration |\n| --- | --- | --- | --- |\n| `{}` | {server} | **{}** | {duration} |\n",
            cell(self.dag),
            cell(self.result_status),
        );
        if !self.summary.trim().is_empty() {
            out.push('\n');
            out.push_str(self.summary.trim());
            out.push('\n');
        }
        cut(&out, OUTPUT_LIMIT)
    }
}

/// Text safe inside a Markdown table cell and inline code: one line, no `|` or backtick.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '|' => '/',
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// `text` cut to `limit` characters, ending in `…` when cut.
pub(crate) fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        None => text.to_owned(),
        Some(_) => {
            let (end, _) = text.char_indices().nth(limit - 1).unwrap_or((0, ' '));
            format!("{}…", &text[..end])
        }
    }
}

/// The last `limit` characters of `text`, starting with `…` when cut.
fn tail(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    if count <= limit {
        return text.to_owned();
    }
    let skip = count - (limit - 1);
    let start = text.char_indices().nth(skip).map_or(text.len(), |(i, _)| i);
    format!("…{}", &text[start..])
}

/// `45s`, `3m 05s`, `2h 03m`.
fn duration(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: CheckRun<'static> = CheckRun {
        name: "dispatch/build",
        head_sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        external_id: "job1",
        details_url: "https://hub.example/jobs/job1",
    };

    #[test]
    fn conclusion_table() {
        for (status, want) in [
            ("succeeded", "success"),
            ("partially_succeeded", "neutral"),
            ("failed", "failure"),
            ("aborted", "cancelled"),
            ("rejected", "failure"),
            ("something_new", "neutral"),
        ] {
            assert_eq!(conclusion(status), want, "{status}");
        }
    }

    #[test]
    fn queued_and_in_progress_bodies() {
        assert_eq!(
            RUN.queued(),
            json!({"name": "dispatch/build", "head_sha": RUN.head_sha, "external_id": "job1",
                   "details_url": "https://hub.example/jobs/job1", "status": "queued",
                   "output": {"title": "Queued", "summary": "Waiting for a scheduler to take the job."}})
        );
        let body = RUN.in_progress("box|1", 1_468_275_250_000);
        assert_eq!(body["status"], "in_progress");
        assert_eq!(body["started_at"], "2016-07-11T22:14:10Z");
        assert_eq!(body["output"]["title"], "Running on box/1");
        assert_eq!(body["actions"][0]["identifier"], CANCEL_ACTION);
        assert!(body["actions"][0]["label"].as_str().unwrap().len() <= 20);
        assert!(body["actions"][0]["description"].as_str().unwrap().len() <= 40);
    }

    #[test]
    fn completed_body_and_limits() {
        let done = Completion {
            dag: "build",
            result_status: "failed",
            summary: "Run `build` finished with `failed`.",
            machine: "box",
            started_ms: Some(1_000),
            finished_ms: 184_000,
            log_tail: "",
        };
        let body = RUN.completed(&done);
        assert_eq!(body["status"], "completed");
        assert_eq!(body["conclusion"], "failure");
        assert_eq!(body["output"]["title"], "build: failed");
        let summary = body["output"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("| `build` | `box` | **failed** | 3m 03s |"),
            "{summary}"
        );
        assert!(summary.ends_with("Run `build` finished with `failed`.\n"));
        assert!(body["output"].get("text").is_none());
        assert_eq!(body["actions"], json!([]));

        let huge = "x".repeat(200_000);
        let rejected = Completion {
            dag: "build",
            result_status: "rejected",
            summary: &format!("job too large\n{huge}"),
            log_tail: &huge,
            ..done
        };
        let body = RUN.completed(&rejected);
        assert_eq!(body["conclusion"], "failure");
        assert_eq!(body["output"]["title"], "Rejected: job too large");
        let summary = body["output"]["summary"].as_str().unwrap();
        let text = body["output"]["text"].as_str().unwrap();
        assert!(summary.chars().count() <= OUTPUT_LIMIT);
        assert!(text.chars().count() <= OUTPUT_LIMIT, "{}", text.len());
        assert!(text.starts_with("```\n…x") && text.ends_with("x\n```"));
    }

    #[test]
    fn durations_and_cuts() {
        assert_eq!(duration(45_900), "45s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(7_380_000), "2h 03m");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(tail("abcd", 3), "…cd");
        assert_eq!(cut("日本語です", 3), "日本…");
    }
}
