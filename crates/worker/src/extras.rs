//! GitHub extras: the `GITHUB_*` runtime params derived from a dispatch job (the runtime
//! params in `docs/protocol.md`).

use std::collections::{BTreeMap, HashMap};

use dispatch_protocol::DispatchJob;
use serde_json::value::RawValue;
use serde_json::Value;

/// The `GITHUB_*` runtime params of a job (their list is in `docs/protocol.md`).
///
/// Job fields give `GITHUB_ACTOR`, `GITHUB_COMMAND`, `GITHUB_EVENT_ACTION`, `GITHUB_EVENT_NAME`,
/// `GITHUB_REF`, `GITHUB_REPOSITORY`, `GITHUB_SHA`, and `GITHUB_PR_NUMBER` / `GITHUB_ISSUE_NUMBER`
/// when positive. The payload adds `GITHUB_RELEASE_TAG` (`release.tag_name`, else a `refs/tags/`
/// ref without that prefix), `GITHUB_WORKFLOW` (`workflow` when a string, else its `name`, else
/// its `path`) and `GITHUB_DISPATCH_EVENT_TYPE` (`event_type` when a string). A payload that is
/// missing or not a JSON object still yields the job-field extras. Empty values are left out
/// (the param string would skip them anyway).
pub fn github_extras(job: &DispatchJob) -> BTreeMap<String, String> {
    extras_with_payload(job, job.payload.as_deref().map(|raw| raw.get()))
}

/// [`github_extras`] with the payload text given separately, so that text which is not JSON at
/// all (which a `RawValue` cannot hold) can be tested too.
pub(crate) fn extras_with_payload(
    job: &DispatchJob,
    payload: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |name: &str, value: &str| {
        if !value.is_empty() {
            out.insert(name.to_owned(), value.to_owned());
        }
    };
    put("GITHUB_ACTOR", &job.actor_login);
    put("GITHUB_COMMAND", &job.command);
    put("GITHUB_EVENT_ACTION", &job.event_action);
    put("GITHUB_EVENT_NAME", &job.event_name);
    put("GITHUB_REF", &job.git_ref);
    put("GITHUB_REPOSITORY", &job.repository_name);
    put("GITHUB_SHA", &job.sha);
    if job.pull_request_number > 0 {
        put("GITHUB_PR_NUMBER", &job.pull_request_number.to_string());
    }
    if job.issue_number > 0 {
        put("GITHUB_ISSUE_NUMBER", &job.issue_number.to_string());
    }

    // A payload that does not parse, or is not an object, carries nothing we can read; the
    // job fields above are still worth running with.
    let payload = payload.map_or(Value::Null, picked_members);

    let release_tag = payload
        .pointer("/release/tag_name")
        .and_then(Value::as_str)
        .filter(|tag| !tag.is_empty())
        .or_else(|| job.git_ref.strip_prefix("refs/tags/"));
    if let Some(tag) = release_tag {
        put("GITHUB_RELEASE_TAG", tag);
    }

    let workflow = match payload.get("workflow") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(obj @ Value::Object(_)) => obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| obj.get("path").and_then(Value::as_str)),
        _ => None,
    };
    if let Some(workflow) = workflow {
        put("GITHUB_WORKFLOW", workflow);
    }

    if let Some(event_type) = payload.get("event_type").and_then(Value::as_str) {
        put("GITHUB_DISPATCH_EVENT_TYPE", event_type);
    }
    out
}

/// The three top-level members of a payload the extras read (`release`, `workflow`,
/// `event_type`), as an object holding only them; `Null` when the payload does not parse or is
/// not an object. The other members are only scanned as raw text, never built: a push payload is
/// kilobytes of commits, and building it whole was a large share of a job's CPU in the worker.
/// The last of repeated keys wins, as when the whole payload is parsed.
fn picked_members(text: &str) -> Value {
    let Ok(members) = serde_json::from_str::<HashMap<String, &RawValue>>(text) else {
        return Value::Null;
    };
    let picked: serde_json::Map<String, Value> = members
        .into_iter()
        .filter(|(key, _)| matches!(key.as_str(), "release" | "workflow" | "event_type"))
        .filter_map(|(key, raw)| Some((key, serde_json::from_str(raw.get()).ok()?)))
        .collect();
    Value::Object(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    use dispatch_test_support::fixture_str as fixture;

    fn job_with(payload: &str) -> DispatchJob {
        DispatchJob {
            id: "job-1".into(),
            payload: Some(RawValue::from_string(payload.to_owned()).unwrap()),
            ..DispatchJob::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_the_members_read_are_built_and_the_last_repeat_wins() {
        let job = DispatchJob {
            id: "j".into(),
            git_ref: "refs/tags/v2".into(),
            ..DispatchJob::default()
        };
        let extras = |payload: &str| extras_with_payload(&job, Some(payload));
        assert_eq!(
            extras(
                r#"{"event_type": "a", "commits": [{"x": [1, {"y": null}]}], "event_type": "b"}"#
            ),
            map(&[
                ("GITHUB_DISPATCH_EVENT_TYPE", "b"),
                ("GITHUB_REF", "refs/tags/v2"),
                ("GITHUB_RELEASE_TAG", "v2"),
            ])
        );
        // `release` that is not an object, a payload that is not an object or not JSON: only
        // what the job fields give.
        let plain = map(&[("GITHUB_REF", "refs/tags/v2"), ("GITHUB_RELEASE_TAG", "v2")]);
        for payload in [
            r#"{"release": "v9"}"#,
            "[1, 2]",
            r#""text""#,
            "{",
            r#"{"a": 1} x"#,
        ] {
            assert_eq!(extras(payload), plain, "{payload}");
        }
    }

    #[test]
    fn job_fields_become_extras_and_empty_ones_are_skipped() {
        let job = DispatchJob {
            id: "j".into(),
            actor_login: "octocat".into(),
            command: "deploy".into(),
            event_action: "created".into(),
            event_name: "issue_comment".into(),
            git_ref: "refs/heads/main".into(),
            repository_name: "octo/repo".into(),
            sha: "abc123".into(),
            pull_request_number: 7,
            issue_number: 7,
            ..DispatchJob::default()
        };
        assert_eq!(
            github_extras(&job),
            map(&[
                ("GITHUB_ACTOR", "octocat"),
                ("GITHUB_COMMAND", "deploy"),
                ("GITHUB_EVENT_ACTION", "created"),
                ("GITHUB_EVENT_NAME", "issue_comment"),
                ("GITHUB_ISSUE_NUMBER", "7"),
                ("GITHUB_PR_NUMBER", "7"),
                ("GITHUB_REF", "refs/heads/main"),
                ("GITHUB_REPOSITORY", "octo/repo"),
                ("GITHUB_SHA", "abc123"),
            ])
        );
        let empty = DispatchJob {
            id: "j".into(),
            pull_request_number: -3,
            issue_number: 0,
            ..DispatchJob::default()
        };
        assert!(github_extras(&empty).is_empty());
    }

    #[test]
    fn push_of_a_tag_gives_the_release_tag_from_the_ref() {
        let payload = fixture("push/payload.json");
        let v: Value = serde_json::from_str(&payload).unwrap();
        let git_ref = v["ref"].as_str().unwrap().to_owned();
        assert_eq!(git_ref, "refs/tags/simple-tag");
        let job = DispatchJob {
            event_name: "push".into(),
            git_ref,
            sha: v["after"].as_str().unwrap().into(),
            repository_name: "Codertocat/Hello-World".into(),
            actor_login: "Codertocat".into(),
            ..job_with(&payload)
        };
        assert_eq!(
            github_extras(&job),
            map(&[
                ("GITHUB_ACTOR", "Codertocat"),
                ("GITHUB_EVENT_NAME", "push"),
                ("GITHUB_REF", "refs/tags/simple-tag"),
                ("GITHUB_RELEASE_TAG", "simple-tag"),
                ("GITHUB_REPOSITORY", "Codertocat/Hello-World"),
                ("GITHUB_SHA", v["after"].as_str().unwrap()),
            ])
        );
    }

    #[test]
    fn push_of_a_branch_has_no_release_tag() {
        let job = DispatchJob {
            event_name: "push".into(),
            git_ref: "refs/heads/master".into(),
            ..job_with(&fixture("push/with-new-branch.payload.json"))
        };
        let extras = github_extras(&job);
        assert!(!extras.contains_key("GITHUB_RELEASE_TAG"), "{extras:?}");
        assert!(!extras.contains_key("GITHUB_WORKFLOW"), "{extras:?}");
        assert_eq!(extras["GITHUB_REF"], "refs/heads/master");
    }

    #[test]
    fn release_tag_comes_from_the_payload_before_the_ref() {
        for file in [
            "release/published.payload.json",
            "release/created.payload.json",
        ] {
            let job = DispatchJob {
                event_name: "release".into(),
                event_action: "published".into(),
                // A tag ref that disagrees with the payload: the payload wins.
                git_ref: "refs/tags/other".into(),
                ..job_with(&fixture(file))
            };
            assert_eq!(github_extras(&job)["GITHUB_RELEASE_TAG"], "0.0.1", "{file}");
        }
    }

    #[test]
    fn workflow_dispatch_gives_the_workflow_string() {
        let job = DispatchJob {
            event_name: "workflow_dispatch".into(),
            git_ref: "refs/heads/master".into(),
            ..job_with(&fixture("workflow_dispatch/payload.json"))
        };
        let extras = github_extras(&job);
        assert_eq!(
            extras["GITHUB_WORKFLOW"],
            ".github/workflows/hello-world-workflow.yml"
        );
        assert!(!extras.contains_key("GITHUB_DISPATCH_EVENT_TYPE"));
        assert!(!extras.contains_key("GITHUB_RELEASE_TAG"));
    }

    #[test]
    fn workflow_object_gives_name_then_path() {
        let named = job_with(r#"{"workflow":{"name":"CI","path":".github/workflows/ci.yml"}}"#);
        assert_eq!(github_extras(&named)["GITHUB_WORKFLOW"], "CI");
        let unnamed = job_with(r#"{"workflow":{"name":"","path":".github/workflows/ci.yml"}}"#);
        assert_eq!(
            github_extras(&unnamed)["GITHUB_WORKFLOW"],
            ".github/workflows/ci.yml"
        );
        let neither = job_with(r#"{"workflow":{"id":3}}"#);
        assert!(!github_extras(&neither).contains_key("GITHUB_WORKFLOW"));
        let number = job_with(r#"{"workflow":12}"#);
        assert!(!github_extras(&number).contains_key("GITHUB_WORKFLOW"));
    }

    #[test]
    fn repository_dispatch_reads_event_type_only_when_a_string() {
        // The real fixture carries the type in `action` (a job field), not `event_type`.
        let job = DispatchJob {
            event_name: "repository_dispatch".into(),
            event_action: "on-demand-test".into(),
            ..job_with(&fixture("repository_dispatch/payload.json"))
        };
        let extras = github_extras(&job);
        assert_eq!(extras["GITHUB_EVENT_ACTION"], "on-demand-test");
        assert!(!extras.contains_key("GITHUB_DISPATCH_EVENT_TYPE"));

        let typed = job_with(r#"{"event_type":"deploy-prod","client_payload":{}}"#);
        assert_eq!(
            github_extras(&typed)["GITHUB_DISPATCH_EVENT_TYPE"],
            "deploy-prod"
        );
        let not_string = job_with(r#"{"event_type":{"x":1}}"#);
        assert!(github_extras(&not_string).is_empty());
    }

    #[test]
    fn issue_comment_and_pull_request_use_job_numbers() {
        let comment = DispatchJob {
            event_name: "issue_comment".into(),
            event_action: "created".into(),
            issue_number: 1,
            command: "run".into(),
            ..job_with(&fixture("issue_comment/created.payload.json"))
        };
        assert_eq!(
            github_extras(&comment),
            map(&[
                ("GITHUB_COMMAND", "run"),
                ("GITHUB_EVENT_ACTION", "created"),
                ("GITHUB_EVENT_NAME", "issue_comment"),
                ("GITHUB_ISSUE_NUMBER", "1"),
            ])
        );
        let pr = DispatchJob {
            event_name: "pull_request".into(),
            event_action: "opened".into(),
            pull_request_number: 2,
            ..job_with(&fixture("pull_request/opened.payload.json"))
        };
        assert_eq!(
            github_extras(&pr),
            map(&[
                ("GITHUB_EVENT_ACTION", "opened"),
                ("GITHUB_EVENT_NAME", "pull_request"),
                ("GITHUB_PR_NUMBER", "2"),
            ])
        );
    }

    #[test]
    fn payload_that_is_not_json_or_not_an_object_keeps_job_extras() {
        let job = DispatchJob {
            id: "j".into(),
            event_name: "push".into(),
            git_ref: "refs/tags/v1.2.3".into(),
            ..DispatchJob::default()
        };
        let expected = map(&[
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_REF", "refs/tags/v1.2.3"),
            ("GITHUB_RELEASE_TAG", "v1.2.3"),
        ]);
        for text in [
            "not json at all",
            "{\"release\":",
            "",
            "[1,2,3]",
            "\"{\\\"release\\\":{\\\"tag_name\\\":\\\"x\\\"}}\"",
            "null",
            "42",
        ] {
            assert_eq!(extras_with_payload(&job, Some(text)), expected, "{text:?}");
        }
        assert_eq!(extras_with_payload(&job, None), expected);
        // Through the public entry point: a JSON string payload is not an object.
        let string_payload = DispatchJob {
            payload: Some(RawValue::from_string("\"plain text\"".into()).unwrap()),
            ..job.clone()
        };
        assert_eq!(github_extras(&string_payload), expected);
    }
}
