//! The DAG YAML loader on arbitrary text: `Ok` with a DAG that keeps the loader's promises
//! (at least one step, unique step names, known and acyclic dependencies) or a `DagError` naming a
//! line inside the file; never a panic, a stack overflow or a runaway allocation. Text after the
//! first NUL byte is a runtime-param line fed to `resolve_params` on the loaded DAG.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::path::Path;

use dispatch_dag::{parse_dag, resolve_params, Dag, DagError};
use dispatch_webhook_params::parse_runtime_params;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/fuzz/dags/fuzzed.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, runtime) = match text.split_once('\0') {
        Some((yaml, runtime)) => (yaml, Some(runtime)),
        None => (text, None),
    };
    let dag = match parse_dag(Path::new(PATH), yaml) {
        Ok(dag) => dag,
        Err(err) => {
            check_error(&err, yaml);
            return;
        }
    };
    check_dag(&dag);
    if let Some(Ok(params)) = runtime.map(parse_runtime_params) {
        match resolve_params(&dag, &params) {
            Ok(resolved) => assert_eq!(resolved.steps.len(), dag.steps.len()),
            Err(err) => check_error(&err, yaml),
        }
    }
});

fn check_error(err: &DagError, yaml: &str) {
    assert_eq!(err.path, Path::new(PATH), "{err}");
    assert!(!err.message.is_empty(), "{err:?}");
    if let Some(line) = err.line {
        // YAML errors may point one past the last line (end of input).
        let lines = yaml_lines(yaml);
        assert!(
            line >= 1 && line <= lines + 1,
            "line {line} of {lines}: {err}"
        );
    }
    let _ = err.to_string();
}

/// Lines as YAML counts them: `\r\n`, a lone `\r` and `\n` each end a line (`str::lines` does
/// not split at a lone `\r`).
fn yaml_lines(yaml: &str) -> usize {
    let breaks = yaml
        .replace("\r\n", "\n")
        .bytes()
        .filter(|&b| b == b'\n' || b == b'\r')
        .count();
    breaks + 1
}

fn check_dag(dag: &Dag) {
    assert!(!dag.steps.is_empty(), "a DAG without steps was accepted");
    let mut index = HashMap::new();
    for (i, step) in dag.steps.iter().enumerate() {
        assert!(
            index.insert(step.name.as_str(), i).is_none(),
            "duplicate step name {:?} accepted",
            step.name
        );
    }
    for step in &dag.steps {
        for dep in &step.depends {
            assert!(
                index.contains_key(dep.as_str()),
                "unknown dependency {dep:?} accepted"
            );
        }
    }
    // Kahn's algorithm: every step must get scheduled, or there is a cycle.
    let mut pending: Vec<usize> = dag.steps.iter().map(|s| s.depends.len()).collect();
    let mut ready: Vec<usize> = (0..dag.steps.len()).filter(|&i| pending[i] == 0).collect();
    let mut done = HashSet::new();
    while let Some(i) = ready.pop() {
        done.insert(i);
        for (j, step) in dag.steps.iter().enumerate() {
            for dep in &step.depends {
                if index[dep.as_str()] == i {
                    pending[j] -= 1;
                    if pending[j] == 0 {
                        ready.push(j);
                    }
                }
            }
        }
    }
    assert_eq!(done.len(), dag.steps.len(), "dependency cycle accepted");
}
