//! A run's steps with the steps of the sub-DAG runs they started, as one list: what `scheduler
//! run` prints and what the worker uploads to the hub.

use super::contract::{RunStore, StepRecord};

/// Sub-DAG calls deeper than this are not followed (their output stays in their logs).
pub const MAX_SUB_DEPTH: usize = 8;

/// `steps`, each followed by the steps of the sub-DAG runs it started (a call, `parallel`, a
/// `foreach` body), read from `runs` and named `<step>/<child step>` (`<step>[<i>]/<child step>`
/// when it started several), so that a child's output is shown under its caller. A child not
/// recorded yet (or no longer) is left out; a later look finds it.
pub fn steps_with_sub_runs(runs: &dyn RunStore, steps: &[StepRecord]) -> Vec<StepRecord> {
    expand(runs, steps, 0)
}

fn expand(runs: &dyn RunStore, steps: &[StepRecord], depth: usize) -> Vec<StepRecord> {
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        out.push(step.clone());
        if depth >= MAX_SUB_DEPTH {
            continue;
        }
        for (i, sub) in step.sub_runs.iter().enumerate() {
            let Some((dag, run_id)) = sub.split_once('/') else {
                continue;
            };
            let Ok(child) = runs.find_attempt(dag, run_id) else {
                continue;
            };
            let prefix = if step.sub_runs.len() > 1 {
                format!("{}[{i}]", step.name)
            } else {
                step.name.clone()
            };
            for mut child_step in expand(runs, &child.record.steps, depth + 1) {
                child_step.name = format!("{prefix}/{}", child_step.name);
                out.push(child_step);
            }
        }
    }
    out
}
