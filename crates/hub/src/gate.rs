//! The webhook's last step: a verified, parsed delivery goes through the trust gate
//! ([`crate::trust`]) and its verdict is carried out in the store — jobs stored (or none, with the
//! reason recorded), a fork pull request held, a cancel routed, an approval dispatched — each in
//! one durable write together with the delivery record and the comment that answers a command.

use std::sync::Arc;

use serde_json::Value;

use crate::check_events;
use crate::config::HubConfig;
use crate::error::HubError;
use crate::lifecycle::{job_reports, Channel, Lifecycle};
use crate::report;
use crate::store::{blocking, now_ms, Delivery, RawDelivery, Reports, Store};
use crate::trust::{self, Action, ForkState, Keep, Outcome, Taken};

/// Whether the hub reports to GitHub (a token or an App is configured).
fn reporting(cfg: &HubConfig) -> bool {
    Lifecycle::for_config(cfg).channel != Channel::Off
}

/// The note and the one comment answering a command on `repository` #`number`.
fn answer(
    reporting: bool,
    repository: &str,
    number: i64,
    text: String,
    what: &str,
) -> (String, Vec<(String, String)>) {
    let calls = if reporting {
        report::comment_report(repository, number, &text, what)
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    (text, calls)
}

/// Takes a verified delivery of `event` (its `raw` body and headers, parsed as `payload`).
pub(crate) async fn take(
    store: &Arc<Store>,
    cfg: &HubConfig,
    event: &str,
    delivery_id: &str,
    raw: RawDelivery,
    payload: &Value,
) -> Result<Taken, HubError> {
    // The buttons on the hub's own check runs are requests to the hub, not events for bindings.
    if let Some(app) = &cfg.github.app {
        if let Some(request) = check_events::request(event, payload, app.app_id) {
            let repository = payload
                .pointer("/repository/full_name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let delivery = (event, delivery_id, raw);
            return check_events::take(store, cfg, delivery, repository, request).await;
        }
    }
    if let Some(comment) = trust::command_comment(event, payload, &cfg.mention) {
        let (id, comment_id) = (delivery_id.to_owned(), comment.comment_id);
        let first = blocking(store, move |s| {
            s.first_delivery_of_comment(comment, &id, now_ms())
        })
        .await?;
        if first != delivery_id {
            return replayed_comment(store, event, delivery_id, raw, comment_id, &first).await;
        }
    }
    let fork = match trust::fork_query(event, payload) {
        Some(query) => blocking(store, move |s| s.fork_state(&query)).await?,
        None => ForkState::default(),
    };
    let verdict = trust::decide(
        &cfg.bindings,
        &cfg.mention,
        event,
        delivery_id,
        payload,
        fork,
    );
    let delivery = Delivery {
        id: delivery_id.to_owned(),
        event: event.to_owned(),
        raw,
        outcome: verdict.outcome,
        reason: verdict.reason.clone(),
    };
    let reports = job_reports(cfg);
    let reporting = reporting(cfg);
    let (recorded, reason) = match verdict.action {
        Action::Jobs(jobs) => {
            let keep = Keep {
                held: verdict.held,
                sighting: trust::sighting(event, payload),
            };
            let recorded = blocking(store, move |s| {
                s.record_gated(delivery, jobs, Some(keep), now_ms(), reports)
            })
            .await?;
            (recorded, verdict.reason)
        }
        Action::Cancel(cmd) => {
            let cmd = *cmd;
            let (repository, number) = (cmd.repository.clone(), cmd.number);
            let (recorded, done) = blocking(store, move |s| {
                s.cancel(delivery, cmd, now_ms(), reports, move |outcome| {
                    let text = report::cancel_answer(outcome);
                    answer(reporting, &repository, number, text, "cancel command")
                })
            })
            .await?;
            let reason = done.map(|o| report::cancel_answer(&o)).unwrap_or_default();
            (recorded, reason)
        }
        Action::Approve(cmd) => {
            let (repository, number) = (cmd.repository.clone(), cmd.number);
            let (bindings, mention) = (cfg.bindings.clone(), cfg.mention.clone());
            let make_jobs = move |held: &crate::store::HeldEvent, ids: &[String]| {
                trust::approved_jobs(
                    &bindings,
                    &mention,
                    ids,
                    &held.event,
                    &held.delivery_id,
                    &held.raw.payload,
                )
            };
            let (recorded, done) = blocking(store, move |s| {
                s.approve(
                    delivery,
                    cmd,
                    now_ms(),
                    make_jobs,
                    reports,
                    move |approval| {
                        let text = report::approve_answer(approval, number);
                        answer(reporting, &repository, number, text, "approve command")
                    },
                )
            })
            .await?;
            let reason = done
                .map(|a| report::approve_answer(&a, number))
                .unwrap_or_default();
            (recorded, reason)
        }
    };
    if recorded.duplicate {
        return Ok(Taken {
            outcome: Outcome::Duplicate,
            job_ids: recorded.job_ids,
            reason: String::new(),
        });
    }
    Ok(Taken {
        outcome: verdict.outcome,
        job_ids: recorded.job_ids,
        reason,
    })
}

/// A comment command that came before under another delivery id: recorded as a duplicate, and
/// nothing more (GitHub gives a comment one id; only a replay brings it twice).
async fn replayed_comment(
    store: &Arc<Store>,
    event: &str,
    delivery_id: &str,
    raw: RawDelivery,
    comment_id: i64,
    first: &str,
) -> Result<Taken, HubError> {
    let reason = format!(
        "comment {comment_id} was taken before, in delivery {first}: a comment command runs once"
    );
    let delivery = Delivery {
        id: delivery_id.to_owned(),
        event: event.to_owned(),
        raw,
        outcome: Outcome::Duplicate,
        reason: reason.clone(),
    };
    let reports: Reports = Arc::new(crate::store::NoReports);
    let recorded = blocking(store, move |s| {
        s.record_gated(delivery, Vec::new(), None, now_ms(), reports)
    })
    .await?;
    Ok(Taken {
        outcome: Outcome::Duplicate,
        job_ids: recorded.job_ids,
        reason: if recorded.duplicate {
            String::new()
        } else {
            reason
        },
    })
}
