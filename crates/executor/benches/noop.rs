//! `cargo bench -p dispatch-executor --bench noop [-- --json <path>]`: executor overhead, end to
//! end through the real file stores and real processes.
//!
//! - a no-op single-step run (`true`): enqueue → final status written and `RunFinished` received;
//! - per no-op step: a chain of 20 `true` steps, minus the single-step run, over 19;
//! - the two costs that dominate: one durable status write, one `sh -e -c true` spawn + wait;
//! - the same runs over in-memory stores (no fsync): the executor's own overhead.
//!
//! Printed as a table; with `--json`, written as `[{name, value, unit}]`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatch_dag::{
    Attempt, ContinueOn, Dag, DagStore, DagType, FileStoreConfig, HandlerOn, Priority, QueueItem,
    QueueStore, RunRecord, RunStatus, RunStore, Step, StoreError, Stores,
};
use dispatch_executor::{Executor, ExecutorConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SINGLE_RUNS: usize = 200;
const CHAIN_RUNS: usize = 20;
const CHAIN_LEN: usize = 20;

fn dag(dir: &Path, name: &str, steps: usize) -> Dag {
    Dag {
        name: name.into(),
        description: String::new(),
        dag_type: DagType::Chain,
        params: vec![],
        env: vec![],
        steps: (0..steps)
            .map(|i| Step {
                name: format!("s{i}"),
                command: Some("true".into()),
                script: None,
                shell: None,
                working_dir: None,
                depends: if i == 0 {
                    vec![]
                } else {
                    vec![format!("s{}", i - 1)]
                },
                env: vec![],
                timeout_sec: None,
                continue_on: ContinueOn::default(),
                ..Default::default()
            })
            .collect(),
        timeout_sec: None,
        max_clean_up_time_sec: 5,
        queue: name.into(),
        handler_on: HandlerOn::default(),
        location: dir.join(format!("{name}.yaml")),
        resolved_params: vec![],
        ..Default::default()
    }
}

/// Stores without durability, to separate the executor's own cost from the fsyncs.
#[derive(Default)]
struct Mem {
    runs: Mutex<HashMap<(String, String), Attempt>>,
    queues: Mutex<BTreeMap<String, Vec<(Priority, QueueItem)>>>,
}

fn not_found(what: String) -> StoreError {
    StoreError::NotFound { what }
}

impl DagStore for Mem {
    fn load(&self, name: &str) -> Result<Dag, StoreError> {
        Err(not_found(format!("DAG `{name}`")))
    }
    fn list(&self) -> Result<Vec<Result<Dag, StoreError>>, StoreError> {
        Ok(vec![])
    }
}

impl RunStore for Mem {
    fn find_attempt(&self, dag_name: &str, run_id: &str) -> Result<Attempt, StoreError> {
        let runs = self.runs.lock().unwrap();
        runs.get(&(dag_name.to_owned(), run_id.to_owned()))
            .cloned()
            .ok_or_else(|| not_found(format!("run `{dag_name}/{run_id}`")))
    }
    fn create_attempt(&self, dag: &Dag, record: &RunRecord) -> Result<Attempt, StoreError> {
        let attempt = Attempt {
            dag: dag.clone(),
            record: record.clone(),
        };
        let key = (record.dag_name.clone(), record.run_id.clone());
        self.runs.lock().unwrap().insert(key, attempt.clone());
        Ok(attempt)
    }
    fn write_status(&self, record: &RunRecord) -> Result<(), StoreError> {
        let mut runs = self.runs.lock().unwrap();
        let key = (record.dag_name.clone(), record.run_id.clone());
        let attempt = runs.get_mut(&key).ok_or_else(|| not_found("run".into()))?;
        attempt.record = record.clone();
        Ok(())
    }
    fn remove_run(&self, dag_name: &str, run_id: &str) -> Result<(), StoreError> {
        self.runs
            .lock()
            .unwrap()
            .remove(&(dag_name.to_owned(), run_id.to_owned()));
        Ok(())
    }
    fn list_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        Ok(self.runs.lock().unwrap().values().cloned().collect())
    }
}

impl QueueStore for Mem {
    fn enqueue(&self, queue: &str, priority: Priority, item: &QueueItem) -> Result<(), StoreError> {
        let mut queues = self.queues.lock().unwrap();
        queues
            .entry(queue.to_owned())
            .or_default()
            .push((priority, item.clone()));
        Ok(())
    }
    fn dequeue(&self, queue: &str) -> Result<Option<QueueItem>, StoreError> {
        let mut queues = self.queues.lock().unwrap();
        let Some(items) = queues.get_mut(queue) else {
            return Ok(None);
        };
        let pos = items
            .iter()
            .position(|(p, _)| *p == Priority::High)
            .or(if items.is_empty() { None } else { Some(0) });
        Ok(pos.map(|i| items.remove(i).1))
    }
    fn remove(&self, queue: &str, item: &QueueItem) -> Result<bool, StoreError> {
        let mut queues = self.queues.lock().unwrap();
        let Some(items) = queues.get_mut(queue) else {
            return Ok(false);
        };
        let before = items.len();
        items.retain(|(_, i)| i != item);
        Ok(items.len() != before)
    }
    fn list(&self, queue: &str) -> Result<Vec<QueueItem>, StoreError> {
        let queues = self.queues.lock().unwrap();
        Ok(queues
            .get(queue)
            .map(|v| v.iter().map(|(_, i)| i.clone()).collect())
            .unwrap_or_default())
    }
    fn queues(&self) -> Result<Vec<String>, StoreError> {
        let queues = self.queues.lock().unwrap();
        Ok(queues
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.clone())
            .collect())
    }
}

fn mem_stores(dir: &Path) -> Stores {
    let mem = Arc::new(Mem::default());
    Stores {
        dags: mem.clone(),
        runs: mem.clone(),
        queue: mem,
        enqueued: Arc::new(tokio::sync::Notify::new()),
        log_dir: dir.join("mem-logs"),
    }
}

struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        p50: at(0.5),
        p99: at(0.99),
    }
}

async fn measure_runs(
    stores: &Stores,
    handle: &dispatch_executor::ExecutorHandle,
    dag: &Dag,
    prefix: &str,
    n: usize,
) -> Result<Vec<f64>, String> {
    let mut rx = handle.subscribe();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let run_id = format!("{prefix}{i}");
        let start = Instant::now();
        dispatch_enqueue::enqueue_webhook_run(stores, dag, &run_id, "", 0)
            .map_err(|e| format!("enqueue: {e}"))?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .map_err(|_| format!("run {run_id} did not finish"))?
                .map_err(|e| format!("notification: {e}"))?;
            if event.run_id == run_id {
                if event.status != RunStatus::Succeeded {
                    return Err(format!("run {run_id} ended {}", event.status));
                }
                break;
            }
        }
        out.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

struct RunCosts {
    single: Stats,
    chain: Stats,
    per_step: f64,
    enqueue: Stats,
}

async fn run_costs(stores: &Stores, dir: &Path) -> Result<RunCosts, String> {
    let cancel = CancellationToken::new();
    let handle = Executor::start(ExecutorConfig::default(), stores.clone(), cancel.clone())
        .map_err(|e| format!("start: {e}"))?;
    let single = dag(dir, "noop", 1);
    let chain = dag(dir, "chain", CHAIN_LEN);
    measure_runs(stores, &handle, &single, "warm", 10).await?;
    let single_ms = stats(measure_runs(stores, &handle, &single, "r", SINGLE_RUNS).await?);
    let chain_ms = stats(measure_runs(stores, &handle, &chain, "c", CHAIN_RUNS).await?);
    let per_step = (chain_ms.mean - single_ms.mean) / (CHAIN_LEN - 1) as f64;
    // The enqueue alone (what the run above includes before the executor wakes up).
    let mut enqueues = Vec::new();
    let parked = dag(dir, "parked", 1);
    cancel.cancel();
    handle.shutdown(Duration::from_secs(5)).await;
    for i in 0..50 {
        let start = Instant::now();
        dispatch_enqueue::enqueue_webhook_run(stores, &parked, &format!("e{i}"), "", 0)
            .map_err(|e| format!("enqueue: {e}"))?;
        enqueues.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(RunCosts {
        single: single_ms,
        chain: chain_ms,
        per_step,
        enqueue: stats(enqueues),
    })
}

async fn bench(dir: &Path) -> Result<Vec<serde_json::Value>, String> {
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags).map_err(|e| e.to_string())?;
    let stores = Stores::open_files(FileStoreConfig {
        dags_dir: dags.clone(),
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
    })
    .map_err(|e| format!("open stores: {e}"))?;
    let file = run_costs(&stores, &dags).await?;
    let mem = run_costs(&mem_stores(dir), &dags).await?;

    // The parts of one run's durable path, each store call timed alone.
    let attempt = stores
        .runs
        .find_attempt("noop", "r0")
        .map_err(|e| format!("find: {e}"))?;
    let mut parts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut time = |name: &'static str, op: &mut dyn FnMut() -> Result<(), StoreError>| {
        let start = Instant::now();
        let result = op();
        parts
            .entry(name)
            .or_default()
            .push(start.elapsed().as_secs_f64() * 1000.0);
        result.map_err(|e| format!("{name}: {e}"))
    };
    for i in 0..50 {
        let mut record = attempt.record.clone();
        record.run_id = format!("p{i}");
        let item = QueueItem {
            dag_name: "noop".into(),
            run_id: record.run_id.clone(),
        };
        time("find_attempt (not found)", &mut || match stores
            .runs
            .find_attempt("noop", &record.run_id)
        {
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        })?;
        time("create_attempt", &mut || {
            stores.runs.create_attempt(&attempt.dag, &record).map(drop)
        })?;
        time("queue enqueue", &mut || {
            stores.queue.enqueue("parts", Priority::Low, &item)
        })?;
        time("queue dequeue", &mut || {
            stores.queue.dequeue("parts").map(drop)
        })?;
        time("write_status", &mut || stores.runs.write_status(&record))?;
    }
    let mut spawns = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let status = tokio::process::Command::new("sh")
            .args(["-e", "-c", "true"])
            .process_group(0)
            .status()
            .await
            .map_err(|e| format!("spawn: {e}"))?;
        if !status.success() {
            return Err("`sh -e -c true` failed".into());
        }
        spawns.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let spawns = stats(spawns);
    let row =
        |name: &str, value: f64, unit: &str| json!({"name": name, "value": value, "unit": unit});
    let mut rows = vec![
        row(
            "executor: no-op single-step run, mean",
            file.single.mean,
            "ms",
        ),
        row(
            "executor: no-op single-step run, p50",
            file.single.p50,
            "ms",
        ),
        row(
            "executor: no-op single-step run, p99",
            file.single.p99,
            "ms",
        ),
        row(
            "executor: 20-step no-op chain run, mean",
            file.chain.mean,
            "ms",
        ),
        row("executor: per no-op step (chain)", file.per_step, "ms"),
        row("executor: of which enqueue, mean", file.enqueue.mean, "ms"),
        row(
            "executor: spawn+wait `sh -e -c true`, mean",
            spawns.mean,
            "ms",
        ),
        row(
            "executor: spawn+wait `sh -e -c true`, p99",
            spawns.p99,
            "ms",
        ),
        row(
            "executor (memory stores): no-op single-step run, mean",
            mem.single.mean,
            "ms",
        ),
        row(
            "executor (memory stores): no-op single-step run, p50",
            mem.single.p50,
            "ms",
        ),
        row(
            "executor (memory stores): no-op single-step run, p99",
            mem.single.p99,
            "ms",
        ),
        row(
            "executor (memory stores): per no-op step (chain)",
            mem.per_step,
            "ms",
        ),
        row(
            "executor (memory stores): 20-step chain run, mean",
            mem.chain.mean,
            "ms",
        ),
    ];
    for (name, samples) in parts {
        let st = stats(samples);
        rows.push(row(&format!("file store: {name}, p50"), st.p50, "ms"));
    }
    Ok(rows)
}

fn main() -> ExitCode {
    dispatch_test_support::bench_main(
        |scratch| {
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| format!("failed to start tokio: {e}"))?;
            runtime.block_on(bench(scratch))
        },
        |results| {
            println!("{:<56} {:>10} unit", "measurement", "value");
            for r in results {
                println!(
                    "{:<56} {:>10.3} {}",
                    r["name"].as_str().unwrap_or(""),
                    r["value"].as_f64().unwrap_or(f64::NAN),
                    r["unit"].as_str().unwrap_or("")
                );
            }
        },
    )
}
