//! The `progress` extension's tables (`docs/protocol.md`, "Extension: progress and logs"): per
//! job, when its run started and how much log it holds (`job_progress`); its steps with their
//! state (`job_steps`); and each step stream's log text in the chunks it arrived in
//! (`log_chunks`). Rows go with their job: a trigger deletes them when retention deletes it.
//!
//! The reads here are what the hub's pages show, over any connection (the pages read through
//! their own): [`job_steps`], [`job_progress`], [`job_log`]; and [`Store::progress_changes`] to
//! be woken when a job moves on.

use std::collections::BTreeSet;

use super::sql::{args, Optional, Sql};
use dispatch_protocol::{
    LogAck, LogChunk, LogStream, ProgressResponse, StepProgress, MAX_STEPS_PER_JOB,
};
use tokio::sync::broadcast;

use super::state::JobState;
use super::Store;
use crate::error::HubError;

/// How long after its finish a job still takes progress from the server that finished it: the
/// last chunks of a run may arrive just after the finish call.
pub(crate) const FINISH_GRACE_MS: i64 = 5 * 60 * 1000;

/// A stream's newest row takes a chunk that arrives after it while both together stay within
/// this many bytes: a scheduler that sends many tiny chunks fills few rows, and appending
/// rewrites at most this much.
const ROW_BYTES: u64 = 4096;

/// A u64 from the wire as SQLite's i64; the hub's checks keep real values far below the top.
fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The tables, in SQL both backends take (PostgreSQL after [`super::schema_pg::portable`]). A
/// schema step of both runs it: change them only by a new step.
pub(super) const TABLES: &str = "
CREATE TABLE job_progress (
    job_id TEXT PRIMARY KEY,
    run_started_ms INTEGER NOT NULL DEFAULT 0,
    log_bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE job_steps (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started_ms INTEGER NOT NULL DEFAULT 0,
    finished_ms INTEGER NOT NULL DEFAULT 0,
    stdout_bytes INTEGER NOT NULL DEFAULT 0,
    stderr_bytes INTEGER NOT NULL DEFAULT 0,
    stdout_complete INTEGER NOT NULL DEFAULT 0,
    stderr_complete INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;
CREATE TABLE log_chunks (
    job_id TEXT NOT NULL,
    step TEXT NOT NULL,
    stream TEXT NOT NULL,
    end_offset INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, step, stream, end_offset)
) WITHOUT ROWID;
";

/// Creates the tables (a schema step), and the trigger that drops a job's progress with it.
pub(super) fn create_tables(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(TABLES)?;
    conn.execute_batch(
        "
CREATE TRIGGER jobs_progress_gone AFTER DELETE ON jobs BEGIN
    DELETE FROM job_progress WHERE job_id = old.id;
    DELETE FROM job_steps WHERE job_id = old.id;
    DELETE FROM log_chunks WHERE job_id = old.id;
END;
",
    )
}

/// One step of a job as the scheduler last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    /// The step's name.
    pub name: String,
    /// Its place in the DAG's order of steps (0 first), as first reported.
    pub position: i64,
    /// Its status word (`not_started`, `running`, `failed`, `aborted`, `succeeded`,
    /// `skipped`).
    pub status: String,
    /// Its process's exit code, once it has one.
    pub exit_code: Option<i32>,
    /// When it started, ms since the Unix epoch; 0 when it has not.
    pub started_ms: i64,
    /// When it ended, ms since the Unix epoch; 0 while it has not.
    pub finished_ms: i64,
    /// Bytes of stdout text the hub holds.
    pub stdout_bytes: u64,
    /// Bytes of stderr text the hub holds.
    pub stderr_bytes: u64,
    /// The scheduler said stdout is complete (the step ended and all of it was sent).
    pub stdout_complete: bool,
    /// The same for stderr.
    pub stderr_complete: bool,
}

impl StepRow {
    /// Bytes the hub holds of `stream`.
    pub fn log_bytes(&self, stream: LogStream) -> u64 {
        match stream {
            LogStream::Stdout => self.stdout_bytes,
            LogStream::Stderr => self.stderr_bytes,
        }
    }

    /// Whether `stream` is complete.
    pub fn log_complete(&self, stream: LogStream) -> bool {
        match stream {
            LogStream::Stdout => self.stdout_complete,
            LogStream::Stderr => self.stderr_complete,
        }
    }
}

/// Where a job's run stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress {
    /// When the run started on the scheduler, ms since the Unix epoch; 0 when not reported.
    pub run_started_ms: i64,
    /// Log bytes the hub holds for the job, every step and stream.
    pub log_bytes: u64,
    /// The log was cut at the cap: what the hub holds is all it will hold.
    pub truncated: bool,
    /// When progress last arrived, ms since the Unix epoch.
    pub updated_ms: i64,
}

/// A piece of one step stream's log, as the store's `job_log` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSlice {
    /// The text from the offset asked for (or the next character boundary after it), at most
    /// the bytes asked for, cut at a character boundary.
    pub text: String,
    /// The offset after `text`: ask from there for what follows.
    pub next_offset: u64,
    /// The job's log was cut at the cap; nothing more will come for any stream.
    pub truncated: bool,
    /// The stream is complete and `text` reaches its end: nothing more will come for it.
    pub complete: bool,
}

/// Wakes whoever watches a job when its progress, accept or finish is stored. Lossy by design:
/// a watcher that fell behind is woken once and reads the store again.
pub(super) struct Watch(broadcast::Sender<String>);

impl Default for Watch {
    fn default() -> Self {
        Watch(broadcast::channel(1024).0)
    }
}

impl Watch {
    /// Tells the watchers of `job_id` (none is fine).
    pub(super) fn changed(&self, job_id: &str) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(job_id.to_owned());
        }
    }
}

/// A watch on one job, from the store's `progress_changes`.
pub struct ProgressChanges {
    job_id: String,
    receiver: broadcast::Receiver<String>,
}

impl ProgressChanges {
    /// Returns once something about the job was stored after the watch began or since the
    /// last return (progress, a log chunk, the accept, the finish); then read the store again.
    /// Never returns if the store is gone.
    pub async fn changed(&mut self) {
        loop {
            match self.receiver.recv().await {
                Ok(id) if id == self.job_id => return,
                Ok(_) => {}
                // Missed some: one of them may have been ours.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

/// Why the job refuses progress from this caller, if it does: it takes progress only from the
/// server holding its current claim or accept, and from the server that finished it for
/// [`FINISH_GRACE_MS`] after the finish. A job queued again after its lease ran out is held by
/// nobody, though it still names its last claimant.
fn refusal(
    tx: &dyn Sql,
    job_id: &str,
    license_id: &str,
    server_id: &str,
    now_ms: i64,
) -> Result<Option<Recorded>, HubError> {
    let row: Option<(String, String, String, String, i64)> = tx
        .query_row(
            "SELECT target_license, claimed_license, claimed_by, state, updated_ms
             FROM jobs WHERE id = ?1",
            args![job_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(HubError::store("look up a job for its progress"))?;
    let Some((target, license, server, state, updated_ms)) = row else {
        return Ok(Some(Recorded::NotFound));
    };
    if !target.is_empty() && target != license_id {
        return Ok(Some(Recorded::NotFound));
    }
    if license != license_id || server != server_id {
        return Ok(Some(Recorded::Conflict(format!(
            "job `{job_id}` is not claimed by this server"
        ))));
    }
    let held = match state.parse::<JobState>() {
        Ok(JobState::Claimed | JobState::Accepted) => true,
        Ok(JobState::Finished) => now_ms.saturating_sub(updated_ms) <= FINISH_GRACE_MS,
        Ok(JobState::Queued) | Err(_) => false,
    };
    Ok((!held).then(|| {
        Recorded::Conflict(format!(
            "job `{job_id}` is not held by this server now ({state})"
        ))
    }))
}

/// Before the job at `seq` is claimed by another license or server than the one that claimed
/// it last: the progress that one sent goes, so that one server's steps and text never mix with
/// another's.
pub(super) fn forget_progress(tx: &dyn Sql, seq: i64) -> Result<(), HubError> {
    for table in ["job_progress", "job_steps", "log_chunks"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE job_id = (SELECT id FROM jobs WHERE seq = ?1)"),
            args![seq],
        )
        .map_err(HubError::store(
            "clear a job's progress for its new claimant",
        ))?;
    }
    Ok(())
}

/// Why the call is refused as a whole, if it is: it would give the job more than
/// [`MAX_STEPS_PER_JOB`] steps.
fn too_many_steps(
    tx: &dyn Sql,
    job_id: &str,
    progress: &Progress,
) -> Result<Option<Recorded>, HubError> {
    let names: BTreeSet<&str> = progress
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .chain(progress.logs.iter().map(|c| c.step.as_str()))
        .collect();
    let held: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM job_steps WHERE job_id = ?1",
            args![job_id],
            |r| r.get(0),
        )
        .map_err(HubError::store("count a job's steps"))?;
    let mut known = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM job_steps WHERE job_id = ?1 AND name = ?2)")
        .map_err(HubError::store("look up a step"))?;
    let mut new = 0;
    for name in names {
        let exists: bool = known
            .query_row(args![job_id, name], |r| r.get(0))
            .map_err(HubError::store("look up a step"))?;
        new += usize::from(!exists);
    }
    let total = usize::try_from(held)
        .unwrap_or(usize::MAX)
        .saturating_add(new);
    Ok((total > MAX_STEPS_PER_JOB).then(|| {
        Recorded::Refused(format!(
            "job `{job_id}` would have {total} steps; the hub keeps at most {MAX_STEPS_PER_JOB}"
        ))
    }))
}

/// The largest character boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn stream_columns(stream: LogStream) -> (&'static str, &'static str) {
    match stream {
        LogStream::Stdout => ("stdout_bytes", "stdout_complete"),
        LogStream::Stderr => ("stderr_bytes", "stderr_complete"),
    }
}

/// A step row for `name`, made if the job has none yet (a chunk that came before its step).
fn ensure_step(tx: &dyn Sql, job_id: &str, name: &str) -> Result<(), HubError> {
    tx.execute(
        "INSERT INTO job_steps (job_id, name, position, status)
         VALUES (?1, ?2, (SELECT COUNT(*) FROM job_steps WHERE job_id = ?1), 'running')
         ON CONFLICT DO NOTHING",
        args![job_id, name],
    )
    .map_err(HubError::store("add a step"))?;
    Ok(())
}

fn save_step(tx: &dyn Sql, job_id: &str, step: &StepProgress) -> Result<(), HubError> {
    ensure_step(tx, job_id, &step.name)?;
    // A final state stays: neither a late copy of an earlier state nor another final state
    // replaces it.
    tx.execute(
        "UPDATE job_steps SET status = ?3, exit_code = COALESCE(?4, exit_code),
                started_ms = CASE WHEN CAST(?5 AS BIGINT) > 0 THEN ?5 ELSE started_ms END, finished_ms = ?6
         WHERE job_id = ?1 AND name = ?2 AND status IN ('not_started', 'running')",
        args![
            job_id,
            step.name,
            step.status,
            step.exit_code,
            as_i64(step.started_ms),
            as_i64(step.finished_ms)
        ],
    )
    .map_err(HubError::store("update a step"))?;
    Ok(())
}

/// Stores what `chunk` adds; returns its acknowledgement. `room` is what the cap still allows
/// and shrinks by what was stored; `truncated` is set when the chunk hit the cap or says so.
fn save_chunk(
    tx: &dyn Sql,
    job_id: &str,
    chunk: &LogChunk,
    room: &mut u64,
    truncated: &mut bool,
) -> Result<LogAck, HubError> {
    ensure_step(tx, job_id, &chunk.step)?;
    let (bytes_col, complete_col) = stream_columns(chunk.stream);
    let held: i64 = tx
        .query_row(
            &format!("SELECT {bytes_col} FROM job_steps WHERE job_id = ?1 AND name = ?2"),
            args![job_id, chunk.step],
            |r| r.get(0),
        )
        .map_err(HubError::store("read a step's log length"))?;
    let held = held as u64;
    let ack = |next_offset, accepted| LogAck {
        step: chunk.step.clone(),
        stream: chunk.stream,
        next_offset,
        accepted,
    };
    if chunk.offset > held {
        return Ok(ack(held, false));
    }
    let skip = usize::try_from(held - chunk.offset).unwrap_or(usize::MAX);
    if skip < chunk.data.len() && !chunk.data.is_char_boundary(skip) {
        // Not the text the hub has: the same stream cut differently would not split here.
        return Ok(ack(held, false));
    }
    // The part the hub already holds must be the same text: a chunk that differs is not a copy
    // of what was sent before, and is refused rather than taken as stored.
    let overlap = skip.min(chunk.data.len());
    if overlap > 0 {
        let stored = job_log(tx, job_id, &chunk.step, chunk.stream, chunk.offset, overlap)?;
        if stored.text.as_bytes() != &chunk.data.as_bytes()[..overlap] {
            return Ok(ack(held, false));
        }
    }
    let mut end = held;
    if skip < chunk.data.len() && !*truncated {
        let new = &chunk.data[skip..];
        let fits = floor_boundary(new, usize::try_from(*room).unwrap_or(usize::MAX));
        let stored = &new[..fits];
        if fits < new.len() {
            *truncated = true;
        }
        if !stored.is_empty() {
            end = held + stored.len() as u64;
            append_text(tx, job_id, chunk, held, stored)?;
            *room -= stored.len() as u64;
        }
    }
    let sent_end = chunk.offset.saturating_add(chunk.data.len() as u64);
    let complete = chunk.eof && end == sent_end;
    tx.execute(
        &format!(
            "UPDATE job_steps SET {bytes_col} = ?3, {complete_col} = CASE WHEN ?4 = 1 THEN 1 ELSE {complete_col} END
             WHERE job_id = ?1 AND name = ?2"
        ),
        args![job_id, chunk.step, end as i64, complete],
    )
    .map_err(HubError::store("update a step's log length"))?;
    *truncated |= chunk.truncated;
    Ok(ack(end, true))
}

/// Stores `text` of `chunk`'s stream at `held` (where the stream ends): appended to the
/// stream's newest row while that stays within [`ROW_BYTES`], else as a row of its own.
fn append_text(
    tx: &dyn Sql,
    job_id: &str,
    chunk: &LogChunk,
    held: u64,
    text: &str,
) -> Result<(), HubError> {
    let end = as_i64(held + text.len() as u64);
    let last: Option<i64> = tx
        .query_row(
            "SELECT end_offset - start_offset FROM log_chunks
             WHERE job_id = ?1 AND step = ?2 AND stream = ?3 AND end_offset = ?4",
            args![job_id, chunk.step, chunk.stream.as_str(), as_i64(held)],
            |r| r.get(0),
        )
        .optional()
        .map_err(HubError::store("read a stream's last log row"))?;
    let fits = last.is_some_and(|len| (len as u64).saturating_add(text.len() as u64) <= ROW_BYTES);
    if fits {
        tx.execute(
            "UPDATE log_chunks SET data = data || ?5, end_offset = ?6
             WHERE job_id = ?1 AND step = ?2 AND stream = ?3 AND end_offset = ?4",
            args![
                job_id,
                chunk.step,
                chunk.stream.as_str(),
                as_i64(held),
                text,
                end
            ],
        )
        .map_err(HubError::store("append to a log chunk"))?;
    } else {
        tx.execute(
            "INSERT INTO log_chunks (job_id, step, stream, end_offset, start_offset, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![
                job_id,
                chunk.step,
                chunk.stream.as_str(),
                end,
                as_i64(held),
                text
            ],
        )
        .map_err(HubError::store("store a log chunk"))?;
    }
    Ok(())
}

/// What [`Store::record_progress`] came to.
pub(crate) enum Recorded {
    /// Stored; the answer for the scheduler.
    Stored(ProgressResponse),
    /// Nothing stored: no such job, or it is bound to another license.
    NotFound,
    /// Nothing stored: another server holds the job, or nobody does; the reason is safe to show.
    Conflict(String),
    /// Nothing stored: the call would break a limit of the job's rows; the reason is safe to
    /// show.
    Refused(String),
}

/// A progress call's content, as [`Store::record_progress`] takes it.
pub(crate) struct Progress {
    pub license_id: String,
    pub server_id: String,
    pub run_started_ms: u64,
    pub steps: Vec<StepProgress>,
    pub logs: Vec<LogChunk>,
}

fn record(
    tx: &dyn Sql,
    job_id: &str,
    progress: &Progress,
    cap: u64,
    now_ms: i64,
) -> Result<Recorded, HubError> {
    if let Some(refused) = refusal(
        tx,
        job_id,
        &progress.license_id,
        &progress.server_id,
        now_ms,
    )? {
        return Ok(refused);
    }
    if let Some(refused) = too_many_steps(tx, job_id, progress)? {
        return Ok(refused);
    }
    tx.execute(
        "INSERT INTO job_progress (job_id, updated_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        args![job_id, now_ms],
    )
    .map_err(HubError::store("add a job's progress"))?;
    let (log_bytes, truncated): (i64, bool) = tx
        .query_row(
            "SELECT log_bytes, truncated FROM job_progress WHERE job_id = ?1",
            args![job_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(HubError::store("read a job's progress"))?;
    for step in &progress.steps {
        save_step(tx, job_id, step)?;
    }
    let mut room = cap.saturating_sub(log_bytes as u64);
    let mut truncated = truncated;
    let mut logs = Vec::with_capacity(progress.logs.len());
    for chunk in &progress.logs {
        logs.push(save_chunk(tx, job_id, chunk, &mut room, &mut truncated)?);
    }
    let log_bytes = cap.saturating_sub(room).max(log_bytes as u64);
    tx.execute(
        "UPDATE job_progress SET run_started_ms = CASE WHEN CAST(?2 AS BIGINT) > 0 THEN ?2 ELSE run_started_ms END,
                log_bytes = ?3, truncated = ?4, updated_ms = ?5
         WHERE job_id = ?1",
        args![
            job_id,
            as_i64(progress.run_started_ms),
            as_i64(log_bytes),
            truncated,
            now_ms
        ],
    )
    .map_err(HubError::store("update a job's progress"))?;
    Ok(Recorded::Stored(ProgressResponse {
        logs,
        log_bytes,
        log_cap: cap,
        truncated,
    }))
}

impl Store {
    /// Stores a progress call of the job's owner (steps, then chunks in order; the job's log is
    /// cut at `cap` bytes) and wakes the job's watchers.
    pub(crate) fn record_progress(
        &self,
        job_id: &str,
        progress: Progress,
        cap: u64,
        now_ms: i64,
    ) -> Result<Recorded, HubError> {
        let id = job_id.to_owned();
        let recorded = self.write(move |tx| record(tx, &id, &progress, cap, now_ms))?;
        if matches!(recorded, Recorded::Stored(_)) {
            self.progress.changed(job_id);
        }
        Ok(recorded)
    }

    /// A watch on `job_id`: its [`ProgressChanges::changed`] returns when progress, a log
    /// chunk, the accept or the finish of the job is stored. Cheap; drop it when done.
    pub fn progress_changes(&self, job_id: &str) -> ProgressChanges {
        ProgressChanges {
            job_id: job_id.to_owned(),
            receiver: self.progress.0.subscribe(),
        }
    }
}

/// The steps of `job_id` as its scheduler last reported them, in the DAG's order; empty
/// when none were reported (no such job, a scheduler without the extension, not started).
/// Over any connection: the pages read through their own.
pub(crate) fn job_steps(conn: &dyn Sql, job_id: &str) -> Result<Vec<StepRow>, HubError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, position, status, exit_code, started_ms, finished_ms, stdout_bytes,
                        stderr_bytes, stdout_complete, stderr_complete
                 FROM job_steps WHERE job_id = ?1 ORDER BY position, name",
        )
        .map_err(HubError::store("read a job's steps"))?;
    let rows = stmt
        .query_map(args![job_id], |r| {
            Ok(StepRow {
                name: r.get(0)?,
                position: r.get(1)?,
                status: r.get(2)?,
                exit_code: r.get(3)?,
                started_ms: r.get(4)?,
                finished_ms: r.get(5)?,
                stdout_bytes: r.get::<i64>(6)? as u64,
                stderr_bytes: r.get::<i64>(7)? as u64,
                stdout_complete: r.get(8)?,
                stderr_complete: r.get(9)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(HubError::store("read a job's steps"))?;
    Ok(rows)
}

/// When `job_id`'s run started, how much log the hub holds for it and whether it was cut at
/// the cap; `None` when its scheduler sent no progress (yet, or without the extension).
pub(crate) fn job_progress(conn: &dyn Sql, job_id: &str) -> Result<Option<JobProgress>, HubError> {
    conn.query_row(
        "SELECT run_started_ms, log_bytes, truncated, updated_ms
                 FROM job_progress WHERE job_id = ?1",
        args![job_id],
        |r| {
            Ok(JobProgress {
                run_started_ms: r.get(0)?,
                log_bytes: r.get::<i64>(1)? as u64,
                truncated: r.get(2)?,
                updated_ms: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(HubError::store("read a job's progress"))
}

/// Up to `max_bytes` of the log text of `step`'s `stream` from `from_offset`. An unknown
/// job, step or offset past the end reads as empty text with `next_offset` where the stream
/// ends (or `from_offset`, if larger). For a live tail: read until `text` is empty, wait
/// for [`Store::progress_changes`], read again from `next_offset`; stop once `complete` or
/// `truncated`.
pub(crate) fn job_log(
    conn: &dyn Sql,
    job_id: &str,
    step: &str,
    stream: LogStream,
    from_offset: u64,
    max_bytes: usize,
) -> Result<LogSlice, HubError> {
    let (bytes_col, complete_col) = stream_columns(stream);
    let state: Option<(i64, bool)> = conn
        .query_row(
            &format!(
                "SELECT {bytes_col}, {complete_col} FROM job_steps
                     WHERE job_id = ?1 AND name = ?2"
            ),
            args![job_id, step],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(HubError::store("read a step's log length"))?;
    let truncated = conn
        .query_row(
            "SELECT truncated FROM job_progress WHERE job_id = ?1",
            args![job_id],
            |r| r.get::<bool>(0),
        )
        .optional()
        .map_err(HubError::store("read a job's progress"))?
        .unwrap_or(false);
    let (held, stream_complete) = state.map_or((0, false), |(b, c)| (b as u64, c));
    let mut slice = LogSlice {
        text: String::new(),
        next_offset: from_offset.max(held),
        truncated,
        complete: false,
    };
    if from_offset < held {
        let mut stmt = conn
            .prepare_cached(
                "SELECT start_offset, data FROM log_chunks
                     WHERE job_id = ?1 AND step = ?2 AND stream = ?3 AND end_offset > ?4
                     ORDER BY end_offset",
            )
            .map_err(HubError::store("read a step's log"))?;
        let mut rows = stmt
            .query(args![job_id, step, stream.as_str(), as_i64(from_offset)])
            .map_err(HubError::store("read a step's log"))?;
        let mut at = from_offset;
        while let Some(row) = rows.next().map_err(HubError::store("read a step's log"))? {
            let start: i64 = row.get(0).map_err(HubError::store("read a step's log"))?;
            let data: String = row.get(1).map_err(HubError::store("read a step's log"))?;
            let mut skip = (at.saturating_sub(start as u64) as usize).min(data.len());
            while !data.is_char_boundary(skip) {
                skip += 1;
            }
            let rest = &data[skip..];
            let room = max_bytes - slice.text.len();
            let take = floor_boundary(rest, room);
            slice.text.push_str(&rest[..take]);
            at = start as u64 + (skip + take) as u64;
            if take < rest.len() {
                break;
            }
        }
        slice.next_offset = at;
    }
    slice.complete = stream_complete && slice.next_offset >= held;
    Ok(slice)
}

#[cfg(test)]
mod tests {

    use super::*;

    const CAP: u64 = 1000;

    /// A store with job `j` claimed by server `srv` of license `lic`.
    fn store_with_claimed_job() -> (crate::store::testing::Held, Store) {
        let (held, store) = crate::store::testing::test_store();
        crate::store::testing::add(&store, "d1", &[crate::store::testing::new_job("j", "")]);
        store.claim_next("lic", "srv", 1, 60_000).unwrap().unwrap();
        (held, store)
    }

    fn progress(steps: Vec<StepProgress>, logs: Vec<LogChunk>) -> Progress {
        Progress {
            license_id: "lic".into(),
            server_id: "srv".into(),
            run_started_ms: 0,
            steps,
            logs,
        }
    }

    fn chunk(step: &str, offset: u64, data: &str) -> LogChunk {
        LogChunk {
            step: step.into(),
            stream: LogStream::Stdout,
            offset,
            data: data.into(),
            eof: false,
            truncated: false,
        }
    }

    fn send(store: &Store, p: Progress) -> ProgressResponse {
        match store.record_progress("j", p, CAP, 5).unwrap() {
            Recorded::Stored(answer) => answer,
            _ => panic!("refused"),
        }
    }

    fn whole_log(store: &Store, step: &str) -> LogSlice {
        store
            .db(|db| job_log(db, "j", step, LogStream::Stdout, 0, usize::MAX))
            .unwrap()
    }

    #[test]
    fn chunks_are_idempotent_by_offset_and_a_gap_names_the_expected_offset() {
        let (_d, s) = store_with_claimed_job();
        let a = send(&s, progress(vec![], vec![chunk("build", 0, "hello ")]));
        assert_eq!((a.logs[0].next_offset, a.logs[0].accepted), (6, true));
        // The same chunk again, and one overlapping what the hub has.
        send(&s, progress(vec![], vec![chunk("build", 0, "hello ")]));
        let b = send(&s, progress(vec![], vec![chunk("build", 3, "lo world")]));
        assert_eq!(b.logs[0].next_offset, 11);
        let gap = send(&s, progress(vec![], vec![chunk("build", 20, "later")]));
        assert_eq!((gap.logs[0].next_offset, gap.logs[0].accepted), (11, false));
        // An empty chunk at 0 only asks where the stream ends.
        let probe = send(&s, progress(vec![], vec![chunk("build", 0, "")]));
        assert_eq!(probe.logs[0].next_offset, 11);
        assert_eq!(whole_log(&s, "build").text, "hello world");
        assert_eq!(probe.log_bytes, 11);
    }

    #[test]
    fn reads_are_cut_at_character_boundaries_and_say_when_a_stream_is_complete() {
        let (_d, s) = store_with_claimed_job();
        let mut last = chunk("build", 5, "é!\n");
        last.eof = true;
        send(&s, progress(vec![], vec![chunk("build", 0, "abcde"), last]));
        let first = s
            .db(|db| job_log(db, "j", "build", LogStream::Stdout, 0, 6))
            .unwrap();
        assert_eq!((first.text.as_str(), first.next_offset), ("abcde", 5));
        assert!(!first.complete);
        let rest = s
            .db(|db| job_log(db, "j", "build", LogStream::Stdout, first.next_offset, 100))
            .unwrap();
        assert_eq!((rest.text.as_str(), rest.next_offset), ("é!\n", 9));
        assert!(rest.complete && !rest.truncated);
        let none = s
            .db(|db| job_log(db, "j", "other", LogStream::Stderr, 0, 100))
            .unwrap();
        assert_eq!(none, LogSlice::default());
    }

    #[test]
    fn the_cap_cuts_the_log_and_nothing_is_stored_after_it() {
        let (_d, s) = store_with_claimed_job();
        let big = "x".repeat(CAP as usize - 10);
        send(&s, progress(vec![], vec![chunk("a", 0, &big)]));
        let answer = send(
            &s,
            progress(vec![], vec![chunk("b", 0, "0123456789ABCDEF")]),
        );
        assert!(answer.truncated);
        assert_eq!((answer.log_bytes, answer.logs[0].next_offset), (CAP, 10));
        let more = send(&s, progress(vec![], vec![chunk("b", 10, "more")]));
        assert_eq!(more.logs[0].next_offset, 10);
        let log = whole_log(&s, "b");
        assert_eq!(log.text, "0123456789");
        assert!(log.truncated);
        assert!(s.db(|db| job_progress(db, "j")).unwrap().unwrap().truncated);
    }

    #[test]
    fn steps_keep_their_order_and_a_final_state_is_not_overtaken() {
        let (_d, s) = store_with_claimed_job();
        let step = |name: &str, status: &str, finished_ms: u64| StepProgress {
            name: name.into(),
            status: status.into(),
            exit_code: (finished_ms > 0).then_some(0),
            started_ms: 2,
            finished_ms,
        };
        let mut p = progress(
            vec![step("build", "running", 0), step("test", "not_started", 0)],
            vec![],
        );
        p.run_started_ms = 1;
        send(&s, p);
        send(&s, progress(vec![step("build", "succeeded", 3)], vec![]));
        send(&s, progress(vec![step("build", "running", 0)], vec![]));
        let steps = s.db(|db| job_steps(db, "j")).unwrap();
        let got: Vec<_> = steps
            .iter()
            .map(|r| (r.name.as_str(), r.status.as_str(), r.finished_ms))
            .collect();
        assert_eq!(got, [("build", "succeeded", 3), ("test", "not_started", 0)]);
        assert_eq!(steps[0].exit_code, Some(0));
        assert_eq!(
            s.db(|db| job_progress(db, "j"))
                .unwrap()
                .unwrap()
                .run_started_ms,
            1
        );
    }

    #[test]
    fn only_the_server_holding_the_job_may_send_and_rows_go_with_the_job() {
        let (_held, s) = store_with_claimed_job();
        let mut other = progress(vec![], vec![chunk("a", 0, "x")]);
        other.server_id = "other".into();
        assert!(matches!(
            s.record_progress("j", other, CAP, 5).unwrap(),
            Recorded::Conflict(_)
        ));
        assert!(matches!(
            s.record_progress("nope", progress(vec![], vec![]), CAP, 5)
                .unwrap(),
            Recorded::NotFound
        ));
        send(&s, progress(vec![], vec![chunk("a", 0, "x")]));
        edit(&s, "DELETE FROM jobs WHERE id = 'j'");
        assert!(s.db(|db| job_steps(db, "j")).unwrap().is_empty());
        assert_eq!(s.db(|db| job_progress(db, "j")).unwrap(), None);
        assert_eq!(count(&s, "log_chunks"), 0);
    }

    /// Runs `sql` through the store's writer, as an edit by hand would change the rows.
    fn edit(s: &Store, sql: &'static str) {
        s.write(move |db| {
            db.execute_batch(sql)
                .map_err(crate::error::HubError::store("edit by hand"))
        })
        .unwrap();
    }

    fn count(s: &Store, table: &str) -> i64 {
        s.db(|db| {
            db.query_row(&format!("SELECT COUNT(*) FROM {table}"), args![], |r| {
                r.get(0)
            })
        })
        .unwrap()
    }

    #[test]
    fn a_job_takes_at_most_its_step_limit_and_tiny_chunks_share_rows() {
        let (_d, s) = store_with_claimed_job();
        let step = |i: usize| StepProgress {
            name: format!("s{i}"),
            status: "not_started".into(),
            ..StepProgress::default()
        };
        send(
            &s,
            progress((0..MAX_STEPS_PER_JOB).map(step).collect(), vec![]),
        );
        // One more step, named by a step state or by a chunk, is refused as a whole.
        let one_more = progress(vec![step(0), step(MAX_STEPS_PER_JOB)], vec![]);
        let chunk_of_new = progress(vec![], vec![chunk("new", 0, "x")]);
        for p in [one_more, chunk_of_new] {
            match s.record_progress("j", p, CAP, 5).unwrap() {
                Recorded::Refused(why) => assert!(why.contains("at most 1000"), "{why}"),
                _ => panic!("a step past the limit was taken"),
            }
        }
        assert_eq!(count(&s, "job_steps"), MAX_STEPS_PER_JOB as i64);
        // Known steps still move on.
        send(&s, progress(vec![], vec![chunk("s1", 0, "x")]));
        // A thousand one-byte chunks fill one row, not a thousand.
        let tiny: Vec<_> = (1..1000).map(|i| chunk("s1", i, "y")).collect();
        let answer = send(&s, progress(vec![], tiny));
        assert!(answer.logs.iter().all(|a| a.accepted));
        assert_eq!(count(&s, "log_chunks"), 1);
        assert_eq!(whole_log(&s, "s1").text, format!("x{}", "y".repeat(999)));
        // Past a row's size the next chunk starts a row of its own, and reads cross rows.
        let big = "z".repeat(ROW_BYTES as usize);
        for (offset, text) in [(1000, big.as_str()), (1000 + ROW_BYTES, "!")] {
            let p = progress(vec![], vec![chunk("s1", offset, text)]);
            s.record_progress("j", p, 1 << 20, 5).unwrap();
        }
        assert_eq!(count(&s, "log_chunks"), 3);
        let log = whole_log(&s, "s1").text;
        assert_eq!(
            (log.len(), log.ends_with("z!")),
            (1001 + ROW_BYTES as usize, true)
        );
    }

    #[test]
    fn a_chunk_that_differs_from_the_text_held_is_refused() {
        let (_d, s) = store_with_claimed_job();
        send(&s, progress(vec![], vec![chunk("build", 0, "hello ")]));
        let other = send(&s, progress(vec![], vec![chunk("build", 0, "HELLO world")]));
        assert_eq!(
            (other.logs[0].next_offset, other.logs[0].accepted),
            (6, false)
        );
        let overlap = send(&s, progress(vec![], vec![chunk("build", 4, "oX world")]));
        assert!(!overlap.logs[0].accepted);
        let same = send(&s, progress(vec![], vec![chunk("build", 4, "o world")]));
        assert_eq!(
            (same.logs[0].next_offset, same.logs[0].accepted),
            (11, true)
        );
        assert_eq!(whole_log(&s, "build").text, "hello world");
    }

    #[test]
    fn a_final_step_state_is_never_replaced() {
        let (_d, s) = store_with_claimed_job();
        let step = |status: &str, exit_code| StepProgress {
            name: "build".into(),
            status: status.into(),
            exit_code,
            started_ms: 2,
            finished_ms: 3,
        };
        send(&s, progress(vec![step("failed", Some(1))], vec![]));
        send(&s, progress(vec![step("succeeded", Some(0))], vec![]));
        let steps = s.db(|db| job_steps(db, "j")).unwrap();
        assert_eq!(
            (steps[0].status.as_str(), steps[0].exit_code),
            ("failed", Some(1))
        );
    }

    #[test]
    fn progress_is_taken_only_while_the_server_holds_the_job_and_shortly_after_its_finish() {
        let (_held, s) = store_with_claimed_job();
        send(&s, progress(vec![], vec![chunk("a", 0, "x")]));
        // Its lease ran out and it is queued again: it still names srv, but nobody holds it.
        edit(&s, "UPDATE jobs SET state = 'queued' WHERE id = 'j'");
        let queued = s.record_progress("j", progress(vec![], vec![]), CAP, 5);
        assert!(matches!(queued.unwrap(), Recorded::Conflict(_)));
        edit(
            &s,
            "UPDATE jobs SET state = 'finished', updated_ms = 10 WHERE id = 'j'",
        );
        let late = |now| s.record_progress("j", progress(vec![], vec![]), CAP, now);
        assert!(matches!(
            late(10 + FINISH_GRACE_MS).unwrap(),
            Recorded::Stored(_)
        ));
        assert!(matches!(
            late(11 + FINISH_GRACE_MS).unwrap(),
            Recorded::Conflict(_)
        ));
    }

    #[test]
    fn another_servers_claim_clears_the_progress_of_the_one_before() {
        let (_held, s) = store_with_claimed_job();
        send(&s, progress(vec![], vec![chunk("a", 0, "old text")]));
        // The same server claiming again keeps what it sent.
        edit(&s, "UPDATE jobs SET state = 'queued' WHERE id = 'j'");
        s.claim_next("lic", "srv", 2, 60_000).unwrap().unwrap();
        assert_eq!(whole_log(&s, "a").text, "old text");
        edit(&s, "UPDATE jobs SET state = 'queued' WHERE id = 'j'");
        s.claim_next("lic", "srv-2", 3, 60_000).unwrap().unwrap();
        for table in ["job_progress", "job_steps", "log_chunks"] {
            assert_eq!(count(&s, table), 0, "{table}");
        }
        let mut mine = progress(vec![], vec![chunk("a", 0, "new")]);
        mine.server_id = "srv-2".into();
        assert!(matches!(
            s.record_progress("j", mine, CAP, 5).unwrap(),
            Recorded::Stored(_)
        ));
        assert_eq!(whole_log(&s, "a").text, "new");
        // The one before cannot send any more.
        let old = s.record_progress("j", progress(vec![], vec![chunk("a", 3, "!")]), CAP, 5);
        assert!(matches!(old.unwrap(), Recorded::Conflict(_)));
    }

    /// The store is called outside the runtime, as the hub calls it from blocking threads.
    #[test]
    fn a_watch_wakes_for_its_job_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (_d, s) = store_with_claimed_job();
        let mut watch = s.progress_changes("j");
        let mut woken = || {
            let changed = watch.changed();
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(60), changed).await
            })
            .unwrap();
        };
        s.progress.changed("another");
        send(&s, progress(vec![], vec![chunk("a", 0, "x")]));
        woken();
        let caller = crate::store::Caller {
            license_id: "lic",
            server_id: "srv",
        };
        s.accept("j", caller, "j", 6).unwrap();
        woken();
    }
}
