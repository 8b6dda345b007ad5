use std::path::Path;

use dispatch_dag::*;

fn stores(root: &Path) -> Stores {
    Stores::open_files(FileStoreConfig {
        dags_dir: root.join("dags"),
        data_dir: root.join("data"),
        log_dir: root.join("logs"),
    })
    .unwrap()
}

fn write_dag(root: &Path, file: &str, text: &str) {
    std::fs::write(root.join("dags").join(file), text).unwrap();
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
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    write_dag(
        tmp.path(),
        "build.yaml",
        "steps:\n  - name: a\n    command: echo a\n",
    );
    let dag = s.dags.load("build").unwrap();
    assert_eq!(dag.name, "build");

    let err = s.runs.find_attempt("build", "r1").unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let created = s
        .runs
        .create_attempt(&dag, &record("build", "r1", RunStatus::Queued))
        .unwrap();
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
    let second = s
        .runs
        .create_attempt(&dag, &record("build", "r1", RunStatus::Queued))
        .unwrap();
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
    let tmp = tempfile::tempdir().unwrap();
    let s = stores(tmp.path());
    write_dag(
        tmp.path(),
        "d.yaml",
        "steps:\n  - name: a\n    command: 'true'\n",
    );
    let dag = s.dags.load("d").unwrap();
    let a = s
        .runs
        .create_attempt(&dag, &record("d", "r1", RunStatus::Queued))
        .unwrap();
    s.runs
        .create_attempt(&dag, &record("d", "r2", RunStatus::Running))
        .unwrap();
    let status = tmp
        .path()
        .join("data/runs/d/r1")
        .join(&a.record.attempt_id)
        .join("status.json");
    std::fs::write(&status, b"{not json").unwrap();
    let err = s.runs.find_attempt("d", "r1").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { path, .. } if *path == status),
        "{err:?}"
    );
    assert!(err.to_string().contains("status.json"), "{err}");
    // Recovery still sees the healthy run.
    let all = s.runs.list_attempts().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].record.run_id, "r2");
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
    assert_eq!(
        std::fs::read_dir(tmp.path().join("data/runs"))
            .unwrap()
            .count(),
        0
    );
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
