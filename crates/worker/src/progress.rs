//! The uploader of the `progress` extension (`docs/protocol.md`, "Extension: progress and
//! logs"): for every accepted job whose run goes on or has ended, it follows the run record and
//! the step log files the executor writes and sends the hub when the run started, each step's
//! state and each step's stdout and stderr, in ordered chunks. Only while the cloud advertises
//! the extension: against a cloud without it, it sends nothing.
//!
//! It looks only at the jobs that may have something to send: those whose run is in progress
//! in this process's executor, every [`PROGRESS_INTERVAL`]; those whose run ended here, at once
//! (the executor's `RunFinished`); those the report loop waits for (a run that ended before
//! this process started, say); and the uploads under way, until they settle. A queue of runs
//! that have not started costs nothing, however long: no record read, no call.
//!
//! It never slows a run: the run writes its files as it always does, and the uploader reads
//! behind it, at most [`MAX_PROGRESS_DATA_BYTES`] (plus one read) per job and call in memory.
//! It keeps no state on disk: the hub's offsets are the state. The streams of a run it saw in
//! this process's executor are new to the hub, so they are sent from offset 0 at once; after a
//! restart (or when the hub answers that it holds less than was sent) it asks the hub where
//! each stream ends (an empty chunk at offset 0) and reads the local file again from its
//! start, skipping the text the hub has; the text is the same every time (`logtext`). Either
//! way the hub stores only what it lacks. Everything is masked before it leaves: the values of
//! the DAG's `secrets:` (read as the executor reads them) and every credential the license
//! manager holds. A job's log stops at its cap (the one the hub names in its answers, at most
//! [`MAX_JOB_LOG_CAP`]; [`DEFAULT_JOB_LOG_CAP`] until it has answered) with one chunk marked
//! `truncated`.
//!
//! The finish of a job waits until its upload has settled ([`Shared::upload_settled`]): the
//! logs are complete on the hub before its final status, and the tracker entry by which the
//! report loop finds the job after a restart stays until then. An upload settles when
//! everything is acknowledged, the hub refuses the job (404, 409), or calls kept failing after
//! the run ended (the finish is not held back for ever by a hub that takes the finish but not
//! logs).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use dispatch_dag::{RunRecord, RunStore, StepRecord, StepStatus};
use dispatch_executor::{secret_values, RunFinished, Secrets};
use dispatch_license::{CloudError, MachineCredentials};
use dispatch_protocol::{
    LogChunk, LogStream, ProgressRequest, ProgressResponse, Secret, StepProgress,
    DEFAULT_JOB_LOG_CAP, MAX_CHUNKS_PER_CALL, MAX_JOB_LOG_CAP, MAX_PROGRESS_DATA_BYTES,
    MAX_STEPS_PER_CALL, MAX_STEPS_PER_JOB, MAX_STEP_NAME_BYTES,
};
use dispatch_tracker::{Phase, TrackedJob};
use dispatch_util::error_chain;
use futures_util::stream::{self, StreamExt as _};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::WorkerError;
use crate::local::{get_tracked_all, read_attempt};
use crate::logtext::{floor_boundary, StreamText};
use crate::shared::Shared;

/// Time between looks at the runs in progress; a run that ends is looked at at once.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Jobs uploaded at once.
const UPLOAD_CONCURRENCY: usize = 8;

/// Calls one job may make in one pass, so that a job with a large backlog lets the others have
/// their turn.
const CALLS_PER_PASS: usize = 8;

/// Bytes read from a log file at a time.
const READ_SIZE: usize = 64 * 1024;

/// Failed calls after its run ended before a job's upload is given up (its finish goes then).
const MAX_FAILURES_AFTER_END: u32 = 8;

/// Why a pass looks at a job; when a job has several reasons, the greatest counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Look {
    /// Its upload is under way: the next call, once its retry is due.
    Due,
    /// The report loop waits for its logs.
    Asked,
    /// Its run is in progress in this process's executor.
    Active,
    /// Its run ended in this process's executor: looked at now, whatever its retry's wait.
    Ended,
}

impl Look {
    /// The uploader saw the run in this process's executor, so the hub holds none of its text.
    fn seen_here(self) -> bool {
        matches!(self, Look::Active | Look::Ended)
    }
}

/// Runs upload passes until `cancel` fires: every [`PROGRESS_INTERVAL`] over the runs in
/// progress and the uploads under way, at once when a run ends or the report loop asks.
pub(crate) async fn progress_loop(
    shared: &Shared,
    mut events: broadcast::Receiver<RunFinished>,
    cancel: &CancellationToken,
) {
    let mut uploads: HashMap<String, JobUpload> = HashMap::new();
    // The jobs whose run ended here since the last pass (the run id is the job id).
    let mut ended: HashSet<String> = HashSet::new();
    let mut events_open = true;
    let mut next_tick = Instant::now();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Ends announced while the last pass ran: a job asked for and ended is sent as ended.
        loop {
            match events.try_recv() {
                Ok(finished) => {
                    ended.insert(finished.run_id);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + PROGRESS_INTERVAL;
        }
        if shared.client.supports_progress() {
            if let Some(creds) = shared.credentials.cloud_machine_credentials() {
                let look = to_look_at(shared, &uploads, std::mem::take(&mut ended), tick, now);
                // Shutdown does not wait for a call to a hub that does not answer: what was not
                // acknowledged is sent again after the next start.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    later = upload_pass(shared, &mut uploads, look, &creds, cancel) => ended.extend(later),
                }
            }
        } else if shared.client.has_answered() {
            // The cloud takes no progress: nothing is sent, and no finish waits for it.
            uploads.clear();
            ended.clear();
            shared.take_upload_targets();
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = shared.upload_wake.notified() => {}
            event = events.recv(), if events_open => match event {
                Ok(finished) => {
                    ended.insert(finished.run_id);
                }
                // The report loop, told of every end as well, points at the jobs of the ends
                // missed here once it finds their runs final.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "missed run-finished events; the report loop asks for them");
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            () = tokio::time::sleep_until(next_tick) => {}
        }
    }
    tracing::debug!("progress uploader stopped");
}

/// The jobs a pass looks at, each with why: the runs that `ended` and the jobs the report loop
/// asked for; on a `tick` also the runs in progress and every upload under way whose retry is
/// due.
fn to_look_at(
    shared: &Shared,
    uploads: &HashMap<String, JobUpload>,
    ended: HashSet<String>,
    tick: bool,
    now: Instant,
) -> HashMap<String, Look> {
    let mut look: HashMap<String, Look> = HashMap::new();
    let mut add = |job_id: String, why: Look| {
        let reason = look.entry(job_id).or_insert(why);
        *reason = (*reason).max(why);
    };
    if tick {
        for (job_id, upload) in uploads {
            if upload.not_before.is_none_or(|t| t <= now) {
                add(job_id.clone(), Look::Due);
            }
        }
        for item in shared.executor.active_run_items() {
            add(item.run_id, Look::Active);
        }
    }
    for job_id in shared.take_upload_targets() {
        add(job_id, Look::Asked);
    }
    for job_id in ended {
        add(job_id, Look::Ended);
    }
    look
}

/// One pass over the jobs in `look`. Returns the jobs whose run ended but which are not
/// accepted yet, to look at again with the next pass (the report loop asks for them once it
/// has accepted them).
async fn upload_pass(
    shared: &Shared,
    uploads: &mut HashMap<String, JobUpload>,
    look: HashMap<String, Look>,
    creds: &MachineCredentials,
    cancel: &CancellationToken,
) -> Vec<String> {
    // A settled upload has sent all it will; its job only waits for its finish.
    let look: Vec<(String, Look)> = look
        .into_iter()
        .filter(|(job_id, _)| !shared.upload_is_settled(job_id))
        .collect();
    if look.is_empty() {
        return Vec::new();
    }
    let ids = look.iter().map(|(job_id, _)| job_id.clone()).collect();
    let mut tracked: HashMap<String, TrackedJob> = match get_tracked_all(shared, ids).await {
        Ok(jobs) => jobs.into_iter().map(|t| (t.job_id.clone(), t)).collect(),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot read tracked jobs for uploads");
            return look
                .into_iter()
                .filter(|(_, why)| *why == Look::Ended)
                .map(|(job_id, _)| job_id)
                .collect();
        }
    };
    let now = Instant::now();
    let mut later = Vec::new();
    let mut due = Vec::new();
    for (job_id, why) in look {
        let upload = uploads.remove(&job_id);
        // Only an accepted job is uploaded; one no longer tracked is done with.
        let job = match tracked.remove(&job_id) {
            Some(job) if job.phase == Phase::Accepted => job,
            Some(_) => {
                if why == Look::Ended {
                    later.push(job_id);
                }
                continue;
            }
            None => continue,
        };
        let upload = upload.unwrap_or_else(|| JobUpload::new(why.seen_here()));
        if why != Look::Ended && upload.not_before.is_some_and(|t| t > now) {
            uploads.insert(job_id, upload);
        } else {
            due.push((job, upload));
        }
    }
    let done: Vec<(String, Option<JobUpload>)> = stream::iter(due)
        .map(|(job, upload)| async move {
            let upload = if cancel.is_cancelled() {
                Some(upload)
            } else {
                upload_job(shared, &job, upload, creds).await
            };
            (job.job_id, upload)
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .collect()
        .await;
    uploads.extend(
        done.into_iter()
            .filter_map(|(job_id, upload)| Some((job_id, upload?))),
    );
    later
}

/// What an upload does next, as its run's files say.
enum Next {
    /// The run record is gone.
    Gone,
    /// The run has neither started nor ended: nothing to send yet.
    NotStarted,
    /// Nothing new to send; the run's record.
    Nothing(RunRecord),
    /// This call; the run's record.
    Call(Call, RunRecord),
}

/// Reads the run, unless its final `record` is known already, then the step logs as far as
/// the next call needs; the first read of a started run also reads the DAG's secrets, which
/// mask the text with the `credentials`. Blocking IO.
fn read_next(
    runs: &dyn RunStore,
    job: &TrackedJob,
    record: Option<RunRecord>,
    upload: &mut JobUpload,
    credentials: &[Secret],
) -> Result<Next, WorkerError> {
    let record = match record {
        Some(record) => record,
        None => {
            let Some(attempt) = read_attempt(runs, &job.dag_name, &job.dag_run_id)? else {
                return Ok(Next::Gone);
            };
            if attempt.record.started_at.is_none() && !attempt.record.status.is_final() {
                return Ok(Next::NotStarted);
            }
            if upload.secrets.is_none() {
                let mut values = secret_values(&attempt.dag);
                values.extend(credentials.iter().map(|c| c.expose().to_owned()));
                upload.secrets = Some(Secrets::new(values));
            }
            let mut record = attempt.record;
            record.steps = with_sub_runs(runs, &record.steps);
            record
        }
    };
    Ok(match upload.next_call(&record) {
        Some(call) => Next::Call(call, record),
        None => Next::Nothing(record),
    })
}

/// `steps` followed, each, by the steps of the sub-DAG runs it started, as the hub shows them:
/// named `<step>/<child step>` ([`dispatch_dag::steps_with_sub_runs`]). A name past the
/// protocol's length (deep calls of long names) is left out.
fn with_sub_runs(runs: &dyn RunStore, steps: &[StepRecord]) -> Vec<StepRecord> {
    let mut all = dispatch_dag::steps_with_sub_runs(runs, steps);
    all.retain(|step| step.name.len() <= MAX_STEP_NAME_BYTES);
    all
}

/// Sends what is new for one job, a few calls at most. Returns the upload to keep, or `None`
/// when there is nothing to keep: it settled, or the run has not started (the executor says
/// when it does).
async fn upload_job(
    shared: &Shared,
    job: &TrackedJob,
    mut upload: JobUpload,
    creds: &MachineCredentials,
) -> Option<JobUpload> {
    let job_id = &job.job_id;
    // A final record does not change: it is read once.
    let mut final_record = None;
    for _ in 0..CALLS_PER_PASS {
        let credentials = if upload.secrets.is_none() {
            shared.credentials.credential_values()
        } else {
            Vec::new()
        };
        let runs = shared.stores.runs.clone();
        let (job, record) = (job.clone(), final_record.take());
        let read = Shared::blocking("read a run and its step logs", move || {
            let next = read_next(&*runs, &job, record, &mut upload, &credentials);
            (upload, next)
        })
        .await;
        let next = match read {
            Ok((back, next)) => {
                upload = back;
                next
            }
            Err(error) => {
                // The state went with the failed thread; the next pass asks the hub again.
                tracing::error!(job_id = %job_id, error = %error_chain(&error), "cannot read a run and its step logs");
                return Some(JobUpload::default());
            }
        };
        let (call, record) = match next {
            Ok(Next::Gone) => {
                settle(shared, job_id, "its run record is gone");
                return None;
            }
            Ok(Next::NotStarted) => return None,
            Ok(Next::Nothing(record)) => {
                if record.status.is_final() {
                    settle(shared, job_id, "complete");
                    return None;
                }
                return Some(upload);
            }
            Ok(Next::Call(call, record)) => (call, record),
            Err(error) => {
                tracing::warn!(job_id = %job_id, error = %error_chain(&error), "cannot read the run to upload");
                return Some(upload);
            }
        };
        let run_ended = record.status.is_final();
        if run_ended {
            final_record = Some(record);
        }
        let request = ProgressRequest {
            license_id: creds.license_id.clone(),
            server_id: creds.server_id.clone(),
            secret: creds.heartbeat_secret.clone(),
            run_started_ms: call.run_started_ms,
            steps: call.steps,
            logs: call.logs,
        };
        match shared.client.send_progress(job_id, &request).await {
            Ok(answer) => {
                upload.apply(&request, &answer);
                upload.backoff = None;
                upload.not_before = None;
            }
            Err(error) if matches!(error.status, Some(404 | 409)) => {
                tracing::warn!(job_id = %job_id, %error, "hub refused the job's progress; not uploading it");
                settle(shared, job_id, "refused by the hub");
                return None;
            }
            Err(error) => {
                let gave_up = failed(shared, &mut upload, job_id, run_ended, &error);
                return (!gave_up).then_some(upload);
            }
        }
    }
    Some(upload)
}

/// Notes the upload settled and lets the report loop finish the job.
fn settle(shared: &Shared, job_id: &str, why: &'static str) {
    tracing::debug!(job_id = %job_id, why, "log upload settled");
    shared.settle_upload(job_id);
}

/// Schedules the next try after a failed call, or gives up (settles the upload) once the run
/// has ended and calls kept failing; returns whether it gave up.
fn failed(
    shared: &Shared,
    upload: &mut JobUpload,
    job_id: &str,
    run_ended: bool,
    error: &CloudError,
) -> bool {
    let backoff = upload
        .backoff
        .get_or_insert_with(|| Backoff::new(shared.config.backoff_min, shared.config.backoff_max));
    let delay = backoff.next_delay(error.retry_after);
    upload.not_before = Some(Instant::now() + delay);
    if run_ended {
        upload.failures_after_end += 1;
        if upload.failures_after_end >= MAX_FAILURES_AFTER_END {
            tracing::warn!(job_id = %job_id, %error, "giving up uploading the job's logs; finishing it without them");
            settle(shared, job_id, "gave up");
            return true;
        }
    }
    tracing::debug!(job_id = %job_id, %error, retry_in = ?delay, "progress upload failed; will retry");
    false
}

/// What one call sends.
#[derive(Debug, Default)]
struct Call {
    run_started_ms: u64,
    steps: Vec<StepProgress>,
    logs: Vec<LogChunk>,
}

/// One job's upload: what the hub has acknowledged and the streams being read.
#[derive(Default)]
struct JobUpload {
    /// The hub holds none of the run's text (the run was seen in this process's executor): a
    /// stream's first chunk starts at offset 0 with its text, without asking where the hub's
    /// copy ends.
    new_to_hub: bool,
    /// The values masked in every stream; read once per job.
    secrets: Option<Secrets>,
    run_started_sent: bool,
    /// Each step's state as the hub last acknowledged it.
    sent_steps: HashMap<String, StepProgress>,
    streams: HashMap<(String, LogStream), StreamUpload>,
    /// Log bytes the hub holds for the job, all streams.
    log_bytes: u64,
    /// The hub's cap, once it has said it (else the default).
    cap: Option<u64>,
    /// The cap was reached: no log text is sent any more.
    truncated: bool,
    backoff: Option<Backoff>,
    not_before: Option<Instant>,
    failures_after_end: u32,
}

impl JobUpload {
    fn new(new_to_hub: bool) -> JobUpload {
        JobUpload {
            new_to_hub,
            ..JobUpload::default()
        }
    }

    fn cap(&self) -> u64 {
        self.cap
            .map_or(DEFAULT_JOB_LOG_CAP, |c| c.min(MAX_JOB_LOG_CAP))
    }

    /// What to send next, reading the log files as far as needed; `None` when there is
    /// nothing new. A call stays within the hub's per-call limits (what does not fit goes in
    /// the next), and the steps past the hub's per-job limit are left out. Blocking IO.
    fn next_call(&mut self, record: &RunRecord) -> Option<Call> {
        let mut call = Call::default();
        if !self.run_started_sent {
            call.run_started_ms = record.started_at.unwrap_or(0);
        }
        let steps = &record.steps[..record.steps.len().min(MAX_STEPS_PER_JOB)];
        for step in steps {
            let state = step_progress(step);
            if self.sent_steps.get(&step.name) != Some(&state) {
                call.steps.push(state);
                if call.steps.len() == MAX_STEPS_PER_CALL {
                    break;
                }
            }
        }
        let run_ended = record.status.is_final();
        let secrets = self.secrets.clone().unwrap_or_default();
        let cap = self.cap();
        let new_to_hub = self.new_to_hub;
        let mut budget = MAX_PROGRESS_DATA_BYTES;
        'steps: for step in steps {
            if step.started_at.is_none() {
                continue;
            }
            let step_ended = run_ended || step.finished_at.is_some();
            for stream in LogStream::ALL {
                let path = match stream {
                    LogStream::Stdout => &step.stdout,
                    LogStream::Stderr => &step.stderr,
                };
                if path.as_os_str().is_empty() {
                    continue;
                }
                let upload = self
                    .streams
                    .entry((step.name.clone(), stream))
                    .or_insert_with(|| StreamUpload {
                        acked: new_to_hub.then_some(0),
                        ..StreamUpload::new(path.clone(), secrets.clone())
                    });
                let chunk = |offset, data: String, eof, truncated| LogChunk {
                    step: step.name.clone(),
                    stream,
                    offset,
                    data,
                    eof,
                    truncated,
                };
                if call.logs.len() == MAX_CHUNKS_PER_CALL {
                    break 'steps;
                }
                let Some(acked) = upload.acked else {
                    // Where the hub's copy ends is not known yet (a run this process did not
                    // see, as after a restart).
                    call.logs.push(chunk(0, String::new(), false, false));
                    continue;
                };
                if upload.eof_acked || self.truncated || budget == 0 {
                    continue;
                }
                upload.fill(step_ended, budget);
                let sent_now = (MAX_PROGRESS_DATA_BYTES - budget) as u64;
                let room = cap.saturating_sub(self.log_bytes.saturating_add(sent_now));
                let available = upload.unacked();
                let over_cap = available.len() as u64 > room && room <= budget as u64;
                let limit = if over_cap { room as usize } else { budget };
                let take = floor_boundary(available, limit);
                let data = available[..take].to_owned();
                let eof = upload.ended && take == available.len();
                if data.is_empty() && !eof && !over_cap {
                    continue;
                }
                budget -= data.len();
                call.logs
                    .push(chunk(acked, data, eof && !over_cap, over_cap));
                if over_cap {
                    break 'steps;
                }
            }
        }
        let empty = call.run_started_ms == 0 && call.steps.is_empty() && call.logs.is_empty();
        (!empty).then_some(call)
    }

    /// Takes in the hub's answer to `sent`.
    fn apply(&mut self, sent: &ProgressRequest, answer: &ProgressResponse) {
        if sent.run_started_ms > 0 {
            self.run_started_sent = true;
        }
        for step in &sent.steps {
            self.sent_steps.insert(step.name.clone(), step.clone());
        }
        self.log_bytes = answer.log_bytes;
        if answer.log_cap > 0 {
            self.cap = Some(answer.log_cap);
        }
        self.truncated |= answer.truncated;
        for (chunk, ack) in sent.logs.iter().zip(&answer.logs) {
            let Some(upload) = self.streams.get_mut(&(chunk.step.clone(), chunk.stream)) else {
                continue;
            };
            if ack.accepted {
                upload.acked = Some(ack.next_offset);
                let end = chunk.offset.saturating_add(chunk.data.len() as u64);
                upload.eof_acked |= chunk.eof && ack.next_offset >= end;
                self.truncated |= chunk.truncated;
            } else {
                // A gap: the hub holds less than this chunk assumed (it lost a write, say).
                // Read the stream again from its start up to what the hub has.
                upload.restart();
                upload.acked = Some(ack.next_offset);
            }
        }
    }
}

/// A step's state as the wire has it.
fn step_progress(step: &StepRecord) -> StepProgress {
    let ended = !matches!(step.status, StepStatus::NotStarted | StepStatus::Running);
    StepProgress {
        name: step.name.clone(),
        status: step.status.as_str().to_owned(),
        exit_code: step.exit_code,
        started_ms: step.started_at.unwrap_or(0),
        // A final state carries an end time, so that the hub keeps it over a late copy of an
        // earlier one.
        finished_ms: if ended {
            step.finished_at.or(step.started_at).unwrap_or(1).max(1)
        } else {
            0
        },
    }
}

/// One step stream: how far its file was read, its text not yet acknowledged, and the hub's end.
#[derive(Debug)]
struct StreamUpload {
    path: PathBuf,
    secrets: Secrets,
    text: StreamText,
    /// Bytes of the file turned into text.
    read_pos: u64,
    /// Text bytes made so far; `pending` ends there.
    produced: u64,
    /// Text made and not yet acknowledged (it may start before `acked` until trimmed).
    pending: String,
    /// The end of the hub's copy, once known.
    acked: Option<u64>,
    /// The file was read to its end after the step ended: `pending` holds the rest.
    ended: bool,
    /// The hub has the whole stream.
    eof_acked: bool,
}

impl StreamUpload {
    fn new(path: PathBuf, secrets: Secrets) -> StreamUpload {
        StreamUpload {
            path,
            text: StreamText::new(secrets.clone()),
            secrets,
            read_pos: 0,
            produced: 0,
            pending: String::new(),
            acked: None,
            ended: false,
            eof_acked: false,
        }
    }

    fn restart(&mut self) {
        *self = StreamUpload::new(self.path.clone(), self.secrets.clone());
    }

    /// Drops the text the hub has acknowledged.
    fn trim(&mut self) {
        let start = self.produced - self.pending.len() as u64;
        let acked = self.acked.unwrap_or(0);
        if acked > start {
            let cut = floor_boundary(
                &self.pending,
                usize::try_from(acked - start).unwrap_or(usize::MAX),
            );
            self.pending.drain(..cut);
        }
    }

    /// The text after the hub's end.
    fn unacked(&self) -> &str {
        &self.pending
    }

    /// Reads the file on until `want` bytes of text past the hub's end are ready or the file
    /// ends (then, if the step has ended, the stream is complete). A file that is not there
    /// reads as empty.
    fn fill(&mut self, step_ended: bool, want: usize) {
        let mut buf = vec![0u8; READ_SIZE];
        let mut file = None;
        loop {
            self.trim();
            if self.ended || self.pending.len() >= want {
                return;
            }
            if file.is_none() {
                match std::fs::File::open(&self.path) {
                    Ok(mut opened) => {
                        if opened.seek(SeekFrom::Start(self.read_pos)).is_err() {
                            return;
                        }
                        file = Some(opened);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot read a step log to upload");
                        return;
                    }
                }
            }
            let n = match file.as_mut().map(|f| f.read(&mut buf)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read a step log to upload");
                    return;
                }
                None => 0,
            };
            if n == 0 {
                if step_ended {
                    let rest = self.text.finish();
                    self.produced += rest.len() as u64;
                    self.pending.push_str(&rest);
                    self.ended = true;
                    self.trim();
                }
                return;
            }
            self.read_pos += n as u64;
            let text = self.text.push(&buf[..n]);
            self.produced += text.len() as u64;
            self.pending.push_str(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_protocol::{LogAck, Secret};

    fn record(dir: &std::path::Path, status: dispatch_dag::RunStatus) -> RunRecord {
        RunRecord {
            dag_name: "d".into(),
            run_id: "r".into(),
            attempt_id: "a".into(),
            status,
            trigger: "webhook".into(),
            params: String::new(),
            queued_at: Some(1),
            started_at: Some(2),
            finished_at: None,
            log_file: dir.join("run.log"),
            error: None,
            steps: vec![StepRecord {
                name: "s".into(),
                status: StepStatus::Running,
                started_at: Some(3),
                stdout: dir.join("s.out"),
                stderr: dir.join("s.err"),
                ..StepRecord::default()
            }],
            pid: None,
        }
    }

    /// A hub in memory: takes the chunks as the real one does (no cap).
    fn answer(hub: &mut HashMap<(String, LogStream), String>, sent: &Call) -> ProgressResponse {
        let logs = sent
            .logs
            .iter()
            .map(|c| {
                let held = hub.entry((c.step.clone(), c.stream)).or_default();
                let accepted = c.offset <= held.len() as u64;
                if accepted {
                    let skip = held.len() - c.offset as usize;
                    if skip < c.data.len() {
                        held.push_str(&c.data[skip..]);
                    }
                }
                LogAck {
                    step: c.step.clone(),
                    stream: c.stream,
                    next_offset: held.len() as u64,
                    accepted,
                }
            })
            .collect();
        ProgressResponse {
            logs,
            log_bytes: hub.values().map(|t| t.len() as u64).sum(),
            log_cap: DEFAULT_JOB_LOG_CAP,
            truncated: false,
        }
    }

    fn request(call: Call) -> ProgressRequest {
        ProgressRequest {
            license_id: "l".into(),
            server_id: "s".into(),
            secret: Secret::new("x"),
            run_started_ms: call.run_started_ms,
            steps: call.steps,
            logs: call.logs,
        }
    }

    /// Runs calls until there is nothing new; returns how many were made.
    fn drain(
        upload: &mut JobUpload,
        rec: &RunRecord,
        hub: &mut HashMap<(String, LogStream), String>,
    ) -> usize {
        let mut calls = 0;
        while let Some(call) = upload.next_call(rec) {
            let ack = answer(hub, &call);
            upload.apply(&request(call), &ack);
            calls += 1;
            assert!(calls < 100, "no end");
        }
        calls
    }

    #[test]
    fn a_new_uploader_resumes_from_the_hubs_end_and_the_hub_gets_the_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = record(dir.path(), dispatch_dag::RunStatus::Running);
        let mut hub = HashMap::new();
        std::fs::write(dir.path().join("s.out"), "one hunter2\ntwo\n").unwrap();
        let mut first = JobUpload {
            secrets: Some(Secrets::new(["hunter2".to_owned()])),
            ..JobUpload::default()
        };
        drain(&mut first, &rec, &mut hub);
        // The process goes away; the step writes on; a new one starts from nothing.
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("s.out"))
            .unwrap();
        std::io::Write::write_all(&mut out, "three\n".as_bytes()).unwrap();
        rec.status = dispatch_dag::RunStatus::Succeeded;
        rec.steps[0].status = StepStatus::Succeeded;
        rec.steps[0].finished_at = Some(9);
        let mut second = JobUpload {
            secrets: Some(Secrets::new(["hunter2".to_owned()])),
            ..JobUpload::default()
        };
        drain(&mut second, &rec, &mut hub);
        let stdout = &hub[&("s".to_owned(), LogStream::Stdout)];
        assert_eq!(stdout, "one *******\ntwo\nthree\n");
        assert_eq!(hub[&("s".to_owned(), LogStream::Stderr)], "");
        assert!(second.streams.values().all(|s| s.eof_acked));
        assert_eq!(second.next_call(&rec).map(|c| c.logs.len()), None);
    }

    #[test]
    fn a_run_new_to_the_hub_goes_in_one_call_and_one_seen_elsewhere_is_asked_for_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = record(dir.path(), dispatch_dag::RunStatus::Succeeded);
        rec.steps[0].status = StepStatus::Succeeded;
        rec.steps[0].finished_at = Some(4);
        std::fs::write(dir.path().join("s.out"), "out\n").unwrap();
        for (new_to_hub, calls) in [(true, 1), (false, 2)] {
            let mut hub = HashMap::new();
            let mut upload = JobUpload::new(new_to_hub);
            assert_eq!(drain(&mut upload, &rec, &mut hub), calls, "{new_to_hub}");
            assert_eq!(hub[&("s".to_owned(), LogStream::Stdout)], "out\n");
            assert!(upload.streams.values().all(|s| s.eof_acked), "{new_to_hub}");
        }
    }

    #[test]
    fn every_step_status_is_a_word_of_the_protocol() {
        for status in StepStatus::ALL {
            // A new status must be added here, to `StepStatus::ALL` and to the protocol's words.
            match status {
                StepStatus::NotStarted
                | StepStatus::Running
                | StepStatus::Failed
                | StepStatus::Aborted
                | StepStatus::Succeeded
                | StepStatus::Skipped
                | StepStatus::PartiallySucceeded => {}
            }
            assert!(
                dispatch_protocol::STEP_STATUS_WORDS.contains(&status.as_str()),
                "{status}"
            );
        }
    }

    #[test]
    fn a_gap_sends_the_stream_again_from_what_the_hub_has() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(dir.path(), dispatch_dag::RunStatus::Running);
        std::fs::write(dir.path().join("s.out"), "abcdef").unwrap();
        let mut hub = HashMap::new();
        let mut upload = JobUpload::default();
        drain(&mut upload, &rec, &mut hub);
        // The hub lost the end of what it had acknowledged.
        hub.insert(("s".to_owned(), LogStream::Stdout), "abc".to_owned());
        std::fs::write(dir.path().join("s.out"), "abcdefgh").unwrap();
        drain(&mut upload, &rec, &mut hub);
        assert_eq!(hub[&("s".to_owned(), LogStream::Stdout)], "abcdefgh");
    }

    #[test]
    fn calls_keep_to_the_hubs_limits_and_steps_past_the_job_limit_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = record(dir.path(), dispatch_dag::RunStatus::Running);
        rec.steps = (0..MAX_STEPS_PER_JOB + 200)
            .map(|i| StepRecord {
                name: format!("s{i}"),
                status: StepStatus::Running,
                started_at: Some(3),
                stdout: dir.path().join(format!("{i}.out")),
                stderr: dir.path().join(format!("{i}.err")),
                ..StepRecord::default()
            })
            .collect();
        std::fs::write(dir.path().join("0.out"), "first\n").unwrap();
        let mut hub = HashMap::new();
        let mut upload = JobUpload::default();
        let mut named = HashSet::new();
        let mut calls = 0;
        while let Some(call) = upload.next_call(&rec) {
            assert!(call.steps.len() <= MAX_STEPS_PER_CALL);
            assert!(
                call.logs.len() <= MAX_CHUNKS_PER_CALL,
                "{}",
                call.logs.len()
            );
            named.extend(call.steps.iter().map(|s| s.name.clone()));
            named.extend(call.logs.iter().map(|c| c.step.clone()));
            let ack = answer(&mut hub, &call);
            upload.apply(&request(call), &ack);
            calls += 1;
            assert!(calls < 100, "no end");
        }
        // Two streams a step: the probes alone take two calls.
        assert!(calls >= 2, "{calls}");
        assert_eq!(named.len(), MAX_STEPS_PER_JOB);
        assert!(!named.contains(&format!("s{MAX_STEPS_PER_JOB}")));
        assert_eq!(hub[&("s0".to_owned(), LogStream::Stdout)], "first\n");
    }

    #[test]
    fn numbers_from_the_hub_never_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = record(dir.path(), dispatch_dag::RunStatus::Running);
        std::fs::write(dir.path().join("s.out"), "out").unwrap();
        std::fs::write(dir.path().join("s.err"), "err").unwrap();
        let mut upload = JobUpload::default();
        let probe = upload.next_call(&rec).unwrap();
        let mut ack = answer(&mut HashMap::new(), &probe);
        ack.log_bytes = u64::MAX;
        upload.apply(&request(probe), &ack);
        // The hub claims to hold more than any cap: the next call says the log is full.
        let call = upload.next_call(&rec).unwrap();
        assert!(call.logs[0].truncated && call.logs[0].data.is_empty());
        // An end offset at the top of the range, with text after it, is taken without a panic.
        let mut upload = JobUpload::default();
        let probe = upload.next_call(&rec).unwrap();
        let mut ack = answer(&mut HashMap::new(), &probe);
        for a in &mut ack.logs {
            a.next_offset = u64::MAX - 1;
        }
        upload.apply(&request(probe), &ack);
        rec.status = dispatch_dag::RunStatus::Succeeded;
        let mut call = upload.next_call(&rec).unwrap();
        call.logs[0].data = "more".into();
        upload.apply(&request(call), &ack);
    }

    #[test]
    fn past_the_cap_one_truncated_chunk_goes_and_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(dir.path(), dispatch_dag::RunStatus::Running);
        std::fs::write(dir.path().join("s.out"), "x".repeat(100)).unwrap();
        let mut hub = HashMap::new();
        let mut upload = JobUpload {
            cap: Some(40),
            ..JobUpload::default()
        };
        let probe = upload.next_call(&rec).unwrap();
        let ack = answer(&mut hub, &probe);
        upload.apply(&request(probe), &ProgressResponse { log_cap: 40, ..ack });
        let call = upload.next_call(&rec).unwrap();
        let chunk = &call.logs[0];
        assert_eq!(
            (chunk.data.len(), chunk.truncated, chunk.eof),
            (40, true, false)
        );
        let ack = answer(&mut hub, &call);
        upload.apply(&request(call), &ProgressResponse { log_cap: 40, ..ack });
        assert!(upload.truncated);
        std::fs::write(dir.path().join("s.out"), "x".repeat(200)).unwrap();
        assert!(upload.next_call(&rec).is_none(), "nothing after the cap");
    }

    /// A hub configured with a larger cap than the default gets the larger log; no answer makes
    /// the scheduler send past the largest cap a hub may have.
    #[test]
    fn the_cap_is_the_hubs_up_to_the_largest_a_hub_may_set() {
        let cap = |hub: Option<u64>| {
            JobUpload {
                cap: hub,
                ..JobUpload::default()
            }
            .cap()
        };
        assert_eq!(cap(None), DEFAULT_JOB_LOG_CAP);
        assert_eq!(cap(Some(40)), 40);
        assert_eq!(cap(Some(3 * DEFAULT_JOB_LOG_CAP)), 3 * DEFAULT_JOB_LOG_CAP);
        assert_eq!(cap(Some(u64::MAX)), MAX_JOB_LOG_CAP);
    }
}
