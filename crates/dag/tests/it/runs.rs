use std::path::Path;

use dispatch_dag::*;

fn stores(root: &Path) -> Stores {
    Stores::open_files(FileStoreConfig::in_home(root)).unwrap()
}

fn write_dag(root: &Path, file: &str, text: &str) {
    std::fs::write(root.join("dags").join(file), text).unwrap();
}

/// A store root holding one DAG `d` (one `true` step): the directory, its stores, the DAG.
fn stores_with_dag() -> (tempfile::TempDir, Stores, Dag) {
    stores_with("d", "steps:\n  - name: a\n    command: 'true'\n")
}

/// A store root holding the DAG `name` written as `text`.
fn stores_with(name: &str, text: &str) -> (tempfile::TempDir, Stores, Dag) {
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    write_dag(tmp.path(), &format!("{name}.yaml"), text);
    let dag = s.dags.load(name).unwrap();
    (tmp, s, dag)
}

/// Creates a `queued` attempt of run `run` of `dag`.
fn create_queued(s: &Stores, dag: &Dag, run: &str) -> Attempt {
    s.runs
        .create_attempt(dag, &record(&dag.name, run, RunStatus::Queued))
        .unwrap()
}

/// Appends `bytes` to `file` as a crashed writer would have left them.
fn append(file: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

fn record(dag: &str, run: &str, status: RunStatus) -> RunRecord {
    RunRecord {
        dag_name: dag.into(),
        run_id: run.into(),
        attempt_id: String::new(),
        status,
        trigger: "webhook".into(),
        params: "A=\"1\"".into(),
        queued_at: Some(1),
        started_at: None,
        finished_at: None,
        log_file: "/tmp/x.log".into(),
        error: None,
        steps: vec![],
        pid: None,
    }
}

#[test]
fn open_files_creates_dirs_and_keeps_log_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    for d in ["dags", "data/runs", "data/queue", "logs"] {
        assert!(tmp.path().join(d).is_dir(), "{d}");
    }
    assert_eq!(s.log_dir, tmp.path().join("logs"));
}

#[test]
fn attempt_roundtrip_snapshot_and_status_updates() {
    let (tmp, s, dag) = stores_with("build", "steps:\n  - name: a\n    command: echo a\n");
    assert_eq!(dag.name, "build");

    let err = s.runs.find_attempt("build", "r1").unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let created = create_queued(&s, &dag, "r1");
    assert!(!created.record.attempt_id.is_empty());
    // Editing the YAML later does not change the snapshot.
    write_dag(
        tmp.path(),
        "build.yaml",
        "steps:\n  - name: b\n    command: echo b\n",
    );
    let found = s.runs.find_attempt("build", "r1").unwrap();
    assert_eq!(found, created);
    assert_eq!(found.dag.steps[0].name, "a");

    let mut rec = created.record.clone();
    rec.status = RunStatus::Succeeded;
    rec.finished_at = Some(9);
    s.runs.write_status(&rec).unwrap();
    assert_eq!(s.runs.find_attempt("build", "r1").unwrap().record, rec);

    // A second attempt becomes the latest.
    let second = create_queued(&s, &dag, "r1");
    assert_ne!(second.record.attempt_id, rec.attempt_id);
    assert_eq!(
        s.runs.find_attempt("build", "r1").unwrap().record,
        second.record
    );
    assert_eq!(s.runs.list_attempts().unwrap().len(), 1);

    // Survives reopen.
    let s2 = stores(tmp.path());
    assert_eq!(
        s2.runs.find_attempt("build", "r1").unwrap().record,
        second.record
    );

    s2.runs.remove_run("build", "r1").unwrap();
    assert!(s2
        .runs
        .find_attempt("build", "r1")
        .unwrap_err()
        .is_not_found());
    assert!(!tmp.path().join("data/runs/build/r1").exists());
    // Removing again is fine; a late status write does not resurrect it.
    s2.runs.remove_run("build", "r1").unwrap();
    assert!(s2
        .runs
        .write_status(&second.record)
        .unwrap_err()
        .is_not_found());
    assert!(!tmp.path().join("data/runs/build/r1").exists());
}

#[test]
fn corrupt_status_is_corrupt_naming_the_file() {
    let (tmp, s, dag) = stores_with_dag();
    let a = create_queued(&s, &dag, "r1");
    let mut running = a.record.clone();
    running.status = RunStatus::Running;
    s.runs.write_status(&running).unwrap();
    running.pid = Some(7);
    s.runs.write_status(&running).unwrap();
    s.runs
        .create_attempt(&dag, &record("d", "r2", RunStatus::Running))
        .unwrap();
    let file = tmp.path().join("data/runs/d/r1.jsonl");
    // Damage a line that is not the last one (a bad last line is a torn append; see below).
    let text = std::fs::read_to_string(&file).unwrap();
    let damaged = text.replacen("{\"status\":{", "{\"status\":{oops", 1);
    assert_ne!(damaged, text);
    std::fs::write(&file, damaged).unwrap();
    let err = s.runs.find_attempt("d", "r1").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { path, .. } if *path == file),
        "{err:?}"
    );
    assert!(err.to_string().contains("r1.jsonl"), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
    // A status write does not paper over it either.
    assert!(matches!(
        s.runs.write_status(&running).unwrap_err(),
        StoreError::Corrupt { .. }
    ));
    // Recovery still sees the healthy run.
    let all = s.runs.list_attempts().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].record.run_id, "r2");
}

/// What a crash in the middle of an append leaves: the last line without its newline.
#[test]
fn torn_tail_is_ignored_and_cut_off_by_the_next_write() {
    let (tmp, s, dag) = stores_with_dag();
    let a = create_queued(&s, &dag, "r1");
    let file = tmp.path().join("data/runs/d/r1.jsonl");
    append(&file, b"{\"status\":{\"dag_name\":\"d\",\"run");
    assert_eq!(s.runs.find_attempt("d", "r1").unwrap(), a);
    assert_eq!(s.runs.list_attempts().unwrap(), vec![a.clone()]);

    let mut rec = a.record.clone();
    rec.status = RunStatus::Failed;
    s.runs.write_status(&rec).unwrap();
    assert_eq!(s.runs.find_attempt("d", "r1").unwrap().record, rec);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.ends_with('\n'));

    // Zeros where a lost append was (the size reached the disk, the data did not), with or
    // without its newline.
    for tail in [&[0u8; 64][..], b"\0\0\0\0\0\0\0\"}\n"] {
        append(&file, tail);
        assert_eq!(s.runs.find_attempt("d", "r1").unwrap().record, rec);
        assert_eq!(s.runs.list_attempts().unwrap().len(), 1);
    }
    rec.status = RunStatus::Succeeded;
    s.runs.write_status(&rec).unwrap();
    assert_eq!(s.runs.find_attempt("d", "r1").unwrap().record, rec);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
}

/// A crash between creating the run file and writing its first line leaves an empty file:
/// that create never returned, so there is no run, and enqueueing it again works.
#[test]
fn run_file_without_an_attempt_is_no_run() {
    let (tmp, s, dag) = stores_with_dag();
    std::fs::create_dir_all(tmp.path().join("data/runs/d")).unwrap();
    std::fs::write(tmp.path().join("data/runs/d/r1.jsonl"), b"").unwrap();
    std::fs::write(
        tmp.path().join("data/runs/d/r2.jsonl"),
        b"{\"attempt\":{\"da",
    )
    .unwrap();
    for run in ["r1", "r2"] {
        let err = s.runs.find_attempt("d", run).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        let mut rec = record("d", run, RunStatus::Queued);
        rec.attempt_id = "a1".into();
        assert!(s.runs.write_status(&rec).unwrap_err().is_not_found());
    }
    assert!(s.runs.list_attempts().unwrap().is_empty());
    let a = create_queued(&s, &dag, "r2");
    assert_eq!(s.runs.find_attempt("d", "r2").unwrap(), a);
}

#[test]
fn status_of_an_older_attempt_and_unknown_attempts() {
    let (tmp, s, dag) = stores_with_dag();
    let first = create_queued(&s, &dag, "r1");
    let second = create_queued(&s, &dag, "r1");
    let mut old = first.record.clone();
    old.status = RunStatus::Failed;
    s.runs.write_status(&old).unwrap();
    // The latest attempt stays the latest.
    assert_eq!(s.runs.find_attempt("d", "r1").unwrap(), second);
    let runs = FileRunStore::open(tmp.path().join("data/runs")).unwrap();
    let all = runs.attempts("d", "r1").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].record, old);
    assert_eq!(all[1], second);
    assert!(runs.attempts("d", "missing").unwrap().is_empty());
    let mut unknown = second.record.clone();
    unknown.attempt_id = "nope".into();
    assert!(s.runs.write_status(&unknown).unwrap_err().is_not_found());
    // An explicit attempt id that exists is refused.
    let e = s.runs.create_attempt(&dag, &second.record).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert_eq!(s.runs.find_attempt("d", "r1").unwrap(), second);
}

/// Many status writes: the file is compacted now and then and the latest status always wins,
/// also with several threads writing statuses of different runs and reading meanwhile.
#[test]
fn many_status_writes_compact_and_stay_readable() {
    let (tmp, s, dag) = stores_with_dag();
    let mut handles = Vec::new();
    for t in 0..3 {
        let s = s.clone();
        let dag = dag.clone();
        handles.push(std::thread::spawn(move || {
            let run = format!("r{t}");
            let a = create_queued(&s, &dag, &run);
            let mut rec = a.record.clone();
            // Big records, so that compaction happens within a few hundred writes.
            rec.error = Some("x".repeat(8000));
            for i in 0..80u64 {
                rec.finished_at = Some(i);
                s.runs.write_status(&rec).unwrap();
                let seen = s.runs.find_attempt("d", &run).unwrap();
                assert_eq!(seen.record.finished_at, Some(i));
                assert_eq!(seen.dag, dag);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    for t in 0..3 {
        let file = tmp.path().join(format!("data/runs/d/r{t}.jsonl"));
        assert!(std::fs::metadata(&file).unwrap().len() < 300 * 1024);
        assert_eq!(
            s.runs
                .find_attempt("d", &format!("r{t}"))
                .unwrap()
                .record
                .finished_at,
            Some(79)
        );
    }
    assert_eq!(s.runs.list_attempts().unwrap().len(), 3);
}

/// Two writers of the same run (threads here; the lock is per open file, so processes too):
/// every write lands whole, compaction included, and the file stays readable.
#[test]
fn concurrent_writers_of_one_run_never_tear_it() {
    let (_tmp, s, dag) = stores_with_dag();
    let a = create_queued(&s, &dag, "r");
    let mut handles = Vec::new();
    for t in 0..3u64 {
        let s = s.clone();
        let mut rec = a.record.clone();
        rec.error = Some("y".repeat(8000));
        handles.push(std::thread::spawn(move || {
            for i in 0..60u64 {
                rec.finished_at = Some(t * 1000 + i);
                s.runs.write_status(&rec).unwrap();
                s.runs.find_attempt("d", "r").unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let last = s
        .runs
        .find_attempt("d", "r")
        .unwrap()
        .record
        .finished_at
        .unwrap();
    assert_eq!(
        last % 1000,
        59,
        "the last write of some writer wins: {last}"
    );
}

#[test]
fn bad_names_are_rejected_before_touching_files() {
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    for name in ["../x", "/etc/passwd", "", "a/b", "..", "a b"] {
        let e = s.dags.load(name).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidName {
                    kind: "DAG name",
                    ..
                }
            ),
            "{name:?}: {e}"
        );
        let e = s.runs.find_attempt(name, "r1").unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{name:?}: {e}");
    }
    for id in ["../x", "a.b", ""] {
        let e = s.runs.find_attempt("d", id).unwrap_err();
        assert!(
            matches!(e, StoreError::InvalidName { kind: "run id", .. }),
            "{id:?}: {e}"
        );
        s.runs.remove_run("d", id).unwrap_err();
    }
    assert_eq!(crate::entries(tmp.path().join("data/runs")), 0);
}

#[test]
fn dag_store_load_and_list() {
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    write_dag(
        tmp.path(),
        "a.yaml",
        "steps:\n  - name: s\n    command: 'true'\n",
    );
    write_dag(
        tmp.path(),
        "b.yml",
        "steps:\n  - name: s\n    command: 'true'\n",
    );
    write_dag(
        tmp.path(),
        "file.yaml",
        "name: named\nsteps:\n  - name: s\n    command: 'true'\n",
    );
    write_dag(tmp.path(), "broken.yaml", "steps: [\n");
    write_dag(tmp.path(), "notes.txt", "not a dag");
    assert_eq!(s.dags.load("a").unwrap().name, "a");
    assert_eq!(s.dags.load("b").unwrap().name, "b");
    assert_eq!(
        s.dags.load("named").unwrap().location,
        tmp.path().join("dags/file.yaml")
    );
    assert!(s.dags.load("missing").unwrap_err().is_not_found());
    let e = s.dags.load("broken").unwrap_err();
    assert!(matches!(e, StoreError::Dag(_)), "{e}");
    let listed = s.dags.list().unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed.iter().filter(|r| r.is_ok()).count(), 3);
}

const CHILD_ENV: &str = "DISPATCH_DAG_TEST_RUNS_CHILD_DIR";

/// Writes `n` statuses of run `d/r` (its attempt taken from the file) with big records, so that
/// compactions happen meanwhile; returns the last `finished_at` written.
fn write_many(root: &Path, tag: u64, n: u64) -> u64 {
    let s = stores(root);
    let mut rec = s.runs.find_attempt("d", "r").unwrap().record;
    rec.error = Some("z".repeat(8000));
    for i in 0..n {
        rec.finished_at = Some(tag * 1000 + i);
        s.runs.write_status(&rec).unwrap();
        let seen = s.runs.find_attempt("d", "r").unwrap();
        assert_eq!(seen.record.attempt_id, rec.attempt_id);
    }
    tag * 1000 + n - 1
}

/// In a child process (spawned by `two_processes_write_one_run`) this is the other writer.
#[test]
fn runs_child_side() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        write_many(Path::new(&dir), 2, 60);
    }
}

/// Two processes writing statuses of the same run (the executor and a recovery elsewhere, say):
/// the lock and the re-open after a compaction keep every line whole and the file readable.
#[test]
fn two_processes_write_one_run() {
    let (tmp, s, dag) = stores_with_dag();
    create_queued(&s, &dag, "r");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "runs::runs_child_side", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mine = write_many(tmp.path(), 1, 60);
    assert!(child.wait().unwrap().success());
    let last = s.runs.find_attempt("d", "r").unwrap().record.finished_at;
    assert!(last == Some(mine) || last == Some(2059), "{last:?}");
    let runs = FileRunStore::open(tmp.path().join("data/runs")).unwrap();
    assert_eq!(runs.attempts("d", "r").unwrap().len(), 1);
    assert!(
        std::fs::metadata(tmp.path().join("data/runs/d/r.jsonl"))
            .unwrap()
            .len()
            < 300 * 1024
    );
}

/// Directories are made durable once per process and then trusted; one removed behind the
/// store's back is made again rather than failing every later create or enqueue.
#[test]
fn store_directories_removed_behind_its_back_come_back() {
    let (tmp, s, dag) = stores_with_dag();
    let it = QueueItem {
        dag_name: "d".into(),
        run_id: "r1".into(),
    };
    create_queued(&s, &dag, "r1");
    s.queue.enqueue("d", Priority::Low, &it).unwrap();
    std::fs::remove_dir_all(tmp.path().join("data")).unwrap();
    create_queued(&s, &dag, "r2");
    assert_eq!(s.runs.list_attempts().unwrap().len(), 1);
    s.queue.enqueue("d", Priority::Low, &it).unwrap();
    assert_eq!(s.queue.list("d").unwrap(), vec![it]);
}

#[test]
fn create_attempts_gives_each_run_its_own_result_and_all_are_durable() {
    let (tmp, s, dag) = stores_with_dag();
    write_dag(
        tmp.path(),
        "e.yaml",
        "steps:\n  - name: b\n    command: 'true'\n",
    );
    let other = s.dags.load("e").unwrap();
    let existing = create_queued(&s, &dag, "r0");
    let r1 = record("d", "r1", RunStatus::Queued);
    let r2 = record("e", "r2", RunStatus::Queued);
    let bad = record("d", "bad.id", RunStatus::Queued);
    let results = s.runs.create_attempts(&[
        (&dag, &r1),
        (&dag, &existing.record),
        (&other, &r2),
        (&dag, &bad),
    ]);
    assert_eq!(results.len(), 4);
    let created = results[0].as_ref().unwrap();
    assert_eq!(created.record.run_id, "r1");
    assert!(!created.record.attempt_id.is_empty());
    assert!(
        matches!(
            &results[1],
            Err(StoreError::Io {
                action: "create attempt",
                ..
            })
        ),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap().dag.name, "e");
    assert!(matches!(&results[3], Err(StoreError::InvalidName { .. })));
    assert!(s.runs.create_attempts(&[]).is_empty());

    let reopened = stores(tmp.path());
    for (dag_name, run) in [("d", "r0"), ("d", "r1"), ("e", "r2")] {
        let attempt = reopened.runs.find_attempt(dag_name, run).unwrap();
        assert_eq!(attempt.record.status, RunStatus::Queued, "{dag_name}/{run}");
    }
    assert_eq!(
        reopened.runs.find_attempt("d", "r1").unwrap().record,
        created.record
    );
}

#[test]
fn a_run_read_back_after_writing_it_follows_every_writer() {
    let (tmp, a, dag) = stores_with_dag();
    let b = stores(tmp.path());
    let created = create_queued(&a, &dag, "r1");
    // Read back as written, also from memory.
    assert_eq!(a.runs.find_attempt("d", "r1").unwrap(), created);
    let mut running = created.record.clone();
    running.status = RunStatus::Running;
    a.runs.write_status(&running).unwrap();
    assert_eq!(a.runs.find_attempt("d", "r1").unwrap().record, running);
    // Another writer (another process) is seen at once.
    let mut done = running.clone();
    done.status = RunStatus::Succeeded;
    b.runs.write_status(&done).unwrap();
    assert_eq!(a.runs.find_attempt("d", "r1").unwrap().record, done);
    // A newer attempt created elsewhere is the latest; a status of the older one changes
    // nothing.
    let mut second = record("d", "r1", RunStatus::Queued);
    second.attempt_id = "01999999999999999999-1".into();
    b.runs.create_attempt(&dag, &second).unwrap();
    a.runs.write_status(&done).unwrap();
    let latest = a.runs.find_attempt("d", "r1").unwrap();
    assert_eq!(latest.record.attempt_id, second.attempt_id);
    assert_eq!(latest.record.status, RunStatus::Queued);
    a.runs.remove_run("d", "r1").unwrap();
    assert!(a.runs.find_attempt("d", "r1").unwrap_err().is_not_found());
}

#[test]
fn a_run_read_from_its_file_follows_every_writer_after_it() {
    let (tmp, a, dag) = stores_with_dag();
    let (b, c) = (stores(tmp.path()), stores(tmp.path()));
    let created = create_queued(&a, &dag, "r1");
    // `b` knows the run only by reading its file; it goes on from what it read.
    assert_eq!(b.runs.find_attempt("d", "r1").unwrap(), created);
    let mut running = created.record.clone();
    running.status = RunStatus::Running;
    b.runs.write_status(&running).unwrap();
    assert_eq!(b.runs.find_attempt("d", "r1").unwrap().record, running);
    assert_eq!(c.runs.find_attempt("d", "r1").unwrap().record, running);
    // Writes by others after its read are seen at once, by `b` and by `c`, which read it too.
    let mut done = running.clone();
    done.status = RunStatus::Succeeded;
    a.runs.write_status(&done).unwrap();
    assert_eq!(b.runs.find_attempt("d", "r1").unwrap().record, done);
    assert_eq!(c.runs.find_attempt("d", "r1").unwrap().record, done);
    // A status appended by hand, as another program would, is seen too.
    let mut failed = done.clone();
    failed.status = RunStatus::Failed;
    b.runs.write_status(&failed).unwrap();
    let path = tmp.path().join("data/runs/d/r1.jsonl");
    let line = std::fs::read_to_string(&path).unwrap();
    let last = line.lines().last().unwrap().replace("failed", "aborted");
    append(&path, format!("{last}\n").as_bytes());
    assert_eq!(
        c.runs.find_attempt("d", "r1").unwrap().record.status,
        RunStatus::Aborted
    );
}
