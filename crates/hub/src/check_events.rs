//! GitHub's buttons on the hub's own check runs (`docs/github-app.md`): "Re-run" (`check_run`
//! `rerequested`), "Re-run all checks" (`check_suite` `rerequested`) and "Cancel" (`check_run`
//! `requested_action` with identifier `cancel`).
//!
//! A re-run dispatches the job's DAG again for the same event: the original delivery goes through
//! the trust gate again ([`trust::decide`], so today's bindings and trigger rules decide), and of
//! the jobs it would make, the one of the original job's binding is stored, carrying the original
//! payload. A suite re-run does this for the latest job of each binding on the suite's head SHA. A
//! cancel is routed like `<mention> cancel`, for that one job: queued, it is finished here as
//! `aborted`; accepted, the server running it gets a cancel job.
//!
//! Only events about check runs of this App (`app.id`) are taken here; any other `check_run`
//! event goes to the bindings as before. GitHub shows these buttons only to people with write
//! access to the repository.

use std::collections::HashMap;
use std::sync::Arc;

use dispatch_protocol::{DispatchJob, CANCEL_COMMAND};
use serde_json::Value;

use crate::config::HubConfig;
use crate::error::HubError;
use crate::github::checks::CANCEL_ACTION;
use crate::lifecycle::job_reports;
use crate::matching::new_job_id;
use crate::store::{blocking, now_ms, Delivery, RawDelivery, Rerun, Store};
use crate::trust::{self, Action, CancelCommand, ForkState, Outcome, Taken};

/// What a delivery asks of the hub's own check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Run these jobs' DAGs again.
    Rerun(Vec<String>),
    /// Run the latest job of each binding on this head SHA again.
    RerunSuite {
        repository: String,
        head_sha: String,
    },
    /// Stop this job.
    Cancel(String),
    /// Another event about our own check runs (created, completed, ...): nothing to do.
    Nothing,
}

/// The request in a delivery, when it is about a check run or suite of App `app_id`.
pub(crate) fn request(event: &str, payload: &Value, app_id: u64) -> Option<Request> {
    let ours = |key: &str| {
        payload
            .pointer(&format!("/{key}/app/id"))
            .and_then(Value::as_u64)
            == Some(app_id)
    };
    let action = payload["action"].as_str().unwrap_or_default();
    match event {
        "check_run" if ours("check_run") => {
            let job = payload
                .pointer("/check_run/external_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let identifier = payload
                .pointer("/requested_action/identifier")
                .and_then(Value::as_str);
            Some(match action {
                "rerequested" => Request::Rerun(vec![job]),
                "requested_action" if identifier == Some(CANCEL_ACTION) => Request::Cancel(job),
                _ => Request::Nothing,
            })
        }
        "check_suite" if ours("check_suite") => Some(match action {
            "rerequested" => Request::RerunSuite {
                repository: payload
                    .pointer("/repository/full_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                head_sha: payload
                    .pointer("/check_suite/head_sha")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            },
            _ => Request::Nothing,
        }),
        _ => None,
    }
}

/// Carries out `request` for a delivery of `event` (its body `raw`) on `repository`; the
/// delivery is recorded with what came of it, as any other.
pub(crate) async fn take(
    store: &Arc<Store>,
    cfg: &HubConfig,
    (event, delivery_id, raw): (&str, &str, RawDelivery),
    repository: &str,
    request: Request,
) -> Result<Taken, HubError> {
    let delivery = |outcome: Outcome, reason: String| Delivery {
        id: delivery_id.to_owned(),
        event: event.to_owned(),
        raw: raw.clone(),
        outcome,
        reason,
    };
    let job_ids = match request {
        Request::Nothing => Vec::new(),
        Request::Cancel(job_id) => {
            return cancel(store, cfg, delivery, repository, job_id).await;
        }
        Request::Rerun(ids) => ids,
        Request::RerunSuite {
            repository: suite_repo,
            head_sha,
        } => blocking(store, move |s| s.check_run_jobs_on(&suite_repo, &head_sha)).await?,
    };
    let (reruns, reason) = reruns_of(store, cfg, repository, job_ids).await?;
    let reason = match (reruns.is_empty(), reason.is_empty()) {
        (true, true) => format!("`{event}` asks this hub for nothing it can re-run"),
        _ => reason,
    };
    let outcome = if reruns.is_empty() {
        Outcome::NoBinding
    } else {
        Outcome::Accepted
    };
    let d = delivery(outcome, reason.clone());
    let reports = job_reports(cfg);
    let recorded = blocking(store, move |s| s.rerun(d, reruns, now_ms(), reports)).await?;
    Ok(Taken {
        outcome: if recorded.duplicate {
            Outcome::Duplicate
        } else {
            outcome
        },
        job_ids: recorded.job_ids,
        reason,
    })
}

/// The jobs that run `job_ids` again, one per binding (the latest job of each), and why any
/// could not be.
async fn reruns_of(
    store: &Arc<Store>,
    cfg: &HubConfig,
    repository: &str,
    job_ids: Vec<String>,
) -> Result<(Vec<Rerun>, String), HubError> {
    let mut originals = Vec::new();
    let mut reasons = Vec::new();
    for job_id in job_ids {
        let id = job_id.clone();
        match blocking(store, move |s| s.original_event(&id)).await? {
            Some(o) if o.job.repository_name.eq_ignore_ascii_case(repository) => originals.push(o),
            _ => reasons.push(format!("no job `{job_id}` of this hub on {repository}")),
        }
    }
    // Originals come oldest first: the last one of a binding is its latest.
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, o) in originals.iter().enumerate() {
        latest.insert(o.job.binding_id.clone(), i);
    }
    let mut reruns = Vec::new();
    for (i, o) in originals.into_iter().enumerate() {
        if latest.get(&o.job.binding_id) != Some(&i) {
            continue;
        }
        let Some(orig_raw) = o.raw else {
            reasons.push(format!("job `{}`: its event is no longer stored", o.job.id));
            continue;
        };
        let Ok(payload) = serde_json::from_str::<Value>(&orig_raw.payload) else {
            reasons.push(format!("job `{}`: its stored event is not JSON", o.job.id));
            continue;
        };
        // A re-run runs the commit the original job ran: the head the hub pinned for a comment
        // then, not the pull request's head now.
        let fork = match trust::fork_query(&o.job.event_name, &payload) {
            Some(query @ trust::ForkQuery::CheckRun { .. }) => {
                blocking(store, move |s| s.fork_state(&query)).await?
            }
            _ => ForkState::default(),
        };
        let verdict = trust::decide(
            &cfg.bindings,
            &cfg.mention,
            &o.job.event_name,
            &o.job.delivery_id,
            &payload,
            fork,
        );
        let again = match verdict.action {
            Action::Jobs(jobs) => jobs
                .into_iter()
                .find(|j| j.job.binding_id == o.job.binding_id)
                .map(|mut j| {
                    if j.job.sha.is_empty() {
                        j.job.sha.clone_from(&o.job.sha);
                    }
                    j
                }),
            _ => None,
        };
        match again {
            Some(job) => reruns.push(Rerun {
                job,
                payload_key: o.payload_key,
                raw: orig_raw,
            }),
            None if verdict.reason.is_empty() => reasons.push(format!(
                "job `{}`: its binding no longer takes the event",
                o.job.id
            )),
            None => reasons.push(format!("job `{}`: {}", o.job.id, verdict.reason)),
        }
    }
    Ok((reruns, reasons.join("; ")))
}

/// The "Cancel" button: routed like a cancel command, for one job.
async fn cancel(
    store: &Arc<Store>,
    cfg: &HubConfig,
    delivery: impl Fn(Outcome, String) -> Delivery,
    repository: &str,
    job_id: String,
) -> Result<Taken, HubError> {
    let id = job_id.clone();
    let original = blocking(store, move |s| s.original_event(&id)).await?;
    let Some(original) =
        original.filter(|o| o.job.repository_name.eq_ignore_ascii_case(repository))
    else {
        let reason = format!("no job `{job_id}` of this hub on {repository} to cancel");
        let d = delivery(Outcome::NoBinding, reason.clone());
        let reports = job_reports(cfg);
        let recorded = blocking(store, move |s| s.rerun(d, Vec::new(), now_ms(), reports)).await?;
        return Ok(Taken {
            outcome: if recorded.duplicate {
                Outcome::Duplicate
            } else {
                Outcome::NoBinding
            },
            job_ids: recorded.job_ids,
            reason,
        });
    };
    let d = delivery(Outcome::Accepted, String::new());
    let job = &original.job;
    let number = if job.issue_number != 0 {
        job.issue_number
    } else {
        job.pull_request_number
    };
    let template = DispatchJob {
        id: new_job_id(),
        installation_id: job.installation_id,
        repository_id: job.repository_id,
        repository_name: job.repository_name.clone(),
        event_name: "check_run".to_owned(),
        event_action: "requested_action".to_owned(),
        delivery_id: d.id.clone(),
        git_ref: job.git_ref.clone(),
        sha: job.sha.clone(),
        pull_request_number: job.pull_request_number,
        issue_number: job.issue_number,
        command: CANCEL_COMMAND.to_owned(),
        ..DispatchJob::default()
    };
    let cmd = CancelCommand {
        template,
        repository: job.repository_name.clone(),
        number,
        login: String::new(),
        only_job: Some(job_id.clone()),
        only_bindings: None,
    };
    let reports = job_reports(cfg);
    let (recorded, done) = blocking(store, move |s| {
        s.cancel(d, cmd, now_ms(), reports, |outcome| {
            (crate::report::cancel_answer(outcome), Vec::new())
        })
    })
    .await?;
    Ok(Taken {
        outcome: if recorded.duplicate {
            Outcome::Duplicate
        } else {
            Outcome::Accepted
        },
        job_ids: recorded.job_ids,
        reason: done
            .map(|o| crate::report::cancel_answer(&o))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_of_our_check_runs_only() {
        let run = |action: &str, app: u64, extra: Value| {
            let mut p = json!({"action": action,
                "check_run": {"external_id": "j1", "app": {"id": app}},
                "repository": {"full_name": "o/r"}});
            if let Some(obj) = extra.as_object() {
                for (k, v) in obj {
                    p[k] = v.clone();
                }
            }
            request("check_run", &p, 7)
        };
        assert_eq!(
            run("rerequested", 7, json!({})),
            Some(Request::Rerun(vec!["j1".into()]))
        );
        assert_eq!(
            run(
                "requested_action",
                7,
                json!({"requested_action": {"identifier": "cancel"}})
            ),
            Some(Request::Cancel("j1".into()))
        );
        assert_eq!(
            run(
                "requested_action",
                7,
                json!({"requested_action": {"identifier": "other"}})
            ),
            Some(Request::Nothing)
        );
        assert_eq!(run("completed", 7, json!({})), Some(Request::Nothing));
        assert_eq!(run("rerequested", 8, json!({})), None);
        let suite = json!({"action": "rerequested", "check_suite": {"head_sha": "abc", "app": {"id": 7}},
                           "repository": {"full_name": "o/r"}});
        assert_eq!(
            request("check_suite", &suite, 7),
            Some(Request::RerunSuite {
                repository: "o/r".into(),
                head_sha: "abc".into()
            })
        );
        assert_eq!(request("push", &suite, 7), None);
    }
}
