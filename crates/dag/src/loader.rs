//! The DAG YAML loader (SPEC §5).

use std::path::Path;

use serde::Deserialize;

use crate::{ContinueOn, Dag, DagError, DagType, HandlerOn, Step};

#[derive(Deserialize)]
struct RawDag {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
struct RawStep {
    name: String,
    command: String,
}

/// Loads and validates the DAG file at `path`.
pub fn load_dag_file(path: &Path) -> Result<Dag, DagError> {
    let err = |line: Option<usize>, message: String| DagError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(None, format!("failed to read file: {e}")))?;
    let raw: RawDag = serde_yaml_ng::from_str(&text)
        .map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
    let name = match raw.name {
        Some(n) => n,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    crate::validate_dag_name(&name).map_err(|e| err(None, format!("key `name`: {e}")))?;
    let mut steps: Vec<Step> = Vec::new();
    for s in raw.steps {
        let depends = steps
            .last()
            .map(|p| vec![p.name.clone()])
            .unwrap_or_default();
        steps.push(Step {
            name: s.name,
            command: Some(s.command),
            script: None,
            shell: None,
            working_dir: None,
            depends,
            env: Vec::new(),
            timeout_sec: None,
            continue_on: ContinueOn::default(),
        });
    }
    Ok(Dag {
        queue: name.clone(),
        name,
        description: String::new(),
        dag_type: DagType::Chain,
        params: Vec::new(),
        env: Vec::new(),
        steps,
        timeout_sec: None,
        max_clean_up_time_sec: 5,
        handler_on: HandlerOn::default(),
        location: path.to_path_buf(),
        resolved_params: Vec::new(),
    })
}
