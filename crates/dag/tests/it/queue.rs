use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use dispatch_dag::*;

fn item(dag: &str, run: &str) -> QueueItem {
    QueueItem {
        dag_name: dag.into(),
        run_id: run.into(),
    }
}

#[test]
fn priority_then_fifo_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let q = FileQueueStore::open(tmp.path()).unwrap();
    q.enqueue("q", Priority::Low, &item("d", "l1")).unwrap();
    q.enqueue("q", Priority::High, &item("d", "h1")).unwrap();
    q.enqueue("q", Priority::Low, &item("d", "l2")).unwrap();
    q.enqueue("q", Priority::High, &item("d", "h2")).unwrap();
    q.enqueue("other", Priority::Low, &item("e", "o1")).unwrap();
    assert_eq!(
        q.queues().unwrap(),
        vec!["other".to_owned(), "q".to_owned()]
    );
    let order: Vec<_> = q.list("q").unwrap().into_iter().map(|i| i.run_id).collect();
    assert_eq!(order, ["h1", "h2", "l1", "l2"]);

    let q = FileQueueStore::open(tmp.path()).unwrap();
    assert!(q.remove("q", &item("d", "l1")).unwrap());
    assert!(!q.remove("q", &item("d", "l1")).unwrap());
    let mut got = Vec::new();
    while let Some(i) = q.dequeue("q").unwrap() {
        got.push(i.run_id);
    }
    assert_eq!(got, ["h1", "h2", "l2"]);
    assert_eq!(q.queues().unwrap(), vec!["other".to_owned()]);
    assert_eq!(q.dequeue("empty").unwrap(), None);
}

#[test]
fn corrupt_item_is_set_aside_not_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let q = FileQueueStore::open(tmp.path()).unwrap();
    q.enqueue("q", Priority::Low, &item("d", "r1")).unwrap();
    std::fs::write(
        tmp.path().join("q/0_00000000000000000000_0000000000.json"),
        b"{oops",
    )
    .unwrap();
    assert_eq!(q.dequeue("q").unwrap(), Some(item("d", "r1")));
    assert_eq!(q.dequeue("q").unwrap(), None);
    assert_eq!(crate::entries(tmp.path().join("q/.corrupt")), 1);
}

/// Two stores on one fresh queue directory (keep the directory for the test).
fn two_stores() -> (tempfile::TempDir, FileQueueStore, FileQueueStore) {
    let tmp = tempfile::tempdir().unwrap();
    let a = FileQueueStore::open(tmp.path()).unwrap();
    let b = FileQueueStore::open(tmp.path()).unwrap();
    (tmp, a, b)
}

#[test]
fn two_stores_on_one_directory_serve_each_item_once() {
    let (_tmp, a, b) = two_stores();
    a.enqueue("q", Priority::Low, &item("d", "x")).unwrap();
    // `b` has never listed the queue, so it finds `a`'s item.
    assert_eq!(b.queues().unwrap(), vec!["q".to_owned()]);
    assert_eq!(b.dequeue("q").unwrap(), Some(item("d", "x")));
    // `a` still knows the name; its claim fails and it looks at the directory again.
    assert_eq!(a.dequeue("q").unwrap(), None);
    assert!(a.queues().unwrap().is_empty());
    assert!(b.list("q").unwrap().is_empty());
}

#[test]
fn list_and_remove_see_items_of_other_stores() {
    let (_tmp, a, b) = two_stores();
    a.enqueue("q", Priority::Low, &item("d", "a1")).unwrap();
    b.enqueue("q", Priority::Low, &item("d", "b1")).unwrap();
    let runs = |q: &FileQueueStore| -> Vec<String> {
        q.list("q").unwrap().into_iter().map(|i| i.run_id).collect()
    };
    assert_eq!(runs(&a), ["a1", "b1"]);
    assert!(a.remove("q", &item("d", "b1")).unwrap());
    assert_eq!(runs(&b), ["a1"]);
    assert_eq!(b.dequeue("q").unwrap(), Some(item("d", "a1")));
    assert!(!a.remove("q", &item("d", "a1")).unwrap());
    assert!(runs(&a).is_empty());
}

#[test]
fn bad_queue_names_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let q = FileQueueStore::open(tmp.path()).unwrap();
    for name in ["../x", "", "a/b"] {
        let e = q.enqueue(name, Priority::Low, &item("d", "r")).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidName {
                    kind: "queue name",
                    ..
                }
            ),
            "{e}"
        );
    }
}

/// Enqueues `n` items tagged `tag` while dequeuing concurrently; returns what this side took.
fn hammer(dir: &Path, tag: &str, n: usize, threads: usize) -> Vec<String> {
    let q = Arc::new(FileQueueStore::open(dir).unwrap());
    let mut handles = Vec::new();
    for t in 0..threads {
        let q = q.clone();
        let tag = tag.to_owned();
        handles.push(std::thread::spawn(move || {
            let mut taken = Vec::new();
            for i in 0..n {
                let prio = if i % 3 == 0 {
                    Priority::High
                } else {
                    Priority::Low
                };
                q.enqueue("shared", prio, &item("d", &format!("{tag}-{t}-{i}")))
                    .unwrap();
                if i % 2 == 0 {
                    if let Some(it) = q.dequeue("shared").unwrap() {
                        taken.push(it.run_id);
                    }
                }
            }
            taken
        }));
    }
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

const CHILD_ENV: &str = "DISPATCH_DAG_TEST_QUEUE_CHILD_DIR";

/// In a child process (spawned by `two_processes_never_lose_or_duplicate`) this is the other
/// side of the race; run directly, it checks the same invariant within one process.
#[test]
fn queue_child_side() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let taken = hammer(Path::new(&dir), "child", 60, 2);
        std::fs::write(Path::new(&dir).join("child-taken.txt"), taken.join("\n")).unwrap();
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut taken = hammer(tmp.path(), "solo", 50, 4);
    let q = FileQueueStore::open(tmp.path()).unwrap();
    while let Some(it) = q.dequeue("shared").unwrap() {
        taken.push(it.run_id);
    }
    let unique: HashSet<_> = taken.iter().collect();
    assert_eq!(taken.len(), 200);
    assert_eq!(unique.len(), 200);
}

#[test]
fn two_processes_never_lose_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "queue::queue_child_side", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut taken = hammer(tmp.path(), "parent", 60, 2);
    assert!(child.wait().unwrap().success());
    let child_taken = std::fs::read_to_string(tmp.path().join("child-taken.txt")).unwrap();
    taken.extend(
        child_taken
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned),
    );
    let q = FileQueueStore::open(tmp.path()).unwrap();
    while let Some(it) = q.dequeue("shared").unwrap() {
        taken.push(it.run_id);
    }
    let unique: HashSet<_> = taken.iter().cloned().collect();
    assert_eq!(taken.len(), 240, "an item was lost or duplicated");
    assert_eq!(unique.len(), 240);
    for tag in ["parent", "child"] {
        for t in 0..2 {
            for i in 0..60 {
                assert!(unique.contains(&format!("{tag}-{t}-{i}")));
            }
        }
    }
}

#[test]
fn stores_with_a_write_delay_keep_their_own_items_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let config = FileStoreConfig::in_home(tmp.path());
    let delayed = FileStoreOptions {
        queue_write_delay: std::time::Duration::from_secs(3600),
    };
    let s = Stores::open_files_with(config.clone(), delayed).unwrap();
    let other = Stores::open_files(config).unwrap();
    s.queue
        .enqueue("q", Priority::Low, &item("d", "r1"))
        .unwrap();
    s.queue
        .enqueue("q", Priority::Low, &item("d", "r2"))
        .unwrap();
    assert!(other.queue.list("q").unwrap().is_empty());
    assert_eq!(s.queue.dequeue("q").unwrap(), Some(item("d", "r1")));
    drop(s);
    assert_eq!(other.queue.list("q").unwrap(), vec![item("d", "r2")]);
}
