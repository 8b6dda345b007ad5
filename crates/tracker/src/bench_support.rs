//! Measurement behind `cargo bench -p dispatch-tracker` and `cargo xtask bench` (the numbers are in
//! the README's Benchmarks section). Compiled only with the `test-hooks` feature, which the bench
//! target gets through the crate's dev-dependency on itself.
//!
//! Compares the cost of one upsert + delete pair on this tracker against the design it replaces
//! (Dagu's: one JSON file of all jobs, rewritten and fsynced on every change) at several numbers of
//! tracked jobs, in the same run.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::io_err;
use crate::file::write_snapshot;
use crate::{Phase, TrackedJob, Tracker, TrackerConfig, TrackerError};

/// Rounds the tracker measurement is split into (see [`run`]).
const ROUNDS: usize = 10;

/// One number, shaped for `[{name, value, unit}]` JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was measured, e.g. `tracker/upsert+delete/n=10`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. `us` or `x`.
    pub unit: String,
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Numbers of tracked jobs to measure at.
    pub sizes: Vec<usize>,
    /// Upsert + delete pairs timed per size on the tracker and on small baselines.
    pub iterations: usize,
    /// Pairs timed on the baseline when it holds at least `large_size` jobs (each costs seconds).
    pub baseline_iterations_large: usize,
    /// See `baseline_iterations_large`.
    pub large_size: usize,
    /// Threads changing one tracker at once in the concurrent measurement (0 skips it).
    pub concurrent_threads: usize,
    /// Tracked jobs during the concurrent measurement.
    pub concurrent_size: usize,
    /// Upsert + delete pairs each of those threads does.
    pub concurrent_pairs_per_thread: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            sizes: vec![10, 1_000, 100_000],
            iterations: 200,
            baseline_iterations_large: 3,
            large_size: 100_000,
            concurrent_threads: 16,
            concurrent_size: 1_000,
            concurrent_pairs_per_thread: 50,
        }
    }
}

/// A job shaped like a real one (ids and names of realistic length).
fn sample_job(i: usize) -> TrackedJob {
    TrackedJob {
        job_id: format!("01JDQ7Z{i:012}-dispatch-job"),
        dag_name: format!("deploy-service-{}", i % 37),
        dag_run_id: format!("0193a5c2-7e4b-7c1d-9f2e-{i:012}"),
        phase: if i.is_multiple_of(2) {
            Phase::Accepted
        } else {
            Phase::PendingAccept
        },
        repository: format!("octo-org/service-{}", i % 50),
        pr_number: (i % 5000) as i64,
        issue_number: 0,
        updated_at_ms: 1_764_000_000_000 + i as u64,
    }
}

/// Runs the comparison in fresh directories under `scratch` and returns the numbers.
///
/// Names: `tracker/upsert+delete/n=N` and `baseline-rewrite/upsert+delete/n=N` (mean microseconds
/// per pair), `tracker/compaction/n=N` (milliseconds for one compaction) and
/// `tracker/upsert+delete-amortised/n=N` (the pair cost plus its share of the next compaction),
/// then the ratios `tracker/ratio-largest-vs-smallest` and `baseline-vs-tracker/n=N`, and
/// `tracker/concurrent-T-threads/upsert+delete/n=N`: changes per second (an upsert and a delete count
/// as two) while T threads each run their own upsert + delete pairs on one tracker, as the worker's
/// concurrent intakes do, with `tracker/concurrent-T-threads/changes-per-fsync/n=N` (group commit's
/// batching factor).
pub fn run(scratch: &Path, config: &BenchConfig) -> Result<Vec<Measurement>, TrackerError> {
    let mut out = Vec::new();
    let mut trackers = Vec::new();
    for &n in &config.sizes {
        let dir = scratch.join(format!("tracker-{n}"));
        let _ = fs::remove_dir_all(&dir);
        seed(&dir, n)?;
        let tracker = Tracker::open_with_config(&dir, TrackerConfig::default())?;
        // A few untimed pairs so the first timed one does not pay for page-cache warm-up.
        pair_ours(&tracker, n, 0..5)?;
        trackers.push((n, tracker, Duration::ZERO));
    }
    // Sizes take turns in short rounds so that load from other processes on a shared machine falls
    // on all of them alike instead of on whichever size happens to run last.
    let rounds = ROUNDS.min(config.iterations.max(1));
    let mut done = 0;
    for round in 0..rounds {
        let upto = config.iterations * (round + 1) / rounds;
        for (n, tracker, elapsed) in &mut trackers {
            *elapsed += pair_ours(tracker, *n, 5 + done..5 + upto)?;
        }
        done = upto;
    }
    let mut ours = BTreeMap::new();
    for (n, tracker, elapsed) in trackers {
        let per_pair = micros(elapsed) / config.iterations.max(1) as f64;
        ours.insert(n, per_pair);
        out.push(m(format!("tracker/upsert+delete/n={n}"), per_pair, "us"));

        let start = Instant::now();
        tracker.compact_now()?;
        let compaction = start.elapsed();
        // After a compaction the journal holds n records and the next one runs past
        // max(1024, 2n); each pair adds two records.
        let pairs_between = (TrackerConfig::default().compact_min_records.max(2 * n) - n) / 2;
        let amortised = per_pair + micros(compaction) / pairs_between.max(1) as f64;
        out.push(m(
            format!("tracker/compaction/n={n}"),
            micros(compaction) / 1000.0,
            "ms",
        ));
        out.push(m(
            format!("tracker/upsert+delete-amortised/n={n}"),
            amortised,
            "us",
        ));
        let dir = tracker.dir().to_path_buf();
        drop(tracker);
        let _ = fs::remove_dir_all(&dir);
    }
    let mut baseline = BTreeMap::new();
    for &n in &config.sizes {
        let dir = scratch.join(format!("baseline-{n}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let iterations = if n >= config.large_size {
            config.baseline_iterations_large
        } else {
            config.iterations
        };
        let elapsed = pair_baseline(&dir, n, iterations)?;
        let per_pair = micros(elapsed) / iterations.max(1) as f64;
        baseline.insert(n, per_pair);
        out.push(m(
            format!("baseline-rewrite/upsert+delete/n={n}"),
            per_pair,
            "us",
        ));
        let _ = fs::remove_dir_all(&dir);
    }
    if let (Some((_, small)), Some((_, large))) = (ours.first_key_value(), ours.last_key_value()) {
        out.push(m(
            "tracker/ratio-largest-vs-smallest".to_owned(),
            large / small,
            "x",
        ));
    }
    for (n, ours_n) in &ours {
        if let Some(base) = baseline.get(n) {
            out.push(m(format!("baseline-vs-tracker/n={n}"), base / ours_n, "x"));
        }
    }
    if config.concurrent_threads > 0 {
        out.extend(concurrent(scratch, config)?);
    }
    Ok(out)
}

/// Changes per second with `concurrent_threads` threads sharing one tracker, and how many changes
/// shared each fsync on average (group commit).
fn concurrent(scratch: &Path, config: &BenchConfig) -> Result<Vec<Measurement>, TrackerError> {
    let (threads, n) = (config.concurrent_threads, config.concurrent_size);
    let pairs = config.concurrent_pairs_per_thread.max(1);
    let dir = scratch.join(format!("tracker-concurrent-{n}"));
    let _ = fs::remove_dir_all(&dir);
    seed(&dir, n)?;
    let tracker = Tracker::open_with_config(&dir, TrackerConfig::default())?;
    pair_ours(&tracker, n, 0..5)?;
    let syncs_before = tracker.journal_syncs();
    let start_line = std::sync::Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (tracker, start_line) = (&tracker, &start_line);
                // Each thread owns a disjoint range of job ids above the seeded ones.
                let first = n + 5 + t * pairs;
                s.spawn(move || {
                    start_line.wait();
                    pair_ours(tracker, 0, first..first + pairs)
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let mut result = Ok(());
        for w in workers {
            match w.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => result = Err(e),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result.map(|()| start.elapsed())
    })?;
    let syncs = tracker.journal_syncs() - syncs_before;
    drop(tracker);
    let _ = fs::remove_dir_all(&dir);
    let changes = (2 * threads * pairs) as f64;
    Ok(vec![
        m(
            format!("tracker/concurrent-{threads}-threads/upsert+delete/n={n}"),
            changes / elapsed.as_secs_f64().max(1e-9),
            "ops/s",
        ),
        m(
            format!("tracker/concurrent-{threads}-threads/changes-per-fsync/n={n}"),
            changes / syncs.max(1) as f64,
            "x",
        ),
    ])
}

fn m(name: String, value: f64, unit: &str) -> Measurement {
    Measurement {
        name,
        value,
        unit: unit.to_owned(),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Writes a journal of `n` jobs in one snapshot; seeding through `upsert` would cost n fsyncs.
fn seed(dir: &Path, n: usize) -> Result<(), TrackerError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let jobs: Vec<TrackedJob> = (0..n).map(sample_job).collect();
    write_snapshot(dir, jobs.iter())?;
    Ok(())
}

fn pair_ours(
    tracker: &Tracker,
    n: usize,
    range: std::ops::Range<usize>,
) -> Result<Duration, TrackerError> {
    let start = Instant::now();
    for i in range {
        let job = sample_job(n + i);
        let id = job.job_id.clone();
        tracker.upsert(job)?;
        tracker.delete(&id)?;
    }
    Ok(start.elapsed())
}

/// The Dagu-style store: every change rewrites one JSON file holding all jobs, then fsyncs it.
fn pair_baseline(dir: &Path, n: usize, iterations: usize) -> Result<Duration, TrackerError> {
    let path = dir.join("jobs.json");
    let mut jobs: BTreeMap<String, TrackedJob> = (0..n)
        .map(|i| {
            let j = sample_job(i);
            (j.job_id.clone(), j)
        })
        .collect();
    let write = |jobs: &BTreeMap<String, TrackedJob>| -> Result<(), TrackerError> {
        let bytes = serde_json::to_vec(jobs).map_err(|source| TrackerError::Encode {
            job_id: String::new(),
            source,
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &path))
    };
    write(&jobs)?;
    let start = Instant::now();
    for i in 0..iterations {
        let job = sample_job(n + i);
        let id = job.job_id.clone();
        jobs.insert(id.clone(), job);
        write(&jobs)?;
        jobs.remove(&id);
        write(&jobs)?;
    }
    Ok(start.elapsed())
}
