//! Integration tests of `dispatch-tracker` against real files, fsync and a second process.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use dispatch_tracker::{Phase, TrackedJob, Tracker, TrackerConfig, TrackerError};
use proptest::prelude::*;

fn job(id: &str, run: &str) -> TrackedJob {
    TrackedJob {
        job_id: id.to_owned(),
        dag_name: "deploy".to_owned(),
        dag_run_id: run.to_owned(),
        phase: Phase::PendingAccept,
        repository: "octo-org/octo-repo".to_owned(),
        pr_number: 42,
        issue_number: 0,
        updated_at_ms: 1_764_000_000_000,
    }
}

fn small_compaction() -> TrackerConfig {
    TrackerConfig {
        compact_min_records: 8,
    }
}

fn journal(dir: &Path) -> std::path::PathBuf {
    dir.join("journal")
}

/// A new tracker directory `name` inside `dir`, holding a copy of `dir`'s journal.
/// A copy of the tracker in `dir`, in its subdirectory `name`, with the journal's bytes as
/// `damage` leaves them.
fn damaged_copy(dir: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
    let copy = dir.join(name);
    fs::create_dir(&copy).unwrap();
    let mut bytes = fs::read(journal(dir)).unwrap();
    damage(&mut bytes);
    fs::write(journal(&copy), bytes).unwrap();
    copy
}

/// A tracker in a fresh temporary directory (kept while the guard lives).
fn fresh() -> (tempfile::TempDir, Tracker) {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tracker::open(tmp.path()).unwrap();
    (tmp, t)
}

fn ids(t: &Tracker) -> Vec<String> {
    t.list().unwrap().into_iter().map(|j| j.job_id).collect()
}

#[test]
fn every_operation_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tracker");
    let mut expected: Vec<TrackedJob> = Vec::new();

    // Each step: one kind of operation, then a reopen that must show exactly the expected state.
    type Step = Box<dyn Fn(&Tracker, &mut Vec<TrackedJob>)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "insert",
            Box::new(|t, e| {
                t.upsert(job("b", "run-b")).unwrap();
                t.upsert(job("a/?%é", "run-a")).unwrap();
                e.push(job("a/?%é", "run-a"));
                e.push(job("b", "run-b"));
            }),
        ),
        (
            "replace",
            Box::new(|t, e| {
                let mut j = job("b", "run-b2");
                j.phase = Phase::Accepted;
                j.updated_at_ms += 5;
                t.upsert(j.clone()).unwrap();
                e[1] = j;
            }),
        ),
        (
            "delete existing",
            Box::new(|t, e| {
                assert!(t.delete("a/?%é").unwrap());
                e.remove(0);
            }),
        ),
        (
            "delete missing",
            Box::new(|t, _| {
                assert!(!t.delete("never-there").unwrap());
            }),
        ),
        (
            "delete last",
            Box::new(|t, e| {
                assert!(t.delete("b").unwrap());
                e.clear();
            }),
        ),
    ];
    for (name, step) in steps {
        let t = Tracker::open(&dir).unwrap();
        step(&t, &mut expected);
        assert_eq!(t.list().unwrap(), expected, "before reopen after {name}");
        drop(t);
        let t = Tracker::open(&dir).unwrap();
        assert_eq!(t.list().unwrap(), expected, "after reopen after {name}");
        assert_eq!(t.len(), expected.len());
        for j in &expected {
            assert_eq!(t.get(&j.job_id).unwrap().as_ref(), Some(j));
        }
        assert_eq!(t.get("never-there").unwrap(), None);
    }
}

#[test]
fn list_is_sorted_by_job_id() {
    let (_tmp, t) = fresh();
    for id in ["zeta", "alpha", "Mid", "beta-2", "beta-10"] {
        t.upsert(job(id, "r")).unwrap();
    }
    assert_eq!(ids(&t), ["Mid", "alpha", "beta-10", "beta-2", "zeta"]);
}

#[test]
fn phase_serializes_as_snake_case() {
    let mut j = job("x", "r");
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["phase"], "pending_accept");
    j.phase = Phase::Accepted;
    assert_eq!(serde_json::to_value(&j).unwrap()["phase"], "accepted");
    let back: TrackedJob = serde_json::from_value(serde_json::to_value(&j).unwrap()).unwrap();
    assert_eq!(back, j);
}

/// Three committed records, then the journal's length with only the first two.
fn three_records(dir: &Path) -> u64 {
    let t = Tracker::open(dir).unwrap();
    t.upsert(job("one", "r1")).unwrap();
    t.upsert(job("two", "r2")).unwrap();
    let two = fs::metadata(journal(dir)).unwrap().len();
    t.upsert(job("three", "r3")).unwrap();
    two
}

#[test]
fn torn_tail_is_ignored_and_cut_before_the_next_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let two = three_records(dir);
    let full = fs::metadata(journal(dir)).unwrap().len();
    for cut in [
        two + 1,
        two + 4,
        two + 8,
        two + 9,
        (two + full) / 2,
        full - 1,
    ] {
        let d = damaged_copy(dir, &format!("cut-{cut}"), |bytes| {
            bytes.truncate(cut as usize)
        });
        let t = Tracker::open(&d).unwrap();
        assert_eq!(ids(&t), ["one", "two"], "cut at {cut}");
        assert_eq!(
            fs::metadata(journal(&d)).unwrap().len(),
            two,
            "torn bytes cut off"
        );
        t.upsert(job("four", "r4")).unwrap();
        drop(t);
        let t = Tracker::open(&d).unwrap();
        assert_eq!(ids(&t), ["four", "one", "two"], "append after cut at {cut}");
    }
}

#[test]
fn garbage_or_zero_tail_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_records(dir);
    let full = fs::metadata(journal(dir)).unwrap().len();
    let tails: [&[u8]; 3] = [
        &[0u8; 4096],
        b"\xff\xff\xff\xffgarbage after a crash",
        b"\x05\x00",
    ];
    for (i, tail) in tails.into_iter().enumerate() {
        let d = damaged_copy(dir, &format!("tail-{i}"), |bytes| bytes.extend(tail));
        let t = Tracker::open(&d).unwrap();
        assert_eq!(ids(&t), ["one", "three", "two"], "tail {i}");
        assert_eq!(fs::metadata(journal(&d)).unwrap().len(), full);
    }
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    three_records(dir);
    let mut bytes = fs::read(journal(dir)).unwrap();
    // Inside the first record's payload (magic 8 + header 8 + a few bytes).
    bytes[8 + 8 + 5] ^= 0x20;
    fs::write(journal(dir), &bytes).unwrap();
    let err = Tracker::open(dir).unwrap_err();
    assert!(
        matches!(err, TrackerError::Corrupt { offset: 8, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&journal(dir).display().to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    // The file is left as it was for a human to inspect.
    assert_eq!(fs::read(journal(dir)).unwrap(), bytes);
}

#[test]
fn bad_magic_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(journal(tmp.path()), b"{\"jobs\":[]}").unwrap();
    let err = Tracker::open(tmp.path()).unwrap_err();
    assert!(matches!(err, TrackerError::BadHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("not a tracker journal"));
}

#[test]
fn permissions_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new");
    let t = Tracker::open_with_config(&dir, small_compaction()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&journal(&dir)), 0o600);
    assert_eq!(mode(&dir.join("LOCK")), 0o600);
    // A compaction creates a new journal file, which must be private too.
    for i in 0..20 {
        t.upsert(job("same", &format!("r{i}"))).unwrap();
    }
    assert!(t.journal_records() < 20, "compaction ran");
    assert_eq!(mode(&journal(&dir)), 0o600);
    drop(t);

    // A pre-existing, too-open directory and journal are tightened on open.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(journal(&dir), fs::Permissions::from_mode(0o644)).unwrap();
    let _t = Tracker::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&journal(&dir)), 0o600);
}

#[test]
fn second_open_in_the_same_process_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Tracker::open(tmp.path()).unwrap();
    let err = Tracker::open(tmp.path()).unwrap_err();
    assert!(matches!(err, TrackerError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");
    drop(first);
    Tracker::open(tmp.path()).unwrap();
}

const PROBE_ENV: &str = "DISPATCH_TRACKER_TEST_PROBE_DIR";

/// Run by `second_open_from_another_process_is_in_use` in a child process (the same test binary),
/// where it must be refused. Run directly, it checks the same open succeeds on a free directory.
#[test]
fn lock_probe() {
    match std::env::var_os(PROBE_ENV) {
        Some(dir) => {
            let err = Tracker::open(Path::new(&dir)).unwrap_err();
            assert!(matches!(err, TrackerError::InUse { .. }), "{err:?}");
            println!("PROBE-REFUSED: {err}");
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            Tracker::open(tmp.path()).unwrap();
        }
    }
}

#[test]
fn second_open_from_another_process_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = Tracker::open(tmp.path()).unwrap();
    holder.upsert(job("held", "r")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_probe", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("PROBE-REFUSED:") && stdout.contains("already in use"),
        "{stdout}"
    );
    // The refused process changed nothing.
    assert_eq!(ids(&holder), ["held"]);
}

#[test]
fn compaction_preserves_state_and_bounds_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = Tracker::open_with_config(dir, small_compaction()).unwrap();
    let mut model = BTreeMap::new();
    let mut max_records = 0;
    for i in 0..60 {
        let id = format!("job-{}", i % 5);
        if i % 7 == 3 {
            t.delete(&id).unwrap();
            model.remove(&id);
        } else {
            let j = job(&id, &format!("run-{i}"));
            t.upsert(j.clone()).unwrap();
            model.insert(id, j);
        }
        max_records = max_records.max(t.journal_records());
    }
    // Never more than max(8, 2 × live) + the one record that triggers compaction.
    assert!(max_records <= 11, "journal reached {max_records} records");
    let expected: Vec<_> = model.values().cloned().collect();
    assert_eq!(t.list().unwrap(), expected);
    drop(t);
    let t = Tracker::open(dir).unwrap();
    assert_eq!(t.list().unwrap(), expected);
    assert!(!dir.join("journal.tmp").exists());
}

#[test]
fn stray_temp_file_from_an_interrupted_compaction_is_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = Tracker::open(dir).unwrap();
    t.upsert(job("kept", "r1")).unwrap();
    t.upsert(job("gone", "r2")).unwrap();
    // A complete snapshot of an older state, as if compaction was interrupted right before rename...
    t.compact_now().unwrap();
    let older = fs::read(journal(dir)).unwrap();
    t.delete("gone").unwrap();
    drop(t);
    fs::write(dir.join("journal.tmp"), &older).unwrap();
    let t = Tracker::open(dir).unwrap();
    assert_eq!(ids(&t), ["kept"]);
    assert!(!dir.join("journal.tmp").exists(), "stray temp removed");
    drop(t);
    // ...or a half-written one.
    fs::write(dir.join("journal.tmp"), &older[..older.len() / 2]).unwrap();
    let t = Tracker::open(dir).unwrap();
    assert_eq!(ids(&t), ["kept"]);
    t.upsert(job("new", "r3")).unwrap();
    drop(t);
    assert_eq!(ids(&Tracker::open(dir).unwrap()), ["kept", "new"]);
}

#[test]
fn tracker_is_send_and_sync_and_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tracker>();
    let tmp = tempfile::tempdir().unwrap();
    let t = std::sync::Arc::new(Tracker::open_with_config(tmp.path(), small_compaction()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..10u32 {
                    t.upsert(job(&format!("w{w}-{i}"), "r")).unwrap();
                    if i.is_multiple_of(2) {
                        t.delete(&format!("w{w}-{i}")).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(t.len(), 20);
    let before = t.list().unwrap();
    drop(t);
    assert_eq!(Tracker::open(tmp.path()).unwrap().list().unwrap(), before);
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(u8, u8, bool),
    Delete(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, any::<u8>(), any::<bool>()).prop_map(|(k, v, a)| Op::Upsert(k, v, a)),
        2 => (0u8..7).prop_map(Op::Delete),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of changes and reopens (with compaction kicking in often) matches a plain map.
    #[test]
    fn behaves_like_a_map_across_reopens(ops in proptest::collection::vec(op(), 1..30)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Tracker::open_with_config(tmp.path(), small_compaction()).unwrap();
        let mut model: BTreeMap<String, TrackedJob> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Upsert(k, v, accepted) => {
                    let mut j = job(&format!("job-{k}"), &format!("run-{v}"));
                    j.updated_at_ms = u64::from(v);
                    if accepted { j.phase = Phase::Accepted; }
                    t.upsert(j.clone()).unwrap();
                    model.insert(j.job_id.clone(), j);
                }
                Op::Delete(k) => {
                    let id = format!("job-{k}");
                    prop_assert_eq!(t.delete(&id).unwrap(), model.remove(&id).is_some());
                }
                Op::Reopen => {
                    drop(t);
                    t = Tracker::open_with_config(tmp.path(), small_compaction()).unwrap();
                }
            }
            prop_assert_eq!(t.list().unwrap(), model.values().cloned().collect::<Vec<_>>());
        }
        drop(t);
        let t = Tracker::open(tmp.path()).unwrap();
        prop_assert_eq!(t.list().unwrap(), model.values().cloned().collect::<Vec<_>>());
    }
}

#[test]
fn bench_support_reports_every_number() {
    use dispatch_tracker::bench_support::{run, BenchConfig};
    let tmp = tempfile::tempdir().unwrap();
    let config = BenchConfig {
        sizes: vec![3, 40],
        iterations: 2,
        baseline_iterations_large: 1,
        large_size: 40,
        concurrent_threads: 3,
        concurrent_size: 20,
        concurrent_pairs_per_thread: 2,
    };
    let results = run(tmp.path(), &config).unwrap();
    let names: Vec<&str> = results.iter().map(|m| m.name.as_str()).collect();
    for name in [
        "tracker/upsert+delete/n=3",
        "tracker/upsert+delete/n=40",
        "tracker/compaction/n=40",
        "tracker/upsert+delete-amortised/n=40",
        "baseline-rewrite/upsert+delete/n=40",
        "tracker/ratio-largest-vs-smallest",
        "baseline-vs-tracker/n=40",
        "tracker/concurrent-3-threads/upsert+delete/n=20",
        "tracker/concurrent-3-threads/changes-per-fsync/n=20",
    ] {
        assert!(names.contains(&name), "missing {name} in {names:?}");
    }
    assert!(
        results.iter().all(|m| m.value.is_finite() && m.value > 0.0),
        "{results:?}"
    );
    // Scratch directories are cleaned up.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn failed_compaction_keeps_changes_and_retries_later() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = Tracker::open_with_config(dir, small_compaction()).unwrap();
    // A directory where the temp snapshot should go makes every compaction attempt fail.
    fs::create_dir(dir.join("journal.tmp")).unwrap();
    fs::write(dir.join("journal.tmp").join("blocker"), b"x").unwrap();
    for i in 0..12 {
        t.upsert(job("same", &format!("r{i}"))).unwrap();
    }
    assert_eq!(
        t.journal_records(),
        12,
        "compaction could not run, nothing lost"
    );
    assert_eq!(t.get("same").unwrap().unwrap().dag_run_id, "r11");
    fs::remove_dir_all(dir.join("journal.tmp")).unwrap();
    // The retry waits for another max(8, live) records rather than trying on every change.
    for i in 12..30 {
        t.upsert(job("same", &format!("r{i}"))).unwrap();
    }
    assert!(t.journal_records() < 12, "compaction ran once unblocked");
    drop(t);
    let t = Tracker::open(dir).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.get("same").unwrap().unwrap().dag_run_id, "r29");
}

/// Polls `cond` every few milliseconds for up to a minute (generous for a loaded machine).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Upserts `jobs`, one thread each, while batch writes are held, so that they gather into one
/// pending batch. Once `queued` changes wait, runs `while_held`, lets the batches be written and
/// returns each caller's result in order.
fn upsert_together(
    t: &Tracker,
    jobs: Vec<TrackedJob>,
    queued: usize,
    while_held: impl FnOnce(),
) -> Vec<Result<(), TrackerError>> {
    std::thread::scope(|s| {
        // As if a slow fsync were in progress: every caller joins the same pending batch.
        let hold = t.hold_writes();
        let callers: Vec<_> = jobs
            .into_iter()
            .map(|job| s.spawn(move || t.upsert(job)))
            .collect();
        wait_for("callers to queue", || t.waiting_changes() == queued);
        while_held();
        drop(hold);
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn many_threads_changing_at_once_leave_the_same_state_after_reopen() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    // Small compaction threshold so compactions run between batches during the storm.
    let t = std::sync::Arc::new(Tracker::open_with_config(tmp.path(), small_compaction()).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|w| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    let own = format!("w{w:02}-{i:02}");
                    t.upsert(job(&own, "r1")).unwrap();
                    t.upsert(job(&own, &format!("r2-{w}"))).unwrap();
                    // The caller's own change is visible as soon as it returns.
                    assert_eq!(t.get(&own).unwrap().unwrap().dag_run_id, format!("r2-{w}"));
                    if i % 3 == 0 {
                        assert!(t.delete(&own).unwrap(), "{own} was tracked");
                        assert!(!t.delete(&own).unwrap(), "{own} already deleted");
                        assert_eq!(t.get(&own).unwrap(), None);
                    }
                    // Ids every thread fights over: the final value is whichever came last.
                    let shared = format!("shared-{}", i % 4);
                    t.upsert(job(&shared, &format!("w{w}-{i}"))).unwrap();
                    if (w + i) % 5 == 0 {
                        t.delete(&shared).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let own: Vec<String> = ids(&t)
        .into_iter()
        .filter(|id| !id.starts_with("shared-"))
        .collect();
    let expected: Vec<String> = (0..THREADS)
        .flat_map(|w| {
            (0..ROUNDS)
                .filter(|i| i % 3 != 0)
                .map(move |i| format!("w{w:02}-{i:02}"))
        })
        .collect();
    assert_eq!(own, expected);
    let before = t.list().unwrap();
    drop(t);
    let reopened = Tracker::open(tmp.path()).unwrap();
    assert_eq!(reopened.list().unwrap(), before);
}

#[test]
fn concurrent_callers_share_one_fsync() {
    const CALLERS: usize = 20;
    let (tmp, t) = fresh();
    t.upsert(job("before", "r")).unwrap();
    assert_eq!(t.journal_syncs(), 1, "a lone change costs one fsync");
    let jobs = (0..CALLERS)
        .map(|i| job(&format!("job-{i:02}"), "r"))
        .collect();
    let results = upsert_together(&t, jobs, CALLERS, || {
        // Nothing is durable yet, so nothing is visible yet.
        assert_eq!(ids(&t), ["before"]);
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        t.journal_syncs(),
        2,
        "{CALLERS} callers, one write and one fsync"
    );
    assert_eq!(t.len(), CALLERS + 1);
    assert_eq!(
        t.journal_records(),
        CALLERS + 1,
        "each change of a batch counts"
    );
    let before = t.list().unwrap();
    drop(t);
    let t = Tracker::open(tmp.path()).unwrap();
    assert_eq!(t.list().unwrap(), before);
    assert_eq!(t.journal_records(), CALLERS + 1);
}

#[test]
fn upsert_all_is_one_write_and_one_fsync() {
    let (tmp, t) = fresh();
    let jobs: Vec<TrackedJob> = (0..50).map(|i| job(&format!("all-{i:02}"), "r")).collect();
    t.upsert_all(jobs.clone()).unwrap();
    assert_eq!(t.journal_syncs(), 1);
    assert_eq!(t.journal_records(), 50);
    t.upsert_all(Vec::new()).unwrap();
    assert_eq!(t.journal_syncs(), 1, "nothing to write, nothing written");
    // A later change of the same job in one call wins, as with two upserts in a row.
    let mut accepted = job("all-00", "r");
    accepted.phase = Phase::Accepted;
    t.upsert_all(vec![job("all-00", "r"), accepted.clone()])
        .unwrap();
    assert_eq!(t.get("all-00").unwrap(), Some(accepted.clone()));
    drop(t);
    let t = Tracker::open(tmp.path()).unwrap();
    assert_eq!(t.len(), 50);
    assert_eq!(t.get("all-00").unwrap(), Some(accepted));
    t.fail_next_batch();
    assert!(t.upsert_all(vec![job("lost", "r")]).is_err());
    assert!(matches!(
        t.upsert_all(vec![job("later", "r")]),
        Err(TrackerError::Poisoned { .. })
    ));
}

/// Writes a batch of `callers` upserts with one fsync; returns the journal length before it.
fn write_one_batch(t: &Tracker, dir: &Path, callers: usize) -> u64 {
    let before = fs::metadata(journal(dir)).unwrap().len();
    let jobs = (0..callers)
        .map(|i| job(&format!("batched-{i:02}"), "r"))
        .collect();
    let results = upsert_together(t, jobs, callers, || {});
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    before
}

#[test]
fn a_torn_batch_is_a_torn_tail_wherever_it_tears() {
    let (tmp, t) = fresh();
    t.upsert(job("kept", "r")).unwrap();
    // Enough callers that the batch spans several 4 KiB pages.
    let start = write_one_batch(&t, tmp.path(), 80);
    assert_eq!(t.journal_syncs(), 2);
    drop(t);
    let full = fs::read(journal(tmp.path())).unwrap();
    assert!(
        full.len() as u64 > start + 2 * 4096,
        "batch of {} bytes",
        full.len() as u64 - start
    );
    let start = start as usize;
    let reopen_with = |bytes: &[u8]| {
        let copy = tempfile::tempdir().unwrap();
        fs::write(journal(copy.path()), bytes).unwrap();
        let t = Tracker::open(copy.path()).unwrap();
        ids(&t)
    };
    // Cut anywhere inside the batch: the whole batch is gone, nothing before it is.
    for cut in [
        start + 1,
        start + 8,
        start + 100,
        start + 4096,
        full.len() - 1,
    ] {
        assert_eq!(reopen_with(&full[..cut]), ["kept"], "cut at {cut}");
    }
    // A power cut can also persist a later page of the batch but not an earlier one (or its first
    // bytes): still a torn tail, not corruption in the middle, because the batch is one record.
    for lost in [
        start..start + 4096,
        start + 4096..start + 8192,
        start..start + 8,
    ] {
        let mut torn = full.clone();
        torn[lost.clone()].fill(0);
        assert_eq!(reopen_with(&torn), ["kept"], "lost {lost:?}");
    }
    assert_eq!(reopen_with(&full).len(), 81);
}

#[test]
fn a_batch_never_outgrows_one_record() {
    const CALLERS: usize = 20;
    // About 1 MB per job: 16 fit in one batch record (16 MiB), the other 4 wait for the next one.
    const FIT: usize = 16;
    let big = |i: usize| {
        let mut j = job(&format!("big-{i:02}"), "r");
        j.dag_name = "d".repeat(1_000_000);
        j
    };
    let (tmp, t) = fresh();
    // Only a full batch waits; the other callers wait for room in the next one.
    let results = upsert_together(&t, (0..CALLERS).map(big).collect(), FIT, || {});
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(t.len(), CALLERS);
    let syncs = t.journal_syncs();
    assert!(
        (2..=1 + (CALLERS - FIT) as u64).contains(&syncs),
        "{syncs} fsyncs"
    );
    drop(t);
    let t = Tracker::open(tmp.path()).unwrap();
    assert_eq!(t.len(), CALLERS);
    assert_eq!(t.get("big-07").unwrap().unwrap(), big(7));
}

#[test]
fn delete_counts_a_change_still_waiting_for_its_fsync() {
    let (tmp, t) = fresh();
    std::thread::scope(|s| {
        let hold = t.hold_writes();
        let upsert = s.spawn(|| t.upsert(job("x", "r")));
        wait_for("the upsert to queue", || t.waiting_changes() == 1);
        assert_eq!(t.get("x").unwrap(), None, "not durable, not visible");
        let delete = s.spawn(|| t.delete("x"));
        wait_for("the delete to queue", || t.waiting_changes() == 2);
        let second_delete = s.spawn(|| t.delete("x"));
        // A delete after a pending delete still waits for it (it writes a record of its own).
        wait_for("the second delete to queue", || t.waiting_changes() == 3);
        drop(hold);
        upsert.join().unwrap().unwrap();
        assert!(
            delete.join().unwrap().unwrap(),
            "the pending upsert comes first"
        );
        assert!(!second_delete.join().unwrap().unwrap());
    });
    assert_eq!(t.get("x").unwrap(), None);
    drop(t);
    assert!(Tracker::open(tmp.path()).unwrap().is_empty());
}

#[test]
fn a_failed_batch_fails_every_caller_and_poisons_the_tracker() {
    const CALLERS: usize = 5;
    let (tmp, t) = fresh();
    t.upsert(job("kept", "r")).unwrap();
    let jobs = (0..CALLERS)
        .map(|i| job(&format!("lost-{i}"), "r"))
        .collect();
    for result in upsert_together(&t, jobs, CALLERS, || t.fail_next_batch()) {
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                TrackerError::Io {
                    action: "append to",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("journal"), "{err}");
    }
    assert!(matches!(
        t.upsert(job("after", "r")),
        Err(TrackerError::Poisoned { .. })
    ));
    assert!(matches!(
        t.delete("kept"),
        Err(TrackerError::Poisoned { .. })
    ));
    assert_eq!(ids(&t), ["kept"], "a failed batch is not applied");
    drop(t);
    assert_eq!(ids(&Tracker::open(tmp.path()).unwrap()), ["kept"]);
}
