//! The background loop that sends the queued reports to GitHub, oldest first and one at a time
//! per job (the store hands out only a job's oldest report), with exponential backoff.
//!
//! A report `POST /repos/<o>/<r>/check-runs` is not sent as it is: its body is the state the
//! job's check run should have. The first one creates the check run and its id is stored; later
//! ones `PATCH` that check run. The create is marked in the store before it is sent, so a create
//! whose answer was lost (the hub stopped) is found again by its `external_id` instead of made
//! twice.
//!
//! A rate-limit answer puts that installation's reports off until GitHub's time (with a token,
//! all reports: one token is one bucket); other installations go on. Without an App configured,
//! queued check-run reports (left from a time with one) are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch_util::error_chain;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::HubError;
use crate::github::answer::CallError;
use crate::github::client::{Call, GithubClient};
use crate::metrics::{Metrics, REPORTS};
use crate::report::{backoff, MAX_ATTEMPTS};
use crate::store::{blocking, now_ms, PendingReport, Store};

/// Reports one pass sends at most before it looks at when the next is due.
const PASS: usize = 50;

/// How long a claimed report stays with the hub process that claimed it: longer than the two
/// GitHub calls a report may take (an installation token and the report, 30 s timeout each).
/// A process that dies while sending leaves the report to be sent after this.
const CLAIM_HOLD_MS: i64 = 120_000;

pub(crate) struct Reporter {
    pub store: Arc<Store>,
    pub github: GithubClient,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

/// `owner/repo` and `/repos/owner/repo` of a report's path.
fn repository_of(path: &str) -> Option<(String, &str)> {
    let rest = path.strip_prefix("/repos/")?;
    let mut parts = rest.splitn(3, '/');
    let (owner, repo) = (parts.next()?, parts.next()?);
    let base = &path[..("/repos/".len() + owner.len() + 1 + repo.len())];
    Some((format!("{owner}/{repo}"), base))
}

/// A query-string value: unreserved characters as they are, everything else percent-encoded.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Reporter {
    pub async fn run(self, cancel: CancellationToken) {
        // Installation (0: the token) → when GitHub lets it call again.
        let mut limited: HashMap<i64, i64> = HashMap::new();
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if let Err(e) = self.pass(&mut limited).await {
                tracing::warn!(error = %error_chain(&e), "github report pass failed; retrying later");
            }
            let delay = match blocking(&self.store, |s| s.next_report_due()).await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, 60_000) as u64),
                Ok(None) => Duration::from_secs(60),
                Err(_) => Duration::from_secs(5),
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = &mut wake => {}
            }
        }
    }

    /// Sends due reports (up to [`PASS`]), each claimed first so that no other hub process on
    /// the same store sends it too; returns how many were sent.
    async fn pass(&self, limited: &mut HashMap<i64, i64>) -> Result<usize, HubError> {
        let mut sent = 0;
        for _ in 0..PASS {
            let claimed = blocking(&self.store, |s| s.claim_due_report(now_ms(), CLAIM_HOLD_MS));
            let Some(report) = claimed.await? else { break };
            let result = match self.installation(&report).await {
                Ok(installation) => match limited.get(&installation) {
                    Some(until) if *until > now_ms() => Err((
                        installation,
                        CallError::RateLimited {
                            until_ms: *until,
                            why: "installation is rate limited".to_owned(),
                        },
                    )),
                    _ => self
                        .send(&report, installation)
                        .await
                        .map_err(|e| (installation, e)),
                },
                Err(e) => Err((0, e)),
            };
            let id = report.id;
            match result {
                Ok(()) => {
                    self.metrics.inc(REPORTS, "sent");
                    sent += 1;
                    blocking(&self.store, move |s| s.delete_report(id)).await?;
                }
                Err((installation, CallError::RateLimited { until_ms, why })) => {
                    self.metrics.inc(REPORTS, "rate_limited");
                    if limited.insert(installation, until_ms) != Some(until_ms) {
                        tracing::warn!(installation, wait_ms = until_ms - now_ms(), error = %why,
                            "github rate limit; holding back this installation's reports");
                    }
                    blocking(&self.store, move |s| s.defer_report(id, until_ms, &why)).await?;
                }
                Err((_, CallError::Permanent(why))) => {
                    self.metrics.inc(REPORTS, "dropped");
                    tracing::warn!(job_id = %report.job_id, path = %report.path, error = %why, "github rejected a report; dropping it");
                    blocking(&self.store, move |s| s.delete_report(id)).await?;
                }
                Err((_, CallError::Retry(why))) => {
                    self.metrics.inc(REPORTS, "failed");
                    let attempts = report.attempts + 1;
                    if attempts >= MAX_ATTEMPTS {
                        tracing::warn!(job_id = %report.job_id, path = %report.path, error = %why, attempts, "giving up on a github report");
                        blocking(&self.store, move |s| s.delete_report(id)).await?;
                    } else {
                        let next = now_ms() + backoff(attempts).as_millis() as i64;
                        tracing::debug!(job_id = %report.job_id, error = %why, attempts, "github report failed; will retry");
                        blocking(&self.store, move |s| {
                            s.reschedule_report(id, attempts, next, &why)
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(sent)
    }

    /// The installation a report is sent as (0 with a token).
    async fn installation(&self, report: &PendingReport) -> Result<i64, CallError> {
        if !self.github.is_app() {
            return Ok(0);
        }
        let Some((repository, _)) = repository_of(&report.path) else {
            return Err(CallError::Permanent(format!(
                "`{}` names no repository",
                report.path
            )));
        };
        let job_id = report.job_id.clone();
        let named = blocking(&self.store, move |s| s.job_installation(&job_id))
            .await
            .map_err(|e| CallError::Retry(error_chain(&e)))?;
        self.github.installation(&repository, named).await
    }

    async fn send(&self, report: &PendingReport, installation: i64) -> Result<(), CallError> {
        if report.path.ends_with("/check-runs") {
            return self.send_check_run(report, installation).await;
        }
        let call = Call {
            method: Method::POST,
            path: &report.path,
            body: Some(&report.body),
            what: if report.path.contains("/statuses/") {
                "create a commit status"
            } else {
                "create a comment"
            },
        };
        self.github.call(installation, call).await.map(|_| ())
    }

    /// Brings the job's check run to the state in the report's body (see the module docs).
    async fn send_check_run(
        &self,
        report: &PendingReport,
        installation: i64,
    ) -> Result<(), CallError> {
        if !self.github.is_app() {
            return Err(CallError::Permanent(
                "check runs need a GitHub App, and none is configured".to_owned(),
            ));
        }
        let (repository, base) = repository_of(&report.path)
            .ok_or_else(|| CallError::Permanent("no repository in the path".to_owned()))?;
        let mut body: Value = serde_json::from_str(&report.body)
            .map_err(|_| CallError::Permanent("the queued check run is not JSON".to_owned()))?;
        let sha = body["head_sha"].as_str().unwrap_or_default().to_owned();
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        let job_id = report.job_id.clone();
        let store_err = |e: HubError| CallError::Retry(error_chain(&e));
        let known = {
            let job_id = job_id.clone();
            blocking(&self.store, move |s| s.check_run(&job_id))
                .await
                .map_err(store_err)?
                .unwrap_or_default()
        };
        let mut id = known.check_run_id;
        if id == 0 && known.create_started {
            id = self
                .find_check_run(installation, base, &sha, &name, &job_id)
                .await?;
            if id > 0 {
                let (j, r, s) = (job_id.clone(), repository.clone(), sha.clone());
                blocking(&self.store, move |st| {
                    st.check_run_created(&j, &r, &s, id, now_ms())
                })
                .await
                .map_err(store_err)?;
            }
        }
        if id > 0 {
            if let Some(fields) = body.as_object_mut() {
                fields.remove("head_sha");
            }
            let path = format!("{base}/check-runs/{id}");
            let text = body.to_string();
            let call = Call {
                method: Method::PATCH,
                path: &path,
                body: Some(&text),
                what: "update a check run",
            };
            return self.github.call(installation, call).await.map(|_| ());
        }
        {
            let (j, r, s) = (job_id.clone(), repository.clone(), sha.clone());
            blocking(&self.store, move |st| {
                st.check_run_create_started(&j, &r, &s, now_ms())
            })
            .await
            .map_err(store_err)?;
        }
        let call = Call {
            method: Method::POST,
            path: &report.path,
            body: Some(&report.body),
            what: "create a check run",
        };
        let created = self.github.call(installation, call).await?;
        match created["id"].as_i64() {
            Some(id) => {
                blocking(&self.store, move |st| {
                    st.check_run_created(&job_id, &repository, &sha, id, now_ms())
                })
                .await
                .map_err(store_err)?;
                Ok(())
            }
            // Created, but no id to update it by: the create-started mark finds it next time.
            None => Err(CallError::Retry(
                "github created a check run but named no id".to_owned(),
            )),
        }
    }

    /// The id of the check run of `job_id` on `sha`, looked up by its `external_id` (0: none).
    async fn find_check_run(
        &self,
        installation: i64,
        base: &str,
        sha: &str,
        name: &str,
        job_id: &str,
    ) -> Result<i64, CallError> {
        let path = format!(
            "{base}/commits/{sha}/check-runs?check_name={}&filter=all&per_page=100",
            query_value(name)
        );
        let call = Call {
            method: Method::GET,
            path: &path,
            body: None,
            what: "list check runs",
        };
        let found = self.github.call(installation, call).await?;
        Ok(found["check_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|run| run["external_id"].as_str() == Some(job_id))
            .and_then(|run| run["id"].as_i64())
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_repository() {
        assert_eq!(
            repository_of("/repos/o/r/check-runs"),
            Some(("o/r".to_owned(), "/repos/o/r"))
        );
        assert_eq!(
            repository_of("/repos/o/r/statuses/abc"),
            Some(("o/r".to_owned(), "/repos/o/r"))
        );
        assert_eq!(repository_of("/app/x"), None);
        assert_eq!(query_value("dispatch/build x"), "dispatch%2Fbuild%20x");
    }
}
